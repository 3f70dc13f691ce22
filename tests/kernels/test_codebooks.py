"""Codebooks: NF4 from normal quantiles equals bitsandbytes' table; every kind builds from a spec."""

from __future__ import annotations

import bitsandbytes.functional as bnbf
import pytest
import torch

from qlora_kernels import CODEBOOK_SPECS, Codebook, codebook, codebook_from_spec


def test_nf4_computed_from_normal_quantiles_equals_bitsandbytes_table_exactly():
    assert torch.equal(codebook("nf4").tensor(), bnbf.get_4bit_type("nf4", device="cpu"))


def test_fp4_is_bitsandbytes_e2m1_layout():
    assert torch.equal(codebook("fp4").tensor(), bnbf.get_4bit_type("fp4", device="cpu"))


@pytest.mark.parametrize("name,bits", [("nf4", 4), ("nf3", 3), ("nf2", 2)])
def test_normal_float_is_asymmetric_with_an_exact_zero(name, bits):
    values = codebook(name).tensor()
    assert values.numel() == 2**bits and codebook(name).bits == bits
    assert torch.equal(values, values.sort().values)  # code order is value order
    assert (values == 0).sum() == 1 and values.max() == 1.0 and values.min() == -1.0
    assert (values > 0).sum() == 2 ** (bits - 1) and (values < 0).sum() == 2 ** (bits - 1) - 1


def test_int4_is_symmetric_sevenths():
    values = codebook("int4").tensor()
    assert sorted(set((values * 7).round().tolist())) == list(range(-7, 8))


def test_fp4_e3m0_is_signed_powers_of_two():
    values = codebook("fp4_e3m0").tensor()
    magnitudes = sorted(set(values.abs().tolist()))
    assert magnitudes == [0.0] + [2.0**-i for i in range(6, -1, -1)]


def test_int8_spans_minus_one_to_one():
    values = codebook("int8").tensor()
    assert values.numel() == 256 and values[-1] == 1.0 and (values == 0).sum() == 1


def test_a_new_codebook_is_a_few_lines_of_spec():
    book = codebook_from_spec("nf3_wide", {"kind": "normal_float", "bits": 3, "offset": 0.99})
    assert book.bits == 3 and book.values != codebook("nf3").values
    table = codebook_from_spec("tern", {"kind": "table", "values": [-1, 0, 1, 0]})
    assert table.values == (-1.0, 0.0, 1.0, 0.0)


@pytest.mark.parametrize("make,message", [
    (lambda: codebook("nf5"), "unknown codebook 'nf5'; shipped: nf4, nf3"),
    (lambda: Codebook("three", (0.0, 0.5, 1.0)), "has 3 values; expected a power of two"),
    (lambda: Codebook("big", (0.0, 2.0)), "values outside \\[-1, 1\\]"),
    (lambda: codebook_from_spec("x", {"kind": "posit"}), "kind 'posit' is not one of"),
])
def test_bad_codebooks_are_refused_clearly(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_codebook_argument_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="codebook must be a name or a Codebook, not int"):
        codebook(4)


def test_every_shipped_spec_builds():
    for name in CODEBOOK_SPECS:
        assert codebook(name).name == name
