"""The 2026 formats against their reference libraries, bit for bit: codes and decoded values.

MXFP4 and NVFP4 against torchao's mx_formats (on the CPU), Q4_0 against the gguf package's
quantize and dequantize, Q4_K's decode against gguf's dequantize (gguf has no Q4_K quantizer),
HQQ against hqq's Quantizer. The reference libraries are test dependencies only (the lock's
`refs` extra), which `make install` puts in the venv's `refs` folder, apart from its own path:
installed in the venv, transformers would import hqq and torchao at every run's start. This module
adds the folder to its process's path; a missing library skips its tests with the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from qlora_kernels import dequantize, native, quantize
from qlora_kernels.packing import unpack
from qlora_kernels.scale_formats import unpack_k4_scales

REFS = Path(sys.prefix) / "refs"  # make install: `uv pip install --target .venv/refs` of the lock's refs pins
if REFS.is_dir() and str(REFS) not in sys.path:
    sys.path.append(str(REFS))

# odd shapes need whole blocks for the references (they take whole rows of blocks); the edge cases
# come from the weights: all-zero blocks, tiny and huge scales
SHAPES = [(4, 64), (3, 96), (16, 256), (5, 512)]


def weights(shape, seed: int = 0, huge: float = 1e30) -> torch.Tensor:
    """Gaussian weights with an all-zero block, a block of tiny values, one of huge values and
    one holding a single outlier. `huge`: 1e30 for the formats with an fp32 or a power-of-two
    scale; the fp16-scaled ones (Q4_0, Q4_K, HQQ) hold weights up to about 5e5 and refuse more."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    flat = w.view(-1)
    flat[:32] = 0.0
    flat[32:64] *= 1e-30
    if flat.numel() >= 128:
        flat[64:96] *= huge
        flat[100] = 50.0
    return w


def codes_of(state) -> torch.Tensor:
    return unpack(state.packed, 4, state.numel)


def decoded(state, compiled: bool) -> torch.Tensor:
    with native.enabled(compiled):
        return dequantize(state, torch.float32)


