"""QuantLinear: x @ dequant(W).T + b, input-only gradients, no dequantized weight kept, state_dict."""

from __future__ import annotations

import pytest
import torch

from qlora_kernels import QuantLinear, dequantize


def layer(book="nf4", dq=True, bias=True, out_features=48, in_features=80) -> tuple[torch.nn.Linear, QuantLinear]:
    torch.manual_seed(0)
    dense = torch.nn.Linear(in_features, out_features, bias=bias)
    return dense, QuantLinear.from_linear(dense, book, blocksize=64, double_quant=dq, compute_dtype=torch.float32)


@pytest.mark.parametrize("book", ["nf4", "int4", "nf3"])
def test_forward_is_x_times_dequantized_weight_plus_bias(book):
    dense, quant = layer(book)
    x = torch.randn(3, 7, 80)
    expected = x @ dequantize(quant.quant_state(), torch.float32).t() + dense.bias
    torch.testing.assert_close(quant(x), expected)


def test_gradient_goes_to_the_input_only_and_matches_the_dense_reference():
    _, quant = layer()
    weight = dequantize(quant.quant_state(), torch.float32)
    x = torch.randn(5, 80, requires_grad=True)
    quant(x).pow(2).sum().backward()
    reference = x.detach().clone().requires_grad_(True)
    (reference @ weight.t() + quant.bias).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad)
    assert not [p for p in quant.parameters() if p.requires_grad]


def test_no_dequantized_weight_is_kept_between_forward_and_backward():
    _, quant = layer(out_features=64, in_features=128)
    saved = []
    x = torch.randn(2, 128, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        out = quant(x)
    assert torch.Size([64, 128]) not in saved and torch.Size([128, 64]) not in saved
    out.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("dq", [False, True])
def test_state_dict_round_trip(dq):
    _, quant = layer(dq=dq)
    fresh = QuantLinear(80, 48, True, "nf4", blocksize=64, double_quant=dq, compute_dtype=torch.float32)
    fresh.load_state_dict(quant.state_dict())
    x = torch.randn(4, 80)
    assert torch.equal(fresh(x), quant(x))


def test_a_state_dict_from_another_codebook_is_refused():
    _, quant = layer("nf4")
    other = QuantLinear(80, 48, True, "int4", blocksize=64, double_quant=True, compute_dtype=torch.float32)
    with pytest.raises(ValueError, match="state_dict holds a codebook of 'nf4', this layer 'int4'"):
        other.load_state_dict(quant.state_dict())


def test_peft_lora_wraps_it_and_trains_only_the_adapters():
    from peft import LoraConfig, get_peft_model

    from qlora_lab.model.lab_backend import LoraQuantLinear, register_with_peft

    _, quant = layer()
    model = torch.nn.Sequential()
    model.add_module("proj", quant)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["proj"])
    register_with_peft(config)
    peft_model = get_peft_model(model, config)
    wrapped = peft_model.base_model.model.proj
    assert isinstance(wrapped, LoraQuantLinear) and wrapped.base_layer is quant
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    peft_model(torch.randn(2, 80)).sum().backward()
    assert all(p.grad is not None for n, p in peft_model.named_parameters() if "lora_B" in n)


NAMED = {"mxfp4": ("e2m1", 32, "e8m0"), "nvfp4": ("e2m1", 16, "e4m3"), "q4_0": ("int4_grid", 32, "fp16"),
         "q4_k": ("uint4", 32, "q4_k"), "hqq4": ("uint4", 64, "hqq")}


@pytest.mark.parametrize("name", NAMED)
def test_the_2026_formats_forward_backward_round_trip_and_requantize(name):
    book, blocksize, scale = NAMED[name]
    torch.manual_seed(0)
    dense = torch.nn.Linear(256, 48)
    quant = QuantLinear.from_linear(dense, book, blocksize, compute_dtype=torch.float32, scale=scale)
    weight = dequantize(quant.quant_state(), torch.float32)
    assert (weight - dense.weight).norm() < 0.25 * dense.weight.norm()  # it is that weight, in 4 bits
    x = torch.randn(5, 256, requires_grad=True)
    quant(x).pow(2).sum().backward()
    reference = x.detach().clone().requires_grad_(True)
    (reference @ weight.t() + quant.bias).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad)
    fresh = QuantLinear(256, 48, True, book, blocksize, compute_dtype=torch.float32, scale=scale)
    fresh.load_state_dict(quant.state_dict())
    assert torch.equal(fresh(x), quant(x))
    stored = quant.stored_state()
    quant.requantize(dense.weight.detach() * 2)
    assert quant.quant_state().scale_format == scale and not torch.equal(quant(x), fresh(x))
    quant.restore_state(stored)
    assert torch.equal(quant(x), fresh(x))


def test_a_state_dict_of_another_scale_format_is_refused():
    dense = torch.nn.Linear(64, 16)
    nvfp4 = QuantLinear.from_linear(dense, "e2m1", 16, compute_dtype=torch.float32, scale="e4m3")
    mxfp4 = QuantLinear(64, 16, True, "e2m1", 16, compute_dtype=torch.float32, scale="e8m0")
    with pytest.raises(ValueError, match="state_dict holds a scale of 'e4m3', this layer 'e8m0'"):
        mxfp4.load_state_dict(nvfp4.state_dict())
