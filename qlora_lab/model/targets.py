"""LoRA target names per architecture family: what `lora.targets=qv|attn|mlp|all` means."""

from __future__ import annotations

TARGET_GROUPS: dict[str, dict[str, tuple[str, ...]]] = {
    "llama": {
        "qv": ("q_proj", "v_proj"),
        "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
        "mlp": ("gate_proj", "up_proj", "down_proj"),
    },
    "opt": {
        "qv": ("q_proj", "v_proj"),
        "attn": ("q_proj", "k_proj", "v_proj", "out_proj"),
        "mlp": ("fc1", "fc2"),
    },
    "gpt_neox": {  # Pythia: q, k and v share one fused projection
        "qv": ("query_key_value",),
        "attn": ("query_key_value", "dense"),
        "mlp": ("dense_h_to_4h", "dense_4h_to_h"),
    },
    "bloom": {
        "qv": ("query_key_value",),
        "attn": ("query_key_value", "dense"),
        "mlp": ("dense_h_to_4h", "dense_4h_to_h"),
    },
}


def target_names(family: str, targets: str | list[str]) -> list[str]:
    """Module names LoRA wraps: a group name (`all` = attention + MLP) or an explicit list."""
    if not isinstance(targets, str):
        return list(targets)
    groups = TARGET_GROUPS[family]
    if targets == "all":
        return list(dict.fromkeys(groups["attn"] + groups["mlp"]))
    return list(groups[targets])
