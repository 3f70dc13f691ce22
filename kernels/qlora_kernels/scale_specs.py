"""Scale formats: how a block's scale (and zero point) is stored. One entry each, plain data and
no torch, so a config can be checked before anything heavy is imported; `codec` names the
functions that encode and decode it (qlora_kernels.scale_formats), imported when they run.

A data type is a codebook x a scale format x a block size. The codes are decoded the same way
for all of them (value = codebook[code] x block scale, + a block offset or - a zero point
first); what differs is how the scale is stored, and so the bits it costs.
"""

from __future__ import annotations

from dataclasses import dataclass

SIGNED = "signed"  # any codebook with values of both signs (absmax-style scaling)


@dataclass(frozen=True)
class ScaleSpec:
    """One scale format: what it stores per block, and what it can be crossed with."""

    name: str
    what: str  # one line, for errors and the docs
    block_bits: float  # stored bits per block
    group_bits: tuple[int, int] = (0, 1)  # (bits, per this many blocks): a second level (DQ, Q4_K's super-block)
    tensor_bits: int = 0  # bits per tensor (NVFP4's fp32 global scale, DQ's offset)
    codebooks: str | tuple[str, ...] = SIGNED  # SIGNED, or the codebooks it is defined for
    blocksizes: tuple[int, ...] | None = None  # None: any the backend takes
    codec: str | None = None  # "module:prefix" of encode_/decode_ functions; None: the absmax path
    affine: bool = False  # stores a per-block offset or zero point of its own

    def bits_per_param(self, code_bits: int, blocksize: int, numel: int | None = None) -> float:
        """Stored bits per weight of a tensor of `numel` weights (None: a large one, per-tensor bits
        amortized away)."""
        per_block = self.block_bits + self.group_bits[0] / self.group_bits[1]
        tensor = self.tensor_bits / numel if numel else 0.0
        return code_bits + per_block / blocksize + tensor

    def takes(self, book: str, signed: bool) -> bool:
        return signed if self.codebooks == SIGNED else book in self.codebooks


SCALE_FORMATS: dict[str, ScaleSpec] = {spec.name: spec for spec in (
    ScaleSpec("fp32", "an fp32 absmax per block (the paper's QLoRA without DQ)", 32),
    ScaleSpec("dq8", "the absmax double-quantized: 8 bits per block, fp32 per 256 blocks (the paper's DQ)", 8,
              (32, 256), 32),
    ScaleSpec("e8m0", "a power of two per block, OCP MX v1.0 rounding (floor of the absmax's exponent)", 8,
              codec="qlora_kernels.scale_formats:e8m0"),
    ScaleSpec("e8m0_rceil", "a power of two per block, rounded up from absmax / max (NVIDIA's MXFP4 recipe)", 8,
              codec="qlora_kernels.scale_formats:e8m0_rceil"),
    ScaleSpec("e4m3", "FP8-E4M3 per block under one fp32 scale per tensor (NVFP4's)", 8, tensor_bits=32,
              codec="qlora_kernels.scale_formats:e4m3"),
    ScaleSpec("fp16", "llama.cpp's fp16 scale d per block: Q4_0's signed max / -8, Q8_0's absmax / 127", 16,
              codebooks=("int4_grid", "int8_grid"),
              blocksizes=(32,), codec="qlora_kernels.scale_formats:fp16"),
    ScaleSpec("q4_k", "llama.cpp Q4_K: 6-bit scale and min per 32, fp16 super-scale and super-min per 256", 12,
              (32, 8), codebooks=("uint4",), blocksizes=(32,), codec="qlora_kernels.scale_formats:q4_k",
              affine=True),
    ScaleSpec("hqq", "HQQ's optimized fp16 scale and zero point per block, stored as its package stores them", 32,
              codebooks=("uint4",), codec="qlora_kernels.scale_formats:hqq", affine=True),
)}


def scale_spec(name: str) -> ScaleSpec:
    if name not in SCALE_FORMATS:
        raise ValueError(f"unknown scale format {name!r}; known: {', '.join(SCALE_FORMATS)}")
    return SCALE_FORMATS[name]


def crossable(scale: str, book: str, signed: bool, blocksize: int, centred: bool = False) -> str | None:
    """Why codebook x scale format x block size cannot exist, or None where it can. `centred`: an
    affine codebook (int4_affine), whose block centres only the absmax formats store."""
    spec = scale_spec(scale)
    if centred and spec.codec is not None:
        return f"codebook {book} centres each block, which only scale formats fp32 and dq8 store"
    if not spec.takes(book, signed):
        allowed = "codebooks with values of both signs" if spec.codebooks == SIGNED else ", ".join(spec.codebooks)
        return f"scale format {scale} is defined for {allowed}, not codebook {book}"
    if spec.blocksizes is not None and blocksize not in spec.blocksizes:
        return f"scale format {scale} takes block size {', '.join(map(str, spec.blocksizes))}, not {blocksize}"
    return None
