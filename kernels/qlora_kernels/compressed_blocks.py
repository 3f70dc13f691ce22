"""NVFP4 as compressed-tensors stores it <-> QuantState, tensor for tensor: a released NVFP4 layer
becomes a QuantState without a float copy of it ever being made, and a QuantState (or a float
weight) is written back as the tensors compressed-tensors' `nvfp4-pack-quantized` format reads.

The layout (compressed-tensors' NVFP4PackedCompressor), per linear layer of out x in weights:
- `weight_packed`: uint8 [out, in / 2], two E2M1 codes a byte, the first in the LOW nibble (ours
  is bitsandbytes' order, first code high: the nibbles swap on the way in and out);
- `weight_scale`: FP8-E4M3 [out, in / 16], one per 16 weights along a row;
- `weight_global_scale`: fp32 [1], 448 x 6 / the tensor's amax: a divisor, where torchao's NVFP4
  multiplies by its inverse. The decode is code x (weight_scale / weight_global_scale), the
  quotient rounded to float32 once (scale_formats.decode_e4m3's `divisor`).
"""

from __future__ import annotations

import torch

from qlora_kernels.blockwise import QuantState, stored_codebook
from qlora_kernels.scale_formats import E4M3_MAX, check_finite

NVFP4_GROUP = 16
FP4_MAX = 6.0
FP8_EPS = 0.125  # compressed-tensors' stand-in for a zero FP8 block scale (its _get_dtype_eps)


def _swap_nibbles(packed: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    if in_place:  # no second copy of the codes: a released layer is read once and swapped where it lies
        high = packed >> 4
        return packed.bitwise_left_shift_(4).bitwise_or_(high)
    return (packed << 4) | (packed >> 4)  # uint8: the left shift drops the high nibble


def state_from_nvfp4(packed: torch.Tensor, scale: torch.Tensor, global_scale: torch.Tensor,
                     dtype: torch.dtype = torch.float32, in_place: bool = False) -> QuantState:
    """A layer's three stored tensors -> a QuantState (e2m1 x e4m3 x 16) decoding to what
    compressed-tensors' decompression gives, bit for bit (before its cast to the model's dtype).
    `in_place`: `packed` becomes the state's codes (the loader's own copy), not copied."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"weight_packed must be a 2-D uint8 tensor, not {packed.dtype} {tuple(packed.shape)}")
    rows, cols = packed.shape[0], 2 * packed.shape[1]
    if cols % NVFP4_GROUP or tuple(scale.shape) != (rows, cols // NVFP4_GROUP):
        raise ValueError(f"an NVFP4 layer of {rows} x {cols} weights holds a weight_scale of {rows} x "
                         f"{cols // NVFP4_GROUP} (one per {NVFP4_GROUP}), not {tuple(scale.shape)}")
    if global_scale.numel() != 1:
        raise ValueError(f"weight_global_scale must hold one value per tensor, not {global_scale.numel()}")
    fp8 = scale if scale.dtype == torch.float8_e4m3fn else scale.to(torch.float8_e4m3fn)
    return QuantState(packed=_swap_nibbles(packed, in_place).reshape(-1), absmax=None, nested=None,
                      shape=torch.Size((rows, cols)), dtype=dtype, blocksize=NVFP4_GROUP,
                      codebook=stored_codebook("e2m1", "e4m3"), scale_format="e4m3",
                      scales={"e4m3": fp8.reshape(-1).view(torch.uint8).clone(),
                              "divisor": global_scale.to(torch.float32).reshape(())})


def nvfp4_tensors(state: QuantState) -> dict[str, torch.Tensor]:
    """A QuantState in compressed-tensors' convention (from state_from_nvfp4 or quantize_nvfp4) ->
    the layer's weight_packed, weight_scale and weight_global_scale."""
    if state.scale_format != "e4m3" or "divisor" not in state.scales or state.blocksize != NVFP4_GROUP \
            or len(state.shape) != 2:
        raise ValueError(f"a {state.codebook.name} x {state.scale_name} x {state.blocksize} state is not NVFP4 in "
                         f"compressed-tensors' layout (e2m1 x e4m3 x 16 under a divisor; quantize_nvfp4 makes one)")
    rows, cols = state.shape
    return {"weight_packed": _swap_nibbles(state.packed).reshape(rows, cols // 2),
            "weight_scale": state.scales["e4m3"].view(torch.float8_e4m3fn).reshape(rows, cols // NVFP4_GROUP),
            "weight_global_scale": state.scales["divisor"].reshape(1).to(torch.float32)}


def quantize_nvfp4(weight: torch.Tensor) -> QuantState:
    """A 2-D float weight as compressed-tensors' NVFP4 writes it, following its float steps in the
    weight's own dtype (generate_gparam, calculate_qparams, quantize, pack_fp4_to_uint8), so that
    the stored tensors equal its compressor's for the same weight."""
    if weight.dim() != 2 or weight.shape[1] % NVFP4_GROUP:
        raise ValueError(f"NVFP4 stores 2-D weights whose rows hold whole groups of {NVFP4_GROUP}, "
                         f"not {tuple(weight.shape)}")
    w = weight.detach()
    check_finite(w.reshape(-1))
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    peak = torch.maximum(torch.minimum(w.amin(), zero).abs(), torch.maximum(w.amax(), zero).abs())
    peak = torch.clamp(peak, min=torch.finfo(peak.dtype).tiny)
    divisor = torch.nan_to_num((E4M3_MAX * FP4_MAX) / peak, nan=1.0, posinf=1.0, neginf=1.0)
    divisor = divisor.to(torch.float32).reshape(1)
    rows, cols = w.shape
    groups = w.reshape(rows, cols // NVFP4_GROUP, NVFP4_GROUP)
    group_peak = torch.maximum(torch.minimum(groups.amin(-1), zero).abs(), torch.maximum(groups.amax(-1), zero).abs())
    scale = divisor * (group_peak / torch.tensor(2 * FP4_MAX, device=w.device).to(group_peak.dtype).div(2))
    fp8 = torch.clamp(scale, -E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    fp8 = torch.where(fp8.to(torch.float32) == 0, FP8_EPS, fp8.to(torch.float32)).to(torch.float8_e4m3fn)
    scaled = torch.clamp(groups / (fp8.to(torch.float32) / divisor).unsqueeze(-1), -FP4_MAX, FP4_MAX)
    rounded = _round_e2m1(scaled.abs()) * torch.sign(scaled)
    magnitude = rounded.abs()
    index = sum((magnitude >= v).to(torch.uint8) for v in (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0))
    codes = (torch.signbit(rounded).to(torch.uint8) << 3) | index
    pairs = codes.reshape(rows, cols // 2, 2)
    packed = pairs[..., 0] | (pairs[..., 1] << 4)  # compressed-tensors' order: first code low
    return state_from_nvfp4(packed, fp8.reshape(rows, -1), divisor, dtype=weight.dtype)


def _round_e2m1(x: torch.Tensor) -> torch.Tensor:
    """compressed-tensors' cast_to_fp4 on |x|: ties to the even grid value (0.25 -> 0, 0.75 -> 1,
    1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4)."""
    grid = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=x.dtype, device=x.device)
    index = ((x > 0.25).to(torch.int64) + (x >= 0.75) + (x > 1.25) + (x >= 1.75) + (x > 2.5) + (x >= 3.5)
             + (x > 5.0))
    return grid[index]
