"""LoRA target names per architecture family: what `lora.targets=qv|attn|mlp|all` means.

peft matches a name against the end of a module's dotted path, so a dotted name (RoBERTa's
`attention.self.query`) picks out one module where a bare one (`dense`) would hit several.
"""

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
    "t5": {  # self- and cross-attention alike; wi: T5 1.0, wi_0 / wi_1: T5 1.1's gated MLP
        "qv": ("q", "v"),
        "attn": ("q", "k", "v", "o"),
        "mlp": ("wi", "wi_0", "wi_1", "wo"),
    },
    "gpt2": {  # Conv1D layers (weights stored transposed); q, k and v share one fused projection
        "qv": ("c_attn",),
        "attn": ("c_attn", "attn.c_proj"),
        "mlp": ("c_fc", "mlp.c_proj"),
    },
    "roberta": {  # the classification head is not a target: it is trained in full
        "qv": ("attention.self.query", "attention.self.value"),
        "attn": ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"),
        "mlp": ("intermediate.dense", "layer.*.output.dense"),
    },
}



# (in, out) of each linear layer of one decoder block, by the family's module names: h hidden,
# f the MLP's width, 3h a fused q/k/v projection. What the planner's memory estimate counts.
LINEAR_SHAPES: dict[str, dict[str, tuple[str, str]]] = {
    "llama": {"q_proj": ("h", "h"), "k_proj": ("h", "h"), "v_proj": ("h", "h"), "o_proj": ("h", "h"),
              "gate_proj": ("h", "f"), "up_proj": ("h", "f"), "down_proj": ("f", "h")},
    "opt": {"q_proj": ("h", "h"), "k_proj": ("h", "h"), "v_proj": ("h", "h"), "out_proj": ("h", "h"),
            "fc1": ("h", "f"), "fc2": ("f", "h")},
    "gpt_neox": {"query_key_value": ("h", "3h"), "dense": ("h", "h"), "dense_h_to_4h": ("h", "f"),
                 "dense_4h_to_h": ("f", "h")},
    "bloom": {"query_key_value": ("h", "3h"), "dense": ("h", "h"), "dense_h_to_4h": ("h", "f"),
              "dense_4h_to_h": ("f", "h")},
    "gpt2": {"c_attn": ("h", "3h"), "attn.c_proj": ("h", "h"), "c_fc": ("h", "f"), "mlp.c_proj": ("f", "h")},
}


# A checkpoint's config.json `model_type` -> (model.kind, model.family): how `model.path=DIR`
# learns what it loads. Llama's descendants name their projections as Llama does.
MODEL_TYPES: dict[str, tuple[str, str]] = {
    "llama": ("causal", "llama"), "mistral": ("causal", "llama"), "qwen2": ("causal", "llama"),
    "qwen3": ("causal", "llama"), "gemma": ("causal", "llama"), "gemma2": ("causal", "llama"),
    "opt": ("causal", "opt"), "gpt_neox": ("causal", "gpt_neox"), "bloom": ("causal", "bloom"),
    "gpt2": ("causal", "gpt2"), "t5": ("seq2seq", "t5"), "mt5": ("seq2seq", "t5"),
    "roberta": ("classifier", "roberta"),
}


def target_names(family: str, targets: str | list[str]) -> list[str]:
    """Module names LoRA wraps: a group name (`all` = attention + MLP) or an explicit list."""
    if not isinstance(targets, str):
        return list(targets)
    groups = TARGET_GROUPS[family]
    if targets == "all":
        return list(dict.fromkeys(groups["attn"] + groups["mlp"]))
    return list(groups[targets])


def peft_target_pattern(names: list[str]) -> str:
    """The names as one regex for peft's `target_modules` (full match on a module's dotted path):
    each name matches the end of the path, as peft's own list matching does, and a `*` stands
    for one path component (RoBERTa's `layer.*.output.dense`, apart from `attention.output.dense`)."""
    import re

    alternatives = "|".join(re.escape(name).replace(r"\*", r"[^.]+") for name in names)
    return rf"(.*\.)?({alternatives})"
