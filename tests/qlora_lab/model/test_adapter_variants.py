"""Adapter variants (lora.init=loftq|pissa, lora.dora, lora.rslora) on the built `tiny` base, with
real peft, bitsandbytes and our codecs: where each init starts, what LoftQ wins back, DoRA's
magnitude, rsLoRA's scale, merging in the lab layer, and the one-line refusals."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_base_dir


def _config(*overrides: str):
    from hydra import compose, initialize_config_dir

    from qlora_lab.config import run_config
    from qlora_lab.run import with_native_compute
    from qlora_lab.sweep import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return with_native_compute(run_config(compose(config_name="config", overrides=list(overrides))))


def _build(*overrides: str):
    from qlora_lab.model.build import build_model

    tiny_base_dir()
    config = _config(*overrides)
    built = build_model(config.model, config.dtype, config.lora, seed=0, gradient_checkpointing=False)
    built.model.eval()
    return config, built


def _lora_layers(model) -> dict:
    from peft.tuners.lora import LoraLayer

    return {name.removeprefix("base_model.model."): m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def _errors(config, built) -> dict[str, float]:
    """Per adapted layer: |W - (Q + sBA)|^2 against the checkpoint's W."""
    from qlora_lab.model.build import model_path
    from qlora_lab.model.weight_error import checkpoint_tensors, dequantized_weight

    original = checkpoint_tensors(model_path(config.model))
    errors = {}
    for name, layer in _lora_layers(built.model).items():
        base = layer.get_base_layer()
        weight = original.get(name, base)
        effective = dequantized_weight(base) + layer.get_delta_weight("default").float()
        errors[name] = (weight - effective).pow(2).sum().item()
    return errors


def test_each_init_starts_elsewhere_and_loftq_and_pissa_lower_the_weight_error():
    built = {init: _build("dtype.backend=lab", f"lora.init={init}") for init in ("gaussian", "loftq", "pissa")}
    layers = {init: _lora_layers(b.model) for init, (_, b) in built.items()}
    name = sorted(layers["gaussian"])[0]
    a = {init: layers[init][name].lora_A["default"].weight for init in layers}
    b = {init: layers[init][name].lora_B["default"].weight for init in layers}
    assert torch.count_nonzero(b["gaussian"]) == 0  # peft's default: the adapter adds nothing at init
    for init in ("loftq", "pissa"):
        assert torch.count_nonzero(b[init]) > 0
        assert not torch.allclose(a[init], a["gaussian"])
    assert not torch.allclose(a["loftq"], a["pissa"])

    plain = _errors(*built["gaussian"])
    for init in ("loftq", "pissa"):
        fitted = _errors(*built[init])
        assert fitted.keys() == plain.keys()
        worse = [n for n in plain if not fitted[n] < plain[n]]
        assert not worse, f"{init} does not lower |W - (Q + sBA)| in {worse}"
        # the record says the same: the weight at init is closer to the checkpoint
        assert built[init][1].info.weight_sqnr_db > built["gaussian"][1].info.weight_sqnr_db + 1.0


def test_loftq_on_either_backend_fits_the_same_quantizer_and_more_rounds_fit_no_worse():
    _, lab = _build("dtype.backend=lab", "lora.init=loftq")
    _, bnb = _build("dtype.backend=bnb", "lora.init=loftq")
    _, three = _build("dtype.backend=lab", "lora.init=loftq", "lora.loftq_iter=3")
    # our codec is bit-exact with bitsandbytes', so the same fit leaves the same weight error
    assert lab.info.weight_sqnr_db == pytest.approx(bnb.info.weight_sqnr_db, abs=1e-3)
    assert three.info.weight_sqnr_db >= lab.info.weight_sqnr_db


@pytest.mark.parametrize("backend", ["bnb", "lab"])
def test_dora_adds_a_magnitude_per_output_starts_as_lora_and_trains(backend):
    _, plain = _build(f"dtype.backend={backend}")
    _, dora = _build(f"dtype.backend={backend}", "lora.dora=true")
    magnitudes = {n: p for n, p in dora.model.named_parameters() if "lora_magnitude_vector" in n}
    layers = _lora_layers(dora.model)
    assert len(magnitudes) == len(layers) and all(p.requires_grad for p in magnitudes.values())
    outputs = sum(layer.get_base_layer().out_features for layer in layers.values())
    assert dora.info.n_trainable - plain.info.n_trainable == outputs
    ids = torch.randint(0, 2000, (2, 24))
    with torch.no_grad():
        lora_logits, dora_logits = plain.model(input_ids=ids).logits, dora.model(input_ids=ids).logits
    # DoRA's magnitude starts at the weight's own norm: the model at init is LoRA's, up to the bf16
    # rounding of that norm (measured: 0.024 on logits up to 10.5, the same on both backends)
    assert (lora_logits - dora_logits).abs().max() <= 0.01 * lora_logits.abs().max()
    dora.model.train()
    dora.model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for p in magnitudes.values()]
    assert all(g is not None and torch.count_nonzero(g) > 0 for g in grads)


