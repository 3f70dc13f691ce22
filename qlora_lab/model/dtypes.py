"""What `dtype.compute_dtype=auto` means on this machine. The data types themselves are plain data
in qlora_lab.catalog (re-exported here)."""

from __future__ import annotations

import functools

from qlora_lab.catalog import COMPUTE_DTYPES, CUSTOM, DTYPES, DTypeSpec, available_backends  # noqa: F401


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
