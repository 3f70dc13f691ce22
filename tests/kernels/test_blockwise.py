"""quantize / dequantize: bit-exact with bitsandbytes' CPU backend, any shape, any blocksize."""

from __future__ import annotations

import math

import bitsandbytes.functional as bnbf
import pytest
import torch

from qlora_kernels import QuantState, codebook, dequantize, quantize
from qlora_kernels.packing import pack, unpack

SHAPES = [(4096,), (64, 96), (3, 5, 7), (1001,), (33, 65), (2, 300, 17)]
BLOCKSIZES = [32, 64, 128, 256, 512, 1024, 2048, 4096]


@pytest.mark.parametrize("double_quant", [False, True], ids=["plain", "dq"])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", BLOCKSIZES)
def test_bytes_and_values_match_bitsandbytes(quant_type, blocksize, double_quant):
    torch.manual_seed(blocksize)
    for shape in SHAPES:
        weight = torch.randn(shape) * 0.02
        theirs, their_state = bnbf.quantize_4bit(weight, blocksize=blocksize, quant_type=quant_type,
                                                 compress_statistics=double_quant)
        ours = quantize(weight, quant_type, blocksize=blocksize, double_quant=double_quant)
        their_values = bnb_values(theirs, their_state, shape)
        if quant_type == "nf4":
            assert torch.equal(ours.packed, theirs.reshape(-1)), shape
        else:  # FP4 may differ only in the sign of zero: the bytes must decode to the same values
            ours_in_bnb = bnb_values(ours.packed.reshape(theirs.shape), their_state, shape)
            assert torch.equal(ours_in_bnb, their_values), shape
        assert dequantize(ours).shape == weight.shape
        if double_quant:
            assert_double_quant_matches(ours, their_state)
        assert torch.equal(dequantize(ours), their_values), shape


def bnb_values(packed, state, shape) -> torch.Tensor:
    """The values bitsandbytes stores: its code table at its codes, times its block constants
    (dequantized by its own dequantize_blockwise under double quantization).

    Not its dequantize_4bit: on this CPU that returns wrong values for some 2-D shapes (seen:
    (64, 96) at blocksizes 64 to 1024 uses another block's constant from the second block on),
    while 1-D and 3-D tensors agree with this decode exactly."""
    codes = torch.stack([packed.reshape(-1) >> 4, packed.reshape(-1) & 0xF], dim=1).reshape(-1).long()
    absmax = state.absmax
    if state.nested:
        absmax = bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset
    n, bs = shape.numel() if hasattr(shape, "numel") else torch.Size(shape).numel(), state.blocksize
    values = state.code[codes[:n]] * absmax.repeat_interleave(bs)[:n]
    return values.reshape(shape)


def test_bitsandbytes_own_dequantize_agrees_with_the_decode_on_1d_and_3d():
    for shape in [(4096,), (1001,), (3, 5, 7), (2, 300, 17)]:
        weight = torch.randn(shape)
        packed, state = bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4")
        assert torch.equal(bnbf.dequantize_4bit(packed, state).reshape(shape), bnb_values(packed, state, shape))


def assert_double_quant_matches(ours, their_state):
    """The block constants' 8-bit codes, map, offset and second-level absmax: all bitsandbytes'."""
    nested = ours.nested
    assert torch.equal(nested.codes, their_state.absmax)
    assert torch.equal(nested.code, their_state.state2.code) and nested.offset == float(their_state.offset)
    assert torch.equal(nested.absmax, their_state.state2.absmax)


def test_double_quant_of_a_large_weight_matches_bitsandbytes_code_for_code():
    """4096 x 4096 at blocksize 64: 262,144 constants. A nearest-value rule differs from
    bitsandbytes' CPU rule on 0.18% of them (481 here); ours must differ on none."""
    torch.manual_seed(0)
    weight = torch.randn(4096, 4096) * 0.02
    theirs, their_state = bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=True)
    ours = quantize(weight, "nf4", blocksize=64, double_quant=True)
    assert_double_quant_matches(ours, their_state)
    assert torch.equal(dequantize(ours), bnb_values(theirs, their_state, weight.shape))


