"""The codecs of the scale formats that are not a plain absmax (scale_specs.SCALE_FORMATS names
them): each turns a flat float32 tensor into codes and the tensors the format stores, and those
tensors back into one float32 scale per block (and an offset or a zero point), which every
decode path (torch, the compiled CPU codec, Triton) then applies the same way.

Each follows its reference library's float steps, so that the codes and the decoded values are
theirs to the bit (tests/kernels/test_reference_formats.py): torchao's `mx_formats` for e8m0,
e8m0_rceil and e4m3 (MXFP4, NVFP4), the `gguf` package for fp16 (Q4_0) and Q4_K's decode, `hqq`
for hqq. The codebooks of the named formats are their values divided by a power of two (the
codebook's `unit`), so that scale x unit and value / unit multiply to the same float.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qlora_kernels.codebooks import Codebook, nearest_codes

E4M3_MAX = 448.0
E4M3_TINY = 2.0**-6  # torch.finfo(torch.float8_e4m3fn).tiny: the smallest block scale NVFP4 stores
QK_K = 256  # Q4_K's super-block


@dataclass(frozen=True)
class BlockScales:
    """What a decode applies per block: value = (codebook[code] - zero) x scale + offset."""

    scale: torch.Tensor  # float32, one per block
    offset: torch.Tensor | None = None  # float32, added after the product (Q4_K's min)
    zero: torch.Tensor | None = None  # float32, subtracted before the product (HQQ's zero point)


@dataclass(frozen=True)
class StoredScales:
    """A format's block constants as stored, for the compiled CPU decode to decode itself, a chunk
    of blocks at a time on its own threads (cpu_codec.c's decode_scales: `kind` names its steps,
    which repeat the format's decode_ function). A format with a `stored_` function beside its
    encode_ and decode_ ones gets it; the others are decoded here into BlockScales first."""

    kind: str  # native.SCALE_KINDS
    tensors: tuple[torch.Tensor, ...]  # what the format stores, in the kind's order
    table: torch.Tensor | None = None  # 256 float32 values a stored byte looks up
    constant: float = 0.0  # a float32 constant of the kind (the codebook's unit, DQ's mean)


def _byte_table(stored: dict, key: str, decode, book: Codebook) -> StoredScales:
    """One byte per block: its scale looked up in the format's own decode of all 256 bytes (the
    same float steps, so the same floats)."""
    every = decode({**stored, key: torch.arange(256, dtype=torch.int32).to(torch.uint8)}, book)
    return StoredScales("byte_table", (stored[key],), table=every.scale.float())


def check_finite(flat: torch.Tensor) -> None:
    """A scale computed from a NaN or an infinity is garbage for the whole block: refuse it."""
    if not torch.isfinite(flat).all():
        bad = (~torch.isfinite(flat)).nonzero()[0].item()
        raise ValueError(f"cannot quantize a non-finite weight ({flat[bad].item()} at flat index {bad})")


def to_fp16(values: torch.Tensor, scale_format: str) -> torch.Tensor:
    """Block constants as fp16, refused in one line where one overflows it (weights beyond about
    65504 x the grid's size: the format cannot hold them; its reference would write inf)."""
    half = values.to(torch.float16)
    if not torch.isfinite(half).all():
        worst = values[~torch.isfinite(half)].abs().max().item()
        raise ValueError(f"scale format {scale_format}: a block constant of {worst:.4g} overflows fp16 (largest "
                         f"65504): these weights are too large for it")
    return half


def _blocks(flat: torch.Tensor, blocksize: int, multiple: int | None = None, edge: bool = False) -> torch.Tensor:
    """[blocks, blocksize], the tail padded with zeros (or the last value, `edge`, which keeps its
    block's min and max) to a whole number of blocks (of `multiple` weights where given)."""
    multiple = multiple or blocksize
    short = -flat.numel() % multiple
    if short:
        fill = flat[-1] if edge else flat.new_zeros(())
        flat = torch.cat([flat, fill.expand(short)])
    return flat.view(-1, blocksize)


# ---- elements -------------------------------------------------------------------------------

_E2M1_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_E2M1_TIE_UP = (False, True, False, True, False, True, False)  # ties to the even mantissa


def e2m1_codes(data: torch.Tensor) -> torch.Tensor:
    """OCP E2M1 codes (sign bit 8) of float32 values in E2M1's own units: round to nearest, ties
    to even, magnitudes above 6 saturated, the sign kept (-0.1 -> -0), as torchao casts."""
    magnitude = data.abs()
    codes = torch.zeros(data.shape, dtype=torch.int64, device=data.device)
    for midpoint, up in zip(_E2M1_MIDPOINTS, _E2M1_TIE_UP):
        codes += (magnitude >= midpoint) if up else (magnitude > midpoint)
    return codes + 8 * torch.signbit(data)


def element_codes(data: torch.Tensor, book: Codebook) -> torch.Tensor:
    """Codes of block-scaled values in the codebook's own units (values x unit): E2M1 as the OCP
    spec rounds, any other codebook by its nearest value."""
    if book.name == "e2m1":
        return e2m1_codes(data)
    return nearest_codes((data / book.unit).reshape(-1), book).to(torch.int64).view(data.shape)


def _max_element(book: Codebook) -> float:
    return book.peak * book.unit  # 6 for E2M1, 1 for NF4


# ---- e8m0: MXFP4's power of two per block ---------------------------------------------------

def _e8m0_to_float(biased: torch.Tensor) -> torch.Tensor:
    """2^(e - 127) as torchao's get_fp_scale computes it."""
    offset = biased.to(torch.int16) - 127
    return torch.pow(torch.full_like(offset, 2.0, dtype=torch.float32), offset)


def encode_e8m0(flat: torch.Tensor, book: Codebook, blocksize: int) -> tuple[torch.Tensor, dict]:
    """OCP MX v1.0: the scale is 2^(floor(log2 amax) - floor(log2 max element)), read off the
    float's exponent bits; elements x / scale, saturated (torchao's FLOOR mode)."""
    blocks = _blocks(flat, blocksize)
    amax = blocks.abs().amax(dim=1)
    target = math.floor(math.log2(_max_element(book)))
    exponent = ((amax.view(torch.int32) >> 23) & 0xFF) - 127
    biased = ((exponent - target).clamp(-127, 128) + 127).to(torch.uint8)
    scale = (biased.to(torch.int32) << 23).view(torch.float32).clamp(min=2.0**-126)
    codes = element_codes(blocks / scale.unsqueeze(1), book)
    return codes.reshape(-1)[: flat.numel()], {"e8m0": biased}


def decode_e8m0(stored: dict, book: Codebook) -> BlockScales:
    return BlockScales(_e8m0_to_float(stored["e8m0"]) * book.unit)


def encode_e8m0_rceil(flat: torch.Tensor, book: Codebook, blocksize: int) -> tuple[torch.Tensor, dict]:
    """NVIDIA's rounding: the power of two at or above amax / max element, so nothing saturates
    (torchao's RCEIL mode, its CPU fallback's steps)."""
    blocks = _blocks(flat, blocksize)
    top = _max_element(book)
    descale = blocks.abs().amax(dim=1) / top
    biased = (torch.clamp(torch.ceil(torch.log2(descale)), min=-127, max=127) + 127).to(torch.uint8)
    reciprocal = torch.where(biased == 0, 1.0, torch.exp2(127 - biased.to(torch.float32)))
    data = torch.clamp(blocks * reciprocal.unsqueeze(1), min=-top, max=top)
    return element_codes(data, book).reshape(-1)[: flat.numel()], {"e8m0": biased}


decode_e8m0_rceil = decode_e8m0


def stored_e8m0(stored: dict, book: Codebook) -> StoredScales:
    return _byte_table(stored, "e8m0", decode_e8m0, book)


stored_e8m0_rceil = stored_e8m0


# ---- e4m3: NVFP4's FP8 scale per block under an fp32 scale per tensor ----------------------

def encode_e4m3(flat: torch.Tensor, book: Codebook, blocksize: int) -> tuple[torch.Tensor, dict]:
    """torchao's nvfp4_quantize with a per-tensor scale (amax / (448 x max element)): the block
    scale amax / max element, over the tensor's scale, rounded to FP8-E4M3; elements x times
    (1 / tensor scale) / block scale, clamped. An all-zero tensor takes a tensor scale of 1 (its
    reference would divide by zero)."""
    top = _max_element(book)
    global_scale = flat.abs().amax().to(torch.float32) / (E4M3_MAX * top)
    if global_scale == 0:
        global_scale = torch.ones((), dtype=torch.float32)
    blocks = _blocks(flat, blocksize)
    block_scale = blocks.abs().amax(dim=1) / top
    fp8 = torch.clamp(block_scale / global_scale, min=E4M3_TINY, max=E4M3_MAX).to(torch.float8_e4m3fn)
    reciprocal = (1.0 / global_scale) / fp8.to(torch.float32)
    data = torch.clamp(blocks * reciprocal.unsqueeze(1), -top, top)
    return element_codes(data, book).reshape(-1)[: flat.numel()], {"e4m3": fp8.view(torch.uint8),
                                                                    "global": global_scale.reshape(())}


def decode_e4m3(stored: dict, book: Codebook) -> BlockScales:
    """torchao's get_hp_scales: tensor scale x block scale, rounded to float32 once. A release in
    compressed-tensors' layout stores the tensor's scale as its inverse (`divisor`, 448 x 6 /
    amax) and divides by it: block scale / divisor, rounded once (its `_dequantize`)."""
    fp8 = stored["e4m3"].view(torch.float8_e4m3fn).to(torch.float32)
    if "divisor" in stored:
        return BlockScales((fp8 / stored["divisor"].to(torch.float32)) * book.unit)
    return BlockScales((stored["global"].to(torch.float32) * fp8) * book.unit)


def stored_e4m3(stored: dict, book: Codebook) -> StoredScales:
    return _byte_table(stored, "e4m3", decode_e4m3, book)


# ---- fp16: llama.cpp's Q4_0 --------------------------------------------------------------------

def encode_fp16(flat: torch.Tensor, book: Codebook, blocksize: int) -> tuple[torch.Tensor, dict]:
    """gguf's Q4_0.quantize_blocks: d = the block's value of largest magnitude / -8 (its first, on
    a tie), codes trunc(x / d + 8.5) clipped to 0..15, d stored as fp16 (the codes were chosen
    with the float32 d, as llama.cpp does). On int8_grid, Q8_0's: d = absmax / 127, q = x / d
    rounded half away from zero."""
    blocks = _blocks(flat, blocksize)
    if book.name == "int8_grid":
        d = blocks.abs().amax(dim=1, keepdim=True) / 127
        inverse = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
        scaled = blocks * inverse
        magnitude = scaled.abs()
        floored = torch.floor(magnitude)  # gguf's np_roundf, step by step (a + 0.5 rounds up 0.5 - 2^-25)
        q = torch.sign(scaled) * (floored + torch.floor(2 * (magnitude - floored)))
        return (q + 128).to(torch.int64).reshape(-1)[: flat.numel()], {"fp16": to_fp16(d.reshape(-1), "fp16")}
    top = blocks.gather(1, blocks.abs().argmax(dim=1, keepdim=True))
    d = top / -8.0
    inverse = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    codes = torch.trunc(blocks * inverse + 8.5).clamp(0, 15).to(torch.int64)
    return codes.reshape(-1)[: flat.numel()], {"fp16": to_fp16(d.reshape(-1), "fp16")}


def decode_fp16(stored: dict, book: Codebook) -> BlockScales:
    return BlockScales(stored["fp16"].to(torch.float32) * book.unit)


def stored_fp16(stored: dict, book: Codebook) -> StoredScales:
    return StoredScales("half", (stored["fp16"],), constant=book.unit)


# ---- q4_k: llama.cpp's Q4_K --------------------------------------------------------------------

def _nearest_int(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x)  # llama.cpp's nearest_int: the 1.5 x 2^23 trick, ties to even, as torch.round


def _qkx2(x: torch.Tensor, weights: torch.Tensor, nmax: int = 15, rmin: float = -1.0, rdelta: float = 0.1,
          nstep: int = 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """llama.cpp's make_qkx2_quants, all 32-weight sub-blocks at once: (scale, -min, codes), the
    min and scale that minimise the weighted squared error over a grid of 21 trial scales."""
    low = x.amin(dim=1).clamp(max=0.0)
    high = x.amax(dim=1)
    sum_w = weights.sum(dim=1)
    sum_x = (weights * x).sum(dim=1)
    span = high - low
    flat = span == 0
    span = torch.where(flat, torch.ones_like(span), span)
    iscale = nmax / span
    scale = 1.0 / iscale
    codes = _nearest_int(iscale.unsqueeze(1) * (x - low.unsqueeze(1))).clamp(0, nmax)
    diff = scale.unsqueeze(1) * codes + low.unsqueeze(1) - x
    best = (weights * (diff * diff)).sum(dim=1)
    for step in range(nstep + 1):
        iscale = (torch.tensor(rdelta, dtype=torch.float32) * step + rmin + nmax) / span  # C's float steps
        trial = _nearest_int(iscale.unsqueeze(1) * (x - low.unsqueeze(1))).clamp(0, nmax)
        sum_l = (weights * trial).sum(dim=1)
        sum_l2 = (weights * trial * trial).sum(dim=1)
        sum_xl = (weights * trial * x).sum(dim=1)
        det = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        positive = this_min > 0
        this_scale = torch.where(positive, sum_xl / sum_l2, this_scale)
        this_min = torch.where(positive, torch.zeros_like(this_min), this_min)
        diff = this_scale.unsqueeze(1) * trial + this_min.unsqueeze(1) - x
        error = (weights * (diff * diff)).sum(dim=1)
        better = (det > 0) & (error < best)
        codes = torch.where(better.unsqueeze(1), trial, codes)
        best = torch.where(better, error, best)
        scale = torch.where(better, this_scale, scale)
        low = torch.where(better, this_min, low)
    scale = torch.where(flat, torch.zeros_like(scale), scale)
    codes = torch.where(flat.unsqueeze(1), torch.zeros_like(codes), codes)
    return scale, -low, codes


def _pack_k4_scales(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """[super-blocks, 8] 6-bit scales and mins -> GGUF's 12 bytes per super-block."""
    packed = torch.zeros(ls.shape[0], 12, dtype=torch.int32, device=ls.device)
    ls, lm = ls.to(torch.int32), lm.to(torch.int32)
    packed[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return packed.to(torch.uint8)


def unpack_k4_scales(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GGUF's 12 bytes per super-block -> ([super-blocks, 8] scales, mins), as gguf's get_scale_min."""
    packed = packed.to(torch.int32)
    d, m, m_d = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = torch.cat([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], dim=1)
    mins = torch.cat([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], dim=1)
    return scales, mins


def encode_q4_k(flat: torch.Tensor, book: Codebook, blocksize: int) -> tuple[torch.Tensor, dict]:
    """llama.cpp's quantize_row_q4_K_ref: per 32 weights a scale and min (make_qkx2_quants, weights
    rms + |x|), quantized to 6 bits against the super-block's largest, whose fp16 d and dmin are
    stored; the codes chosen again against the stored scales. The tail is zero-padded to 256."""
    x = _blocks(flat, 32, multiple=QK_K)
    weights = (x * x).sum(dim=1).div(32).sqrt().unsqueeze(1) + x.abs()
    scales, mins, codes = _qkx2(x, weights)
    scales, mins = scales.view(-1, 8), mins.view(-1, 8)
    max_scale, max_min = scales.amax(dim=1).clamp(min=0.0), mins.amax(dim=1).clamp(min=0.0)
    inv_scale = torch.where(max_scale > 0, 63.0 / max_scale, torch.zeros_like(max_scale))
    inv_min = torch.where(max_min > 0, 63.0 / max_min, torch.zeros_like(max_min))
    ls = _nearest_int(inv_scale.unsqueeze(1) * scales).clamp(max=63)
    lm = _nearest_int(inv_min.unsqueeze(1) * mins).clamp(max=63)
    d, dmin = to_fp16(max_scale / 63.0, "q4_k"), to_fp16(max_min / 63.0, "q4_k")
    sub_scale = (d.to(torch.float32).unsqueeze(1) * ls).reshape(-1, 1)
    sub_min = (dmin.to(torch.float32).unsqueeze(1) * lm).reshape(-1, 1)
    again = _nearest_int((x + sub_min) / torch.where(sub_scale == 0, 1.0, sub_scale)).clamp(0, 15)
    codes = torch.where(sub_scale == 0, codes, again).to(torch.int64)
    return codes.reshape(-1)[: flat.numel()], {"d": d, "dmin": dmin, "scales": _pack_k4_scales(ls, lm)}


def decode_q4_k(stored: dict, book: Codebook) -> BlockScales:
    """gguf's Q4_K.dequantize_blocks: per 32, d x scale and dmin x min in float32; value = that
    scale x q - that min."""
    scales, mins = unpack_k4_scales(stored["scales"])
    scale = (stored["d"].to(torch.float32).unsqueeze(1) * scales.to(torch.float32)).reshape(-1)
    low = (stored["dmin"].to(torch.float32).unsqueeze(1) * mins.to(torch.float32)).reshape(-1)
    return BlockScales(scale * book.unit, offset=-low)


def stored_q4_k(stored: dict, book: Codebook) -> StoredScales:
    return StoredScales("k4", (stored["d"], stored["dmin"], stored["scales"]), constant=book.unit)


# ---- hqq: half-quadratic quantization ---------------------------------------------------------

def _shrink_lp(x: torch.Tensor, beta: float, lp_norm: float) -> torch.Tensor:
    out = torch.abs(x)
    out.sub_((1.0 / beta) * out.pow(lp_norm - 1)).clamp_min_(0.0)
    out.mul_(torch.sign(x))
    return out


def encode_hqq(flat: torch.Tensor, book: Codebook, blocksize: int, iters: int = 20, lp_norm: float = 0.7,
               beta: float = 10.0) -> tuple[torch.Tensor, dict]:
    """hqq's Quantizer.quantize (4 bits, groups along rows, axis=1, optimize=True, on the CPU):
    min-max scale and zero, then its proximal solver's zero-point updates until the mean error
    stops falling; scale inverted and both stored in fp16, as HQQLinear keeps them. A short
    last block is padded with its last weight (hqq asks for whole groups)."""
    w = _blocks(flat, blocksize, edge=True)
    low, high = w.min(dim=1, keepdim=True)[0], w.max(dim=1, keepdim=True)[0]
    denom = high - low
    scale = 15 / denom
    scale = torch.where(denom.abs() <= 1e-4, torch.full_like(scale, 1.0), scale).clamp(max=2e4)
    zero = -low * scale
    best = torch.tensor(torch.inf, dtype=torch.float32, device=w.device)
    for _ in range(iters):  # hqq's optimize_weights_proximal_legacy
        w_q = torch.round(w * scale + zero).clamp_(0, 15)
        w_r = (w_q - zero) / scale
        w_e = _shrink_lp(w - w_r, beta, lp_norm)
        zero = torch.mean(w_q - (w - w_e) * scale, axis=1, keepdim=True)
        error = torch.abs(w - w_r).mean().float()
        if error < best:
            best = error
        else:
            break
    codes = torch.round(w * scale + zero).clamp_(0, 15).to(torch.int64)
    return codes.reshape(-1)[: flat.numel()], {"scale": to_fp16((1.0 / scale).reshape(-1), "hqq"),
                                               "zero": to_fp16(zero.reshape(-1), "hqq")}


def decode_hqq(stored: dict, book: Codebook) -> BlockScales:
    """(q - zero) x scale: zero / unit and scale x unit, so (q / unit - zero / unit) x scale x unit
    is hqq's float to the bit."""
    return BlockScales(stored["scale"].to(torch.float32) * book.unit,
                       zero=stored["zero"].to(torch.float32) / book.unit)


def stored_hqq(stored: dict, book: Codebook) -> StoredScales:
    return StoredScales("half_zero", (stored["scale"], stored["zero"]), constant=book.unit)


def codec(name: str, path: str):
    """(encode, decode) of a scale format, from its spec's `codec` ("module:prefix")."""
    module, prefix = _codec_module(path)
    return getattr(module, f"encode_{prefix}"), getattr(module, f"decode_{prefix}")


def stored_codec(path: str):
    """A scale format's `stored_` function (its constants for the compiled decode), or None."""
    module, prefix = _codec_module(path)
    return getattr(module, f"stored_{prefix}", None)


def _codec_module(path: str):
    import importlib

    module_name, prefix = path.split(":")
    return importlib.import_module(module_name), prefix
