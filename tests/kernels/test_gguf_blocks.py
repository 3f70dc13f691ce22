"""GGUF's Q4_0, Q4_K and Q8_0 blocks <-> QuantState: a released tensor's bytes become a state
that decodes to what the `gguf` package's dequantize gives, bit for bit, and go back to the same
bytes; our Q8_0 quantizer gives gguf's codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qlora_kernels import dequantize, native, quantize
from qlora_kernels.gguf_blocks import blocks_from_state, gguf_block, state_from_blocks

gguf = pytest.importorskip("gguf", reason="gguf reads and writes GGUF files (a runtime dependency)")

SHAPES = [(4, 256), (3, 512), (17, 768)]


def weights(shape, seed: int = 0) -> torch.Tensor:
    """Gaussian, with an all-zero block, a tiny block and an outlier."""
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    flat = w.view(-1)
    flat[:32] = 0.0
    flat[32:64] *= 1e-6
    flat[100] = 40.0
    return w


def same_bits(ours: torch.Tensor, theirs: np.ndarray) -> None:
    theirs = torch.from_numpy(np.ascontiguousarray(theirs, dtype=np.float32)).view(ours.shape)
    assert torch.equal(ours.float().view(torch.int32), theirs.view(torch.int32))


@pytest.mark.parametrize("kind", ["Q4_0", "Q8_0"])
@pytest.mark.parametrize("shape", SHAPES)
def test_released_blocks_decode_as_gguf_does(kind, shape):
    qtype = getattr(gguf.GGMLQuantizationType, kind)
    raw = gguf.quants.quantize(weights(shape).numpy(), qtype)
    state = state_from_blocks(kind, raw, shape)
    reference = gguf.quants.dequantize(raw, qtype)
    for compiled in (False, True):
        with native.enabled(compiled):
            same_bits(dequantize(state, torch.float32), reference)
    name, back = blocks_from_state(state)
    assert name == kind and np.array_equal(back, raw.reshape(shape[0], -1))


@pytest.mark.parametrize("shape", SHAPES)
def test_q8_0_quantizer_gives_gguf_codes(shape):
    w = weights(shape)
    raw = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q8_0)
    _, ours = blocks_from_state(quantize(w, "int8_grid", 32, scale="fp16"))
    assert np.array_equal(ours, raw.reshape(shape[0], -1))


@pytest.mark.parametrize("shape", SHAPES)
def test_q4_k_blocks_round_trip_and_decode_as_gguf_does(shape):
    """gguf has no Q4_K quantizer: ours (llama.cpp's reference, tested in test_reference_formats)
    writes the blocks, gguf decodes them, and a state read back from them decodes the same."""
    state = quantize(weights(shape), "uint4", 32, scale="q4_k")
    name, raw = blocks_from_state(state)
    assert name == "Q4_K" and raw.shape == (shape[0], shape[1] // 256 * 144)
    reference = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_K)
    read = state_from_blocks("Q4_K", raw, shape)
    for compiled in (False, True):
        with native.enabled(compiled):
            same_bits(dequantize(read, torch.float32), reference)
            same_bits(dequantize(state, torch.float32), reference)
    assert np.array_equal(blocks_from_state(read)[1], raw)


def test_unsupported_block_types_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"GGUF tensor type Q5_K is not supported; supported: Q4_0, Q4_K, Q8_0"):
        gguf_block("Q5_K")
    with pytest.raises(ValueError, match="whole blocks of 256 weights; this one has 100"):
        state_from_blocks("Q4_K", np.zeros((2, 144), np.uint8), (2, 100))
    with pytest.raises(ValueError, match="is no GGUF block type"):
        blocks_from_state(quantize(torch.randn(4, 64), "nf4", 64))
