"""Blockwise absmax quantization of any float tensor with any codebook, in plain PyTorch.

Each block of `blocksize` weights keeps its absmax; every weight becomes the code of the
nearest codebook value to weight / absmax. The float steps are bitsandbytes' own (scale by
the reciprocal in full blocks, divide in the tail, clamp, nearest by midpoints), so NF4
packs to the same bytes and dequantizes to the same values. An affine data type (int4_affine)
first centres each block on the midpoint of its minimum and maximum and stores that centre: its
absmax is then half the block's range, and dequantizing adds the centre back.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from qlora_kernels import native, packing
from qlora_kernels.codebooks import Codebook, codebook, nearest_codes, sorted_codes
from qlora_kernels.double_quant import quantize_absmax
from qlora_kernels.quant_state import QuantState
from qlora_kernels.scale_specs import crossable, scale_spec

MIN_BLOCKSIZE, MAX_BLOCKSIZE = 16, 4096


def check_blocksize(blocksize: int) -> None:
    if not isinstance(blocksize, int) or isinstance(blocksize, bool):
        raise TypeError(f"blocksize must be an int, not {type(blocksize).__name__}")
    if blocksize < MIN_BLOCKSIZE or blocksize > MAX_BLOCKSIZE or blocksize & (blocksize - 1):
        raise ValueError(f"blocksize {blocksize} must be a power of two from {MIN_BLOCKSIZE} to {MAX_BLOCKSIZE}")


def stored_codebook(book: str | Codebook, scale: str) -> Codebook:
    """The codebook as a scale format stores it: an absmax maps onto values of largest magnitude 1
    (E2M1 / 8 becomes E2M1 / 6); the other formats keep the codebook's own units."""
    book = codebook(book)
    return book.normalized() if scale_spec(scale).codec is None else book


def quantize(weight: torch.Tensor, book: str | Codebook, blocksize: int = 64, double_quant: bool = False,
             scale: str | None = None) -> QuantState:
    """Any float tensor -> QuantState; `dequantize` gives back its shape and dtype. `scale`: a scale
    format of scale_specs.SCALE_FORMATS (None: fp32, or dq8 with `double_quant`)."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, not {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be floating point, not {weight.dtype}")
    check_blocksize(blocksize)
    scale = scale or ("dq8" if double_quant else "fp32")
    book = codebook(book)
    refused = crossable(scale, book.name, book.signed, blocksize, centred=book.affine)
    if refused:
        raise ValueError(refused)
    book = stored_codebook(book, scale)
    double_quant = scale == "dq8"
    flat = weight.reshape(-1).float()
    spec = scale_spec(scale)
    if spec.codec is not None:
        from qlora_kernels.scale_formats import check_finite, codec

        check_finite(flat)
        encode, _ = codec(scale, spec.codec)
        codes, stored = encode(flat, book, blocksize)
        return QuantState(packed=packing.pack(codes, book.bits, pad_code=book.zero_code), absmax=None, nested=None,
                          shape=weight.shape, dtype=weight.dtype, blocksize=blocksize, codebook=book,
                          scale_format=scale, scales=stored)
    offsets = None
    if book.affine:  # centred per block (shared torch steps, so both codecs below see the same input)
        offsets = block_centres(flat, blocksize)
        flat = flat - _per_element(offsets, flat.numel(), blocksize)
    if _compiled(book, flat):
        midpoints, order = sorted_codes(book.values)
        packed, absmax = native.quantize_4bit(flat, midpoints, order, book.zero_code, blocksize)
    else:
        packed, absmax = _quantize_torch(flat, book, blocksize)
    nested = quantize_absmax(absmax) if double_quant else None
    nested_offsets = quantize_absmax(offsets) if double_quant and offsets is not None else None
    return QuantState(packed=packed, absmax=None if double_quant else absmax, nested=nested, shape=weight.shape,
                      dtype=weight.dtype, blocksize=blocksize, codebook=book,
                      offsets=None if double_quant else offsets, nested_offsets=nested_offsets)


def block_centres(flat: torch.Tensor, blocksize: int) -> torch.Tensor:
    """(min + max) / 2 of each block of a flat float32 tensor (the last may be short)."""
    n = flat.numel()
    blocks = -(-n // blocksize)
    padded = torch.nn.functional.pad(flat, (0, blocks * blocksize - n)).view(blocks, blocksize)
    low, high = padded.amin(dim=1), padded.amax(dim=1)
    if n % blocksize:  # the short last block's padding is not a weight
        tail = flat[(blocks - 1) * blocksize:]
        low[-1], high[-1] = tail.min(), tail.max()
    return (low + high) * 0.5


def _per_element(per_block: torch.Tensor, n: int, blocksize: int) -> torch.Tensor:
    return per_block.repeat_interleave(blocksize)[:n]


def _quantize_torch(flat: torch.Tensor, book: Codebook, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed codes, absmax per block) of a flat float32 tensor, in plain torch (any width, any device)."""
    n = flat.numel()
    full = n - n % blocksize
    blocks = flat[:full].view(-1, blocksize)
    absmax = blocks.abs().max(dim=-1).values
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    if full < n:
        tail_max = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, tail_max.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / tail_max, -1, 1)])
    return packing.pack(nearest_codes(scaled, book), book.bits, pad_code=book.zero_code), absmax