def test_dynamic_map_codes_are_bitsandbytes_on_every_cell_and_random_values():
    """bitsandbytes' 8-bit CPU quantize_blockwise against our rule for it (`dynamic_codes`): the
    centre and both edges of each of its 65536 cells, and 100,000 values in [-1, 1]."""
    from qlora_kernels.double_quant import LOOKUP_CELLS, dynamic_codes

    cells = torch.arange(LOOKUP_CELLS, dtype=torch.float64) / ((LOOKUP_CELLS - 1) / 2) - 1
    half = 1 / (LOOKUP_CELLS - 1)
    probes = torch.cat([cells, cells - 0.999 * half, cells + 0.999 * half]).clamp(-1, 1).float()
    probes = torch.cat([probes, torch.rand(100_000) * 2 - 1, torch.randn(50_000) * 0.01]).clamp(-1, 1)
    rows = -(-probes.numel() // 255)
    # each row of 256: 255 probes and a 1.0 that fixes the row's absmax at 1, so each probe is its own normed value
    grid = torch.cat([torch.nn.functional.pad(probes, (0, rows * 255 - probes.numel())).view(rows, 255),
                      torch.ones(rows, 1)], dim=1)
    theirs, state = bnbf.quantize_blockwise(grid.reshape(-1), blocksize=256)
    assert torch.equal(state.absmax, torch.ones(rows))
    assert torch.equal(dynamic_codes(probes), theirs.view(rows, 256)[:, :255].reshape(-1)[: probes.numel()])


def test_odd_tail_is_padded_with_the_code_of_zero():
    state = quantize(torch.ones(3), "nf4", blocksize=64)
    assert state.packed.tolist() == [0xFF, 0xF7]  # 1.0 is code 15; the pad is NF4's zero, code 7
    assert codebook("fp4").zero_code == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dequantize_gives_back_shape_and_dtype(dtype):
    weight = torch.randn(17, 31).to(dtype)
    back = dequantize(quantize(weight, "nf4", blocksize=32))
    assert back.shape == weight.shape and back.dtype == dtype
    assert (back.float() - weight.float()).abs().max() <= weight.float().abs().max() * 0.2


def test_nf4_double_quant_blocksize_64_stores_4127_bits_per_param():
    state = quantize(torch.randn(4096, 4096), "nf4", blocksize=64, double_quant=True)
    paper = 4 + 8 / 64 + 32 / (64 * 256)
    assert state.bits_per_param == pytest.approx(paper + 32 / 4096**2, abs=1e-12)  # + the offset
    assert round(state.bits_per_param, 3) == 4.127


@pytest.mark.parametrize("name,blocksize,double_quant", [("nf4", 64, False), ("nf3", 128, True), ("nf2", 32, False),
                                                          ("int8", 256, True), ("fp4_e3m0", 4096, True)])
def test_bits_per_param_for_any_setting(name, blocksize, double_quant):
    n = 1000
    state = quantize(torch.randn(n), name, blocksize=blocksize, double_quant=double_quant)
    bits, blocks = codebook(name).bits, math.ceil(n / blocksize)
    per_group = 8 // math.gcd(8, bits)
    codes = math.ceil(n / per_group) * per_group * bits
    constants = 8 * blocks + 32 * math.ceil(blocks / 256) + 32 if double_quant else 32 * blocks
    assert state.bits_per_param == pytest.approx((codes + constants) / n)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
def test_packing_round_trips_for_every_width(bits):
    codes = torch.randint(0, 2**bits, (1003,))
    packed = pack(codes, bits, pad_code=0)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(1003 / (8 // math.gcd(8, bits))) * bits * (8 // math.gcd(8, bits)) // 8
    assert torch.equal(unpack(packed, bits, 1003), codes)


@pytest.mark.parametrize("name", ["nf3", "nf2", "int4", "fp4_e3m0", "int8"])
def test_every_codebook_round_trips_to_its_nearest_values(name):
    weight = torch.randn(5, 77)
    state = quantize(weight, name, blocksize=32)
    book = codebook(name).tensor()
    flat, back = weight.reshape(-1), dequantize(state).reshape(-1)
    absmax = torch.cat([flat[i:i + 32].abs().max().repeat(min(32, flat.numel() - i)) for i in range(0, flat.numel(), 32)])
    best = (flat.unsqueeze(1) / absmax.unsqueeze(1) - book).abs().min(dim=1).values * absmax
    assert torch.allclose((flat - back).abs(), best, atol=1e-6)  # no element got worse than its nearest value


def test_state_dict_form_round_trips():
    for name in ("nf3", "int4_affine"):
        for dq in (False, True):
            state = quantize(torch.randn(40, 50), name, blocksize=64, double_quant=dq)
            again = QuantState.from_dict(state.to_dict())
            assert torch.equal(dequantize(again), dequantize(state)) and again.bits_per_param == state.bits_per_param
            assert again.codebook.affine == (name == "int4_affine")


@pytest.mark.parametrize("blocksize", [32, 64, 256])
def test_int4_affine_round_trips_within_half_a_level_of_its_block_range(blocksize):
    """16 uniform levels from each block's minimum to its maximum: no weight moves by more than
    half a level, (max - min) / 30, and a block's extremes come back (nearly) exactly."""
    weight = torch.randn(37, 91) * 0.02 + 0.005  # off-centre: an affine type's case
    flat, back = weight.reshape(-1), dequantize(quantize(weight, "int4_affine", blocksize=blocksize)).reshape(-1)
    for start in range(0, flat.numel(), blocksize):
        block, got = flat[start:start + blocksize], back[start:start + blocksize]
        half_level = (block.max() - block.min()) / 30
        assert (block - got).abs().max() <= half_level * (1 + 1e-5) + 1e-7
        assert got.max() == pytest.approx(block.max().item(), abs=1e-6)
        assert got.min() == pytest.approx(block.min().item(), abs=1e-6)


def test_int4_affine_is_closer_than_symmetric_int4_on_shifted_weights():
    weight = torch.rand(64, 256) * 0.04 + 0.01  # all positive: symmetric absmax wastes half its levels
    error = lambda name: (dequantize(quantize(weight, name, blocksize=64)) - weight).pow(2).mean()
    assert error("int4_affine") < error("int4") / 3


@pytest.mark.parametrize("blocksize,double_quant", [(32, False), (64, False), (256, True), (64, True)])
def test_int4_affine_bits_per_param_counts_its_zero_points(blocksize, double_quant):
    """4 code bits + two constants per block (scale and centre): 32 bits each, or under DQ 8 bits
    each plus, per 256 blocks, 32 bits each, plus the two means."""
    n = 64 * 1024
    state = quantize(torch.randn(n), "int4_affine", blocksize=blocksize, double_quant=double_quant)
    blocks = n // blocksize
    constants = 2 * (8 * blocks + 32 * math.ceil(blocks / 256) + 32) if double_quant else 2 * 32 * blocks
    assert state.bits_per_param == pytest.approx(4 + constants / n)
    if not double_quant:
        assert state.bits_per_param == 4 + 64 / blocksize


@pytest.mark.parametrize("call,error,message", [
    (lambda: quantize(torch.randn(8), "nf4", blocksize=48), ValueError, "blocksize 48 must be a power of two from 16 to 4096"),
    (lambda: quantize(torch.randn(8), "nf4", blocksize=8192), ValueError, "blocksize 8192 must be a power of two"),
    (lambda: quantize(torch.randn(8), "nf4", blocksize=64.0), TypeError, "blocksize must be an int, not float"),
    (lambda: quantize(torch.randn(8), "nf9"), ValueError, "unknown codebook 'nf9'"),
    (lambda: quantize(torch.arange(8), "nf4"), TypeError, "weight must be floating point, not torch.int64"),
    (lambda: quantize([1.0, 2.0], "nf4"), TypeError, "weight must be a torch.Tensor, not list"),
])
def test_bad_input_is_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()