def test_rslora_scales_by_the_square_root_of_the_rank():
    _, plain = _build("lora.r=16", "lora.alpha=16")
    _, rs = _build("lora.r=16", "lora.alpha=16", "lora.rslora=true")
    name = sorted(_lora_layers(plain.model))[0]
    assert _lora_layers(plain.model)[name].scaling["default"] == pytest.approx(1.0)
    assert _lora_layers(rs.model)[name].scaling["default"] == pytest.approx(4.0)


@pytest.mark.parametrize("dora", [False, True])
def test_the_lab_layer_merges_by_requantizing_and_unmerges_bit_for_bit(dora):
    from qlora_kernels import dequantize, quantize

    _, built = _build("dtype.backend=lab", f"lora.dora={str(dora).lower()}")
    layer = next(iter(_lora_layers(built.model).values()))
    base = layer.get_base_layer()
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(std=0.02)  # as if trained
        if dora:
            layer.lora_magnitude_vector["default"].weight.mul_(1.05)
    x = torch.randn(3, base.in_features)
    with torch.no_grad():
        before = layer(x).float()
        stored = base.stored_state()
        weight = base.weight.float()
        delta = layer.get_delta_weight("default")
        expected = weight + delta
        if dora:
            norm = (weight + delta).norm(dim=1)
            expected = (layer.lora_magnitude_vector["default"].weight.float() / norm).view(-1, 1) * expected
        layer.merge()
        assert layer.merged
        requantized = dequantize(quantize(expected.to(base.weight_dtype), base.codebook, base.blocksize,
                                          base.double_quant), base.compute_dtype)
        assert torch.equal(base.weight, requantized)  # the merged weight is stored in the layer's own data type
        merged = layer(x).float()
        assert (merged - before).norm() / before.norm() < 0.2  # re-quantization moves the output, a little
        layer.unmerge()
        assert not layer.merged
        for key, value in stored.items():
            assert torch.equal(getattr(base, key), value), key
        assert torch.equal(layer(x).float(), before)


def test_peft_merge_and_unload_on_the_lab_backend_leaves_k_bit_layers():
    from qlora_kernels import QuantLinear

    _, built = _build("dtype.backend=lab")
    count = sum(isinstance(m, QuantLinear) for m in built.model.modules())
    merged = built.model.merge_and_unload()
    assert not _lora_layers(merged)
    assert sum(isinstance(m, QuantLinear) for m in merged.modules()) == count


@pytest.mark.parametrize("overrides, key, message", [
    (["lora.init=loftq", "dtype=bf16"], "lora.init", "has none to fit"),
    (["lora.init=pissa", "lora.enabled=false", "dtype=bf16"], "lora.init", "trains every weight"),
    (["lora.init=olora"], "lora.init", "expected one of gaussian, loftq, pissa"),
    (["lora.init=loftq", "lora.loftq_iter=0"], "lora.loftq_iter", "expected an integer > 0"),
    (["lora.init=pissa", "lora.pissa_niter=-1"], "lora.pissa_niter", "expected an integer >= 0"),
])
def test_a_combination_that_cannot_work_is_refused_in_one_line(overrides, key, message):
    from qlora_lab.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        _config(*overrides)
    assert caught.value.key == key and message in str(caught.value) and "\n" not in str(caught.value)


def test_an_init_that_needs_16_bit_weights_refuses_a_quantized_checkpoint(tmp_path):
    from qlora_lab.config import ConfigError

    folder = tmp_path / "quantized"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": 2048, "hidden_size": 256, "intermediate_size": 704,
        "num_hidden_layers": 4, "num_attention_heads": 4, "max_position_embeddings": 1024,
        "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}))
    _config(f"model.path={folder}")  # LoRA from peft's default init trains on it
    with pytest.raises(ConfigError) as caught:
        _config(f"model.path={folder}", "lora.init=loftq")
    assert "needs the 16-bit weights" in str(caught.value) and "bitsandbytes" in str(caught.value)
    assert "\n" not in str(caught.value)
