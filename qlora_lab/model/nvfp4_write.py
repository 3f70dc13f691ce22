"""A causal LM written as an NVFP4 release in compressed-tensors' layout (`nvfp4-pack-quantized`),
as llm-compressor's weight-only NVFP4 scheme (NVFP4A16) saves one: every linear layer but the
output head as `weight_packed`, `weight_scale` and `weight_global_scale`, the rest as the model
holds it, and config.json's `quantization_config` saying so.

What makes an NVFP4 release of a base here (the study's releases, `python -m qlora_lab.release
--nvfp4`), and what `export --merge 4bit` writes for a run on an NVFP4 base. The codes and scales
are compressed-tensors' own for the same weight (qlora_kernels.compressed_blocks.quantize_nvfp4,
checked against the library); a layer already stored in that layout is written as it is, bit for
bit. Writing needs no compressed-tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from qlora_lab.compressed_checkpoint import METHOD, NVFP4_FORMAT

WRITER = "qlora-lab"


def nvfp4_quantization_config(ignore: list[str]) -> dict:
    """config.json's `quantization_config` of a weight-only NVFP4 release, as compressed-tensors'
    ModelCompressor.update_config writes it for the NVFP4A16 preset."""
    weights = {"dynamic": False, "group_size": 16, "num_bits": 4, "scale_dtype": "torch.float8_e4m3fn",
               "strategy": "tensor_group", "symmetric": True, "type": "float"}
    group = {"format": NVFP4_FORMAT, "input_activations": None, "output_activations": None, "targets": ["Linear"],
             "weights": weights}
    return {"config_groups": {"group_0": group}, "format": NVFP4_FORMAT, "global_compression_ratio": None,
            "ignore": ignore, "kv_cache_scheme": None, "quant_method": METHOD, "quantization_status": "compressed",
            "sparsity_config": {}, "transform_config": {}, "version": WRITER}


def write_nvfp4(model: torch.nn.Module, out: Path) -> Path:
    """`model` (a causal LM, its linear layers nn.Linear or NVFP4 QuantLinear) -> the folder `out`
    (config.json and model.safetensors; the caller saves the tokenizer)."""
    from safetensors.torch import save_file

    from qlora_kernels.compressed_blocks import nvfp4_tensors, quantize_nvfp4

    head = model.get_output_embeddings()
    tensors: dict[str, torch.Tensor] = {}
    ignore = []
    quantized = set()
    for name, module in model.named_modules():
        if module is head:
            ignore.append(name)
        elif hasattr(module, "quant_state"):
            tensors.update({f"{name}.{k}": v for k, v in nvfp4_tensors(module.quant_state()).items()})
            quantized.add(name)
        elif isinstance(module, torch.nn.Linear):
            tensors.update({f"{name}.{k}": v for k, v in nvfp4_tensors(quantize_nvfp4(module.weight.detach())).items()})
            quantized.add(name)
    for key, value in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner in quantized and leaf != "bias":
            continue  # the layer's weight, stored above
        tensors.setdefault(key, value.detach())
    if getattr(model.config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)  # tied: the embedding's, as transformers saves it
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["quantization_config"] = nvfp4_quantization_config(ignore)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out
