"""A dtype config -> how transformers loads the base: BitsAndBytesConfig and torch dtype."""

from __future__ import annotations

import torch
from transformers import BitsAndBytesConfig

from qlora_lab.config import DTypeConfig

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def torch_dtype(compute_dtype: str) -> torch.dtype:
    """A config's compute dtype as torch's, `auto` resolved for this machine."""
    from qlora_lab.model.dtypes import native_compute_dtype

    return TORCH_DTYPES[native_compute_dtype() if compute_dtype == "auto" else compute_dtype]


def load_dtype(cfg: DTypeConfig) -> torch.dtype:
    """dtype the base loads in: an unquantized base in its own (bf16 / fp32), a quantized one's
    remaining weights (norms, embeddings, head) in the compute dtype."""
    if cfg.backend == "none" and cfg.name in TORCH_DTYPES:
        return TORCH_DTYPES[cfg.name]
    return torch_dtype(cfg.compute_dtype)


def to_compute_dtype(model: torch.nn.Module, cfg: DTypeConfig) -> torch.nn.Module:
    """An unquantized base stored in one dtype and computed in another (bf16 weights where bf16
    matmuls are emulated: compute in fp32): the stored values are kept exactly, widened."""
    compute = torch_dtype(cfg.compute_dtype)
    if cfg.backend == "none" and load_dtype(cfg) != compute:
        model.to(compute)
    return model


def compute_autocast(compute_dtype: str, device_type: str = "cpu"):
    """The precision evaluation runs in, the same for trained, eval-only and reloaded models."""
    import contextlib

    dtype = torch_dtype(compute_dtype)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


def bnb_config(cfg: DTypeConfig, skip_modules: tuple[str, ...] = ()) -> BitsAndBytesConfig | None:
    """bitsandbytes' quantization through transformers: the paper's own path. None for the other
    backends (unquantized, or quantized by qlora_kernels after a 16-bit load). `skip_modules`
    stay unquantized (a classifier's head), beside what transformers keeps (the output head)."""
    if cfg.backend != "bnb":
        return None
    skip = {"llm_int8_skip_modules": ["lm_head", *skip_modules]} if skip_modules else {}
    if cfg.name == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, **skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        **skip,
        bnb_4bit_quant_type=cfg.name,
        bnb_4bit_use_double_quant=cfg.storage_scale == "dq8",
        bnb_4bit_compute_dtype=torch_dtype(cfg.compute_dtype),
    )


def disable_cpu_weight_repacking(model: torch.nn.Module) -> int:
    """Keep bitsandbytes' Linear4bit off its AVX512-BF16 inference path on the CPU.

    An eval-mode forward with a no-grad input repacks the 4-bit weight in place for a CPU
    kernel: it asserts out_features % 32 == 0, and afterwards LoRA gradients are wrong and
    merged adapters garbage. Evaluation mid-training takes that path, so it is shut for good.
    Returns how many layers were switched off.
    """
    import bitsandbytes as bnb

    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count
