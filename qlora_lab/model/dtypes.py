"""Registry of the data types a base model's linear layers can be stored in.

Plain data, no torch: config validation reads it before anything heavy is imported.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DTypeSpec:
    """What one data type is and which backends can store it."""

    bits: int  # code bits per weight (16 / 32 for unquantized)
    blockwise: bool  # absmax blocks (and double quantization) apply
    backends: tuple[str, ...]  # where it can run; the first is the default
    blocksizes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # per-backend limits


# A data type of the user's own: `dtype.codebook` holds its spec (see qlora_kernels.codebooks).
CUSTOM = DTypeSpec(0, True, ("lab",), {"lab": tuple(2**i for i in range(5, 13))})


# transformers' BitsAndBytesConfig has no blocksize: bitsandbytes' Linear4bit quantizes in 64s.
# qlora_kernels takes any power of two from 32 to 4096.
_LAB_BLOCKS = tuple(2**i for i in range(5, 13))
_BLOCKS = {"bnb": (64,), "lab": _LAB_BLOCKS}

DTYPES: dict[str, DTypeSpec] = {
    "nf4": DTypeSpec(4, True, ("bnb", "lab"), _BLOCKS),
    "fp4": DTypeSpec(4, True, ("bnb", "lab"), _BLOCKS),
    "int4": DTypeSpec(4, True, ("lab",), _BLOCKS),
    "int4_affine": DTypeSpec(4, True, ("lab",), _BLOCKS),  # per-block min/max, 16 uniform levels, a zero point
    "nf3": DTypeSpec(3, True, ("lab",), _BLOCKS),
    "nf2": DTypeSpec(2, True, ("lab",), _BLOCKS),
    "fp4_e3m0": DTypeSpec(4, True, ("lab",), _BLOCKS),
    "int8": DTypeSpec(8, False, ("bnb",)),
    "bf16": DTypeSpec(16, False, ("none",)),
    "fp32": DTypeSpec(32, False, ("none",)),
}


def available_backends() -> list[str]:
    """Backends this installation can run: `lab` needs the qlora_kernels package."""
    ready = ["bnb", "none"]
    if importlib.util.find_spec("qlora_kernels") is not None:
        ready.append("lab")
    return ready


COMPUTE_DTYPES = ("auto", "bf16", "fp16", "fp32")  # dtype.compute_dtype


@functools.lru_cache(maxsize=1)
def native_compute_dtype() -> str:
    """What `dtype.compute_dtype=auto` means on this machine: bf16 where the hardware computes
    it natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX), fp32 elsewhere, where
    bf16 matmuls are emulated and run tens of times slower (seen here: 58 vs ~2,000 tokens/s)."""
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if _cpu_flags() & {"avx512_bf16", "amx_bf16"} else "fp32"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()
