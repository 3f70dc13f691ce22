"""GPU dequantize of 4-bit codes in Triton: one program per BLOCK outputs, each finding its
byte, its nibble (high first), its codebook value and its block's absmax. The plain-torch
`qlora_kernels.dequantize` is the reference it is tested against (on the CPU under
TRITON_INTERPRET=1)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qlora_kernels.quant_state import QuantState

BLOCK = 1024


@triton.jit
def _dequantize_4bit_kernel(packed_ptr, absmax_ptr, offsets_ptr, zeros_ptr, table_ptr, out_ptr, n, blocksize,
                            BLOCK: tl.constexpr, OUT_BF16: tl.constexpr, AFFINE: tl.constexpr, ZERO: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < n
    byte = tl.load(packed_ptr + offsets // 2, mask=inside, other=0).to(tl.int32)
    code = (byte >> ((1 - offsets % 2) * 4)) & 0xF
    value = tl.load(table_ptr + code, mask=inside, other=0.0)
    if ZERO:  # HQQ: the zero point first, a rounding of its own
        value = value - tl.load(zeros_ptr + offsets // blocksize, mask=inside, other=0.0)
    value = value * tl.load(absmax_ptr + offsets // blocksize, mask=inside, other=0.0)
    if AFFINE:  # then the block's centre, added after the product as the reference does (no fused multiply-add)
        value = value + tl.load(offsets_ptr + offsets // blocksize, mask=inside, other=0.0)
    if OUT_BF16:  # round to nearest even by hand, as torch does (the interpreter would truncate)
        bits = value.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        tl.store(out_ptr + offsets, bits.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=inside)
    else:
        tl.store(out_ptr + offsets, value.to(out_ptr.dtype.element_ty), mask=inside)


def dequantize_4bit_triton(state: QuantState, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Same values as `dequantize(state, dtype)` for 4-bit codebooks, affine ones and every scale
    format included (the block constants are decoded first, in torch: there are 16x or more fewer
    of them)."""
    if state.codebook.bits != 4:
        raise ValueError(f"the Triton kernel decodes 4-bit codes; codebook {state.codebook.name!r} has "
                         f"{state.codebook.bits}")
    device = state.packed.device
    scales = state.block_scales()
    absmax = scales.scale.float().contiguous()
    affine, zero = scales.offset is not None, scales.zero is not None
    offsets = scales.offset.float().contiguous() if affine else absmax  # an unread pointer when not affine
    zeros = scales.zero.float().contiguous() if zero else absmax
    table = state.codebook.tensor(device)
    out = torch.empty(state.numel, dtype=dtype or state.dtype, device=device)
    grid = (triton.cdiv(state.numel, BLOCK),)
    _dequantize_4bit_kernel[grid](state.packed, absmax, offsets, zeros, table, out, state.numel, state.blocksize,
                                  BLOCK=BLOCK, OUT_BF16=out.dtype == torch.bfloat16, AFFINE=affine, ZERO=zero,
                                  enable_fp_fusion=False)
    return out.view(state.shape)
