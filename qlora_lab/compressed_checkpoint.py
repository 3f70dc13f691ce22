"""`model.path=DIR` of an NVFP4 release in compressed-tensors' layout (NVIDIA's, Red Hat's, what
llm-compressor and vLLM write): what it holds, read from its config.json's `quantization_config`
while the command line is checked (torch-free).

Such a folder stores each quantized linear layer as `weight_packed` (E2M1 codes), `weight_scale`
(FP8-E4M3 per 16 weights) and `weight_global_scale` (fp32 per tensor); the layers its `ignore`
list names (the head, usually) and everything that is not a linear layer stay in 16 bits.
"""

from __future__ import annotations

from dataclasses import dataclass

from qlora_lab.config_checks import ConfigError

METHOD = "compressed-tensors"
NVFP4_FORMAT = "nvfp4-pack-quantized"
EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


@dataclass(frozen=True)
class CompressedSummary:
    """An NVFP4 release's quantization_config, as the config needs it."""

    storage: str  # our data type: nvfp4
    ignored: tuple[str, ...]  # layers the release kept in 16 bits (its `ignore` list)
    activations: str | None  # what the release quantizes its inputs to at inference (W4A4), or None
    blocksize: int = 16  # weights per FP8 scale

    @property
    def released(self) -> str:
        return self.storage


def is_compressed_release(checkpoint: dict) -> bool:
    stored = checkpoint.get("quantization_config")
    return isinstance(stored, dict) and stored.get("quant_method") == METHOD


def read_compressed_summary(path: str, checkpoint: dict) -> CompressedSummary:
    """The release's quantization, or why it cannot be a base here, in one line."""
    experts = next((f"{key}={checkpoint[key]}" for key in EXPERT_KEYS if checkpoint.get(key)), None)
    if experts:
        raise ConfigError("model.path", path, f"a mixture-of-experts release ({checkpoint.get('model_type')}, "
                                              f"{experts}) is not supported yet; dense decoders are")
    stored = checkpoint["quantization_config"]
    groups = stored.get("config_groups") or {}
    if not groups:
        raise ConfigError("model.path", path, "its compressed-tensors quantization_config has no config_groups")
    activations = None
    for name, group in groups.items():
        fmt = group.get("format") or stored.get("format")
        if fmt != NVFP4_FORMAT:
            raise ConfigError("model.path", path, f"holds compressed-tensors format {fmt!r} (group {name}); "
                                                  f"supported: {NVFP4_FORMAT} (NVFP4 weights)")
        weights = group.get("weights") or {}
        shape = (weights.get("num_bits"), weights.get("type"), weights.get("group_size"), weights.get("symmetric"))
        if shape != (4, "float", 16, True):
            raise ConfigError("model.path", path, f"group {name} stores weights as num_bits={shape[0]}, type={shape[1]}, "
                                                  f"group_size={shape[2]}, symmetric={shape[3]}; NVFP4 is 4, float, "
                                                  f"16, true")
        inputs = group.get("input_activations")
        if inputs:
            activations = f"{inputs.get('type')} {inputs.get('num_bits')}-bit, group {inputs.get('group_size')}"
    status = stored.get("quantization_status")
    if status != "compressed":
        raise ConfigError("model.path", path, f"its quantization_status is {status!r}: the weights are not packed "
                                              f"(a compressed NVFP4 release says 'compressed')")
    return CompressedSummary(storage="nvfp4", ignored=tuple(stored.get("ignore") or ()), activations=activations)
