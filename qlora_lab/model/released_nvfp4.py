"""Bases released in NVFP4 (`model.path=DIR` of a compressed-tensors folder): each quantized
linear layer's stored tensors (`weight_packed`, `weight_scale`, `weight_global_scale`) become a
QuantLinear as they are, never decompressed; what the release kept in 16 bits (embeddings, norms,
the layers its `ignore` list names) stays so.

compressed-tensors itself is not needed to read one: the layout is plain safetensors, and
qlora_kernels.compressed_blocks decodes it to what compressed-tensors' decompression gives, bit
for bit (tests/qlora_lab/model/test_released_nvfp4.py checks it against the library).
The model is built with empty weights first: only the stored tensors are ever in memory.
"""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from pathlib import Path

import torch

from qlora_lab.config import DTypeConfig
from qlora_lab.model.quantize import load_dtype, torch_dtype
from qlora_lab.model.released import finished, set_frozen_tensor

log = logging.getLogger(__name__)
STORED = ("weight_packed", "weight_scale", "weight_global_scale")  # one NVFP4 layer's tensors
INFERENCE_ONLY = ("input_global_scale",)  # a W4A4 release's activation scale: for inference kernels


def weight_files(folder: Path) -> list[Path]:
    """The folder's safetensors files: one, or the shards its index names."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [folder / shard for shard in shards]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    raise ValueError(f"{folder}: holds no model.safetensors (nor an index of shards)")


def load_nvfp4_base(path: str, dtype: DTypeConfig) -> torch.nn.Module:
    """A causal LM whose linear layers hold the release's NVFP4 tensors (QuantLinear), the rest of
    its tensors as stored, widened to the run's load dtype."""
    from accelerate import init_empty_weights
    from qlora_kernels import QuantLinear
    from qlora_kernels.compressed_blocks import state_from_nvfp4
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(path)
    config = AutoConfig.from_pretrained(folder)
    stored = getattr(config, "quantization_config", None) or {}
    config.__dict__.pop("quantization_config", None)  # loaded here, not by transformers' quantizer
    with init_empty_weights():  # parameters on the meta device; buffers (rotary frequencies) real
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    kept, compute = load_dtype(dtype), torch_dtype(dtype.compute_dtype)
    with ExitStack() as files:
        where = {}  # tensor name -> the open file holding it
        for file in weight_files(folder):
            reader = files.enter_context(safe_open(str(file), framework="pt"))
            where.update(dict.fromkeys(reader.keys(), reader))
        layers = sorted({key.rpartition(".")[0] for key in where if key.endswith(".weight_packed")})
        for name in layers:  # one layer's tensors read at a time: the peak is the stored model + one layer
            missing = [leaf for leaf in STORED if f"{name}.{leaf}" not in where]
            if missing:
                raise ValueError(f"{path}: layer {name} stores no {', '.join(missing)}")
            packed, scale, global_scale = (where[f"{name}.{leaf}"].get_tensor(f"{name}.{leaf}") for leaf in STORED)
            state = state_from_nvfp4(packed, scale, global_scale, in_place=True)
            owner = model.get_submodule(name)
            if not isinstance(owner, torch.nn.Linear):
                raise ValueError(f"{path}: {name} holds NVFP4 weights but is a {type(owner).__name__}, not a linear layer")
            bias = torch.zeros(state.shape[0]) if owner.bias is not None else None  # its values come with its own tensor
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child,
                    QuantLinear.from_state(state, bias=bias, compute_dtype=compute))
        for key, reader in where.items():
            owner, _, leaf = key.rpartition(".")
            if leaf in STORED or leaf in INFERENCE_ONLY:
                continue
            try:
                module = model.get_submodule(owner)
            except AttributeError:
                raise ValueError(f"{path}: tensor {key} has no place in a {config.model_type} model") from None
            set_frozen_tensor(module, leaf, reader.get_tensor(key).to(kept))
    groups = stored.get("config_groups", {}) if isinstance(stored, dict) else {}
    inputs = next((g["input_activations"] for g in groups.values() if g.get("input_activations")), None)
    if inputs:  # W4A4: the activation scheme is for inference kernels; LoRA trains on the weights
        log.warning("%s also quantizes its layers' inputs at inference (%s-bit %s, groups of %s); here they "
                    "stay in %s", path, inputs.get("num_bits"), inputs.get("type"), inputs.get("group_size"),
                    str(compute).removeprefix("torch."))
    return finished(model, config, f"{path}: the release")
