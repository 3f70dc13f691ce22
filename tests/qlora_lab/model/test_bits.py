"""Stored bits per weight, read from real bitsandbytes layers, against the paper's arithmetic."""

from __future__ import annotations

import math

import bitsandbytes as bnb
import pytest
import torch

from qlora_lab.model.bits import base_linear_bits, linear_weight_bits


def quantized_4bit(out_features: int, in_features: int, quant_type: str, double_quant: bool):
    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, compress_statistics=double_quant,
                              quant_type=quant_type)
    return layer.to("cpu")  # bitsandbytes quantizes on the move to a device


def expected_4bit(n: int, blocksize: int = 64, double_quant: bool = True) -> float:
    """Two codes a byte (an odd count pads a nibble) + an absmax per block (8-bit under DQ,
    with float32 constants per 256 blocks and an offset)."""
    codes, blocks = 8 * math.ceil(n / 2), math.ceil(n / blocksize)
    if not double_quant:
        return (codes + 32 * blocks) / n
    return (codes + 8 * blocks + 32 * math.ceil(blocks / 256) + 32) / n


def test_nf4_double_quant_4096_square_is_the_papers_4127():
    n, bits = linear_weight_bits(quantized_4bit(4096, 4096, "nf4", True))
    assert n == 4096 * 4096
    assert bits / n == pytest.approx(expected_4bit(n), abs=1e-12)
    assert round(bits / n, 3) == 4.127  # 4 + 8/64 + 32/(64*256)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_without_double_quant_a_float32_absmax_per_block(quant_type):
    n, bits = linear_weight_bits(quantized_4bit(256, 320, quant_type, False))
    assert bits / n == pytest.approx(4.5)  # 4 + 32/64


def test_odd_sizes_count_the_partial_block():
    n, bits = linear_weight_bits(quantized_4bit(3, 45, "nf4", True))  # 135 weights: 3 blocks, 68 bytes
    assert n == 135 and bits / n == pytest.approx(expected_4bit(135))


def test_int8_rows_and_their_scales():
    from transformers import BitsAndBytesConfig  # noqa: F401  (the int8 path goes through transformers)

    layer = bnb.nn.Linear8bitLt(512, 128, bias=False, has_fp16_weights=False).to("cpu")
    n, bits = linear_weight_bits(layer)
    assert n == 512 * 128 and bits / n == pytest.approx(8 + 32 / 512)


def test_unquantized_linear_counts_its_dtype():
    layer = torch.nn.Linear(64, 32, bias=False).to(torch.bfloat16)
    assert linear_weight_bits(layer) == (2048, 2048 * 16)


def test_model_total_skips_the_head_and_lora_layers():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    model.add_module("lora_A", torch.nn.Linear(8, 2))
    stored = base_linear_bits(model, skip={id(model[1])})
    assert (stored.n_weights, stored.bits_per_param) == (64, 32.0)
