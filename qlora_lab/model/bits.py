"""Stored bits per weight of the base's linear layers, read from the real tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StoredBits:
    n_weights: int  # logical weights of the counted linear layers
    n_bits: int  # bits they occupy: codes + block constants (+ the constants' constants)

    @property
    def bits_per_param(self) -> float:
        return self.n_bits / self.n_weights if self.n_weights else float("nan")


def _tensor_bits(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size() * 8


def linear_weight_bits(module: torch.nn.Linear) -> tuple[int, int]:
    """(logical weights, stored bits) of one linear layer's weight, whatever stores it.

    Counts the packed codes, absmax per block and, under double quantization, the 8-bit
    absmax's own float32 constants and offset. The data type's code tables (16 or 256 values
    per layer) are left out: they belong to the data type, not to the weights.
    """
    weight = module.weight
    state = getattr(weight, "quant_state", None)
    if state is not None:  # bitsandbytes 4-bit
        bits = _tensor_bits(weight.data) + _tensor_bits(state.absmax)
        if state.nested:
            bits += _tensor_bits(state.state2.absmax) + _tensor_bits(torch.as_tensor(state.offset, dtype=torch.float32))
        return int(torch.Size(state.shape).numel()), bits
    scales = getattr(weight, "SCB", None)
    if weight.dtype == torch.int8 and scales is not None:  # LLM.int8(): a float32 scale per row
        return weight.numel(), _tensor_bits(weight.data) + _tensor_bits(scales)
    return weight.numel(), _tensor_bits(weight.data)


def base_linear_bits(model: torch.nn.Module, skip: set[int]) -> StoredBits:
    """Over every linear layer of the base (LoRA's own layers and ids in `skip` left out);
    qlora_kernels' QuantLinear reports its own state."""
    total = StoredBits(0, 0)
    for name, module in model.named_modules():
        if id(module) in skip or ".lora_" in f".{name}":
            continue
        if callable(getattr(module, "quant_state", None)):
            state = module.quant_state()
            n, bits = state.numel, state.stored_bits
        elif isinstance(module, torch.nn.Linear):
            n, bits = linear_weight_bits(module)
        else:
            continue
        total = StoredBits(total.n_weights + n, total.n_bits + bits)
    return total


def total_stored_bits(model: torch.nn.Module) -> int:
    """All bits the base model stores (Figure 3's x-axis): every linear weight as stored
    (codes and constants), every other parameter and persistent buffer at its dtype."""
    total, counted = 0, set()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and not callable(getattr(module, "quant_state", None)):
            total += linear_weight_bits(module)[1]
            counted.add(id(module.weight))
        for param in module.parameters(recurse=False):
            if id(param) not in counted:
                total += _tensor_bits(param.data)
                counted.add(id(param))
        transient = getattr(module, "_non_persistent_buffers_set", set())
        for name, buffer in module.named_buffers(recurse=False):
            if name not in transient and id(buffer) not in counted:
                total += _tensor_bits(buffer)
                counted.add(id(buffer))
    return total