def same_bits(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal as float32 bit patterns (so -0.0 and 0.0 differ, and NaN equals itself)."""
    ours, theirs = ours.float().contiguous(), theirs.float().contiguous().view(ours.shape)
    diff = (ours.view(torch.int32) != theirs.view(torch.int32)).nonzero()
    assert diff.numel() == 0, f"{diff.shape[0]} values differ, first at {diff[0].tolist()}: " \
                              f"{ours[tuple(diff[0])].item()} vs {theirs[tuple(diff[0])].item()}"


# ---- torchao: MXFP4 and NVFP4 ----------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale, mode", [("e8m0", "FLOOR"), ("e8m0_rceil", "RCEIL")])
def test_mxfp4_matches_torchao(shape, scale, mode):
    mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor", reason="torchao is a test dependency")
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.kernels import unpack_uint4

    w = weights(shape)
    scale_e8m0, data_lp = mx.to_mx(w, torch.float4_e2m1fn_x2, 32, getattr(ScaleCalculationMode, mode))
    state = quantize(w, "e2m1", 32, scale=scale)
    assert torch.equal(state.scales["e8m0"], scale_e8m0.view(torch.uint8).reshape(-1))
    assert torch.equal(codes_of(state), unpack_uint4(data_lp.view(torch.uint8)).reshape(-1).to(torch.int64))
    reference = mx.to_dtype(data_lp, scale_e8m0, torch.float4_e2m1fn_x2, 32, torch.float32)
    for compiled in (False, True):
        same_bits(decoded(state, compiled), reference)


@pytest.mark.parametrize("shape", SHAPES)
def test_nvfp4_matches_torchao(shape):
    nv = pytest.importorskip("torchao.prototype.mx_formats.nvfp4_tensor", reason="torchao is a test dependency")
    from torchao.prototype.mx_formats.kernels import unpack_uint4

    w = weights(shape)
    global_scale = nv.per_tensor_amax_to_scale(w.abs().amax())
    fp8, data_lp = nv.nvfp4_quantize(w, 16, per_tensor_scale=global_scale)
    state = quantize(w, "e2m1", 16, scale="e4m3")
    assert torch.equal(state.scales["e4m3"], fp8.view(torch.uint8).reshape(-1))
    assert state.scales["global"].item() == global_scale.item()
    assert torch.equal(codes_of(state), unpack_uint4(data_lp).reshape(-1).to(torch.int64))
    tensor = nv.NVFP4Tensor(data_lp, fp8, 16, torch.float32, per_tensor_scale=global_scale)
    for compiled in (False, True):
        same_bits(decoded(state, compiled), tensor.dequantize(torch.float32))


# ---- gguf: Q4_0 and Q4_K -----------------------------------------------------------------------

def _gguf():
    return pytest.importorskip("gguf", reason="gguf is a test dependency")


@pytest.mark.parametrize("shape", SHAPES)
def test_q4_0_matches_gguf(shape):
    gguf = _gguf()
    w = weights(shape, huge=1e4)
    raw = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q4_0)
    blocks = raw.reshape(-1, 18)
    d = blocks[:, :2].copy().view(np.float16).reshape(-1)
    qs = blocks[:, 2:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=1).reshape(-1)  # GGUF: low nibbles first, then high
    state = quantize(w, "int4_grid", 32, scale="fp16")
    assert np.array_equal(state.scales["fp16"].numpy().view(np.uint16), d.view(np.uint16))
    assert np.array_equal(codes_of(state).numpy(), codes.astype(np.int64))
    reference = torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_0).copy())
    for compiled in (False, True):
        same_bits(decoded(state, compiled), reference)


def gguf_q4_k_bytes(state) -> np.ndarray:
    """Our Q4_K state as GGUF's 144-byte blocks (d, dmin, 12 scale bytes, 128 code bytes)."""
    codes = codes_of(state).numpy().astype(np.uint8)
    codes = np.concatenate([codes, np.zeros(-codes.size % 256, np.uint8)]).reshape(-1, 4, 2, 32)
    qs = (codes[:, :, 0, :] | (codes[:, :, 1, :] << 4)).reshape(-1, 128)  # 64 weights per 32 bytes
    d = state.scales["d"].numpy().view(np.uint8).reshape(-1, 2)
    dmin = state.scales["dmin"].numpy().view(np.uint8).reshape(-1, 2)
    return np.concatenate([d, dmin, state.scales["scales"].numpy(), qs], axis=1)


@pytest.mark.parametrize("shape", [(4, 256), (16, 512), (3, 768)])
def test_q4_k_decode_matches_gguf(shape):
    gguf = _gguf()
    w = weights(shape, huge=1e4)
    state = quantize(w, "uint4", 32, scale="q4_k")
    reference = gguf.quants.dequantize(gguf_q4_k_bytes(state), gguf.GGMLQuantizationType.Q4_K)
    for compiled in (False, True):
        same_bits(decoded(state, compiled), torch.from_numpy(reference.copy()).reshape(shape))


def test_q4_k_scale_bytes_round_trip():
    """The 6-bit scales and mins pack into GGUF's 12 bytes and back as gguf's get_scale_min reads them."""
    gguf = _gguf()
    rng = np.random.default_rng(0)
    scales, mins = rng.integers(0, 64, (50, 8)), rng.integers(0, 64, (50, 8))
    from qlora_kernels.scale_formats import _pack_k4_scales

    packed = _pack_k4_scales(torch.from_numpy(scales), torch.from_numpy(mins))
    theirs = gguf.quants.Q4_K.get_scale_min(packed.numpy())
    ours = unpack_k4_scales(packed)
    assert np.array_equal(theirs[0], scales) and np.array_equal(theirs[1], mins)
    assert np.array_equal(ours[0].numpy(), scales) and np.array_equal(ours[1].numpy(), mins)


def test_q4_k_fits_better_than_plain_min_max():
    """No reference quantizer to compare with: its search must at least beat the first guess."""
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    error = (dequantize(quantize(w, "uint4", 32, scale="q4_k"), torch.float32) - w).pow(2).mean()
    affine = (dequantize(quantize(w, "int4_affine", 32), torch.float32) - w).pow(2).mean()
    assert error < affine * 1.05


# ---- hqq -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, group", [((4, 64), 64), ((16, 256), 64), ((8, 128), 32), ((5, 512), 128)])
def test_hqq4_matches_hqq(shape, group):
    quantize_mod = pytest.importorskip("hqq.core.quantize", reason="hqq is a test dependency")
    w = weights(shape, seed=2, huge=1e3)
    packed, meta = quantize_mod.Quantizer.quantize(w, nbits=4, group_size=group, optimize=True, axis=1,
                                                   device="cpu", compute_dtype=torch.float32)
    w_q = quantize_mod.Quantizer.unpack[meta["packing"]](packed, dtype=torch.uint8)
    state = quantize(w, "uint4", group, scale="hqq")
    assert torch.equal(codes_of(state), w_q.reshape(-1).to(torch.int64))
    assert torch.equal(state.scales["scale"], meta["scale"].reshape(-1).to(torch.float16))
    assert torch.equal(state.scales["zero"], meta["zero"].reshape(-1).to(torch.float16))
    stored = dict(meta, scale=meta["scale"].half().float(), zero=meta["zero"].half().float(),
                  compute_dtype=torch.float32)  # as HQQLinear keeps them (fp16), computed in float32
    reference = quantize_mod.Quantizer.dequantize(packed, stored)
    for compiled in (False, True):
        same_bits(decoded(state, compiled), reference)


# ---- refused input -------------------------------------------------------------------------------

@pytest.mark.parametrize("book, blocksize, scale", [("e2m1", 32, "e8m0"), ("e2m1", 16, "e4m3"),
                                                    ("int4_grid", 32, "fp16"), ("uint4", 32, "q4_k"),
                                                    ("uint4", 64, "hqq")])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_refused_in_one_line(book, blocksize, scale, bad):
    w = torch.randn(4, 64)
    w[2, 7] = bad
    with pytest.raises(ValueError, match=r"non-finite weight .* at flat index 135") as error:
        quantize(w, book, blocksize, scale=scale)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("book, blocksize, scale", [("int4_grid", 32, "fp16"), ("uint4", 32, "q4_k"),
                                                    ("uint4", 64, "hqq")])
def test_weights_beyond_fp16_scales_refused_in_one_line(book, blocksize, scale):
    with pytest.raises(ValueError, match=rf"scale format {scale}: a block constant of .* overflows fp16") as error:
        quantize(weights((4, 256), huge=1e30), book, blocksize, scale=scale)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("book, blocksize, scale, says", [
    ("uint4", 32, "e8m0", "codebooks with values of both signs"),
    ("nf4", 32, "q4_k", "defined for uint4"),
    ("nf4", 64, "fp16", "defined for int4_grid"),
    ("int4_grid", 64, "fp16", "takes block size 32"),
    ("int4_affine", 32, "e4m3", "only scale formats fp32 and dq8"),
])
def test_crosses_that_cannot_exist_are_refused(book, blocksize, scale, says):
    with pytest.raises(ValueError, match=says):
        quantize(torch.randn(4, 64), book, blocksize, scale=scale)