def dequantize(state: QuantState, dtype: torch.dtype | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """The weights back: codebook value x block absmax, in float32, then `dtype` (default: the
    quantized tensor's own). `out`, a tensor of that shape and dtype, is written and returned:
    a caller with a buffer saves a fresh allocation, whose page faults can cost more than the
    decode."""
    dtype = dtype or state.dtype
    if out is not None and (out.shape != state.shape or out.dtype != dtype or not out.is_contiguous()):
        raise ValueError(f"out must be a contiguous {dtype} tensor of shape {tuple(state.shape)}, not "
                         f"{out.dtype} {tuple(out.shape)}")
    n, bs = state.numel, state.blocksize
    if native.triton_available() and state.packed.is_cuda and state.codebook.bits == 4:
        from qlora_kernels.triton_dequant import dequantize_4bit_triton

        values = dequantize_4bit_triton(state, dtype)
        return values if out is None else out.copy_(values)
    if _compiled(state.codebook, state.packed):
        return _compiled_decode(state, dtype, out)
    scales = state.block_scales()
    values = _code_values(state)[:n]  # a fresh float32 tensor: scaled in place
    # value = (code value - zero) x scale + offset, each a separate float32 rounding (as the compiled
    # codec and the Triton kernel do it)
    for per_block, apply in ((scales.zero, torch.Tensor.sub_), (scales.scale, torch.Tensor.mul_),
                             (scales.offset, torch.Tensor.add_)):
        if per_block is not None:
            _per_block_op(values, per_block.float(), bs, apply)
    values = values.view(state.shape).to(dtype)
    return values if out is None else out.copy_(values)


def _compiled_decode(state: QuantState, dtype: torch.dtype, out: torch.Tensor | None) -> torch.Tensor:
    """The compiled CPU codec: the block constants decoded in C where their format says how
    (no tensor of all the scales first), else in torch and handed over."""
    flat_out = None if out is None else out.view(-1)
    packed, table = state.packed.reshape(-1), state.codebook.tensor()
    stored = state.stored_scales()
    if stored is not None:
        flat = native.dequantize_4bit_stored(packed, stored.kind, stored.tensors, stored.table, stored.constant, table,
                                             state.numel, state.blocksize, dtype, out=flat_out)
    else:
        scales = state.block_scales()
        flat = native.dequantize_4bit(packed, scales.scale, table, state.numel, state.blocksize, dtype, out=flat_out,
                                      offsets=scales.offset, zeros=scales.zero)
    return flat.view(state.shape) if out is None else out


def _per_block_op(values: torch.Tensor, per_block: torch.Tensor, bs: int, apply) -> None:
    """values[i] (op)= per_block[i // bs], in place, the short last block included."""
    n = values.numel()
    full = n - n % bs
    apply(values[:full].view(-1, bs), per_block[: full // bs].view(-1, 1))
    if full < n:
        apply(values[full:], per_block[full // bs])


def _compiled(book: Codebook, tensor: torch.Tensor) -> bool:
    """4-bit codes of a CPU tensor go through the compiled codec where it could be built."""
    return book.bits == 4 and tensor.device.type == "cpu" and native.available()


def _code_values(state: QuantState) -> torch.Tensor:
    """Codebook value of every code. For 4 bits a byte indexes a table of value pairs: one
    gather per byte instead of two shifts, two gathers and an interleave."""
    if state.codebook.bits == 4:
        pairs = _pair_table(state.codebook.values, str(state.packed.device))
        return pairs.index_select(0, state.packed.reshape(-1).to(torch.int32)).reshape(-1)
    table = state.codebook.tensor(state.packed.device)
    if state.codebook.bits == 8:  # a byte is a code
        return table.index_select(0, state.packed.reshape(-1).to(torch.int32))
    return table[packing.unpack(state.packed, state.codebook.bits, state.numel)]


@lru_cache(maxsize=64)
def _pair_table(values: tuple[float, ...], device: str) -> torch.Tensor:
    """[256, 2]: the two code values each byte stands for (high nibble first)."""
    table = torch.tensor(values, dtype=torch.float32, device=device)
    byte = torch.arange(256, device=device)
    return torch.stack([table[byte >> 4], table[byte & 0xF]], dim=1)
