"""Output fidelity (eval.fidelity) and the weight error (model.weight_sqnr_db, weight_kurtosis):
hand computations of both, KL 0 for a model against itself, positive for every 4-bit and 3-bit
data type, and the adapter's reference after fine-tuning."""

from __future__ import annotations

import math

import pytest
import torch

from qlora_lab.evaluate.fidelity import compare, targets, window_logprobs
from qlora_lab.model.weight_error import kurtosis, sqnr_db, weight_error


def test_compare_matches_a_hand_computation():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    q = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.4, 0.4]])
    p2, q2 = torch.tensor([[0.5, 0.5, 0.0 + 1e-9]]), torch.tensor([[0.1, 0.8, 0.1]])
    windows_p, windows_q = [p.log(), p2.log()], [q.log(), q2.log()]
    next_tokens = [torch.tensor([0, 2]), torch.tensor([1])]
    got = compare(windows_p, windows_q, next_tokens)

    kl = lambda a, b: sum(x * math.log(x / y) for x, y in zip(a, b))
    per_position = [kl([0.7, 0.2, 0.1], [0.6, 0.3, 0.1]), kl([0.25, 0.25, 0.5], [0.2, 0.4, 0.4]),
                    kl([0.5, 0.5, 1e-9], [0.1, 0.8, 0.1])]
    assert got.kl_to_base == pytest.approx(sum(per_position) / 3, rel=1e-5)
    assert got.fidelity_tokens == 3
    window_means = [(per_position[0] + per_position[1]) / 2, per_position[2]]
    mean = sum(per_position) / 3
    sd = math.sqrt(sum((m - sum(window_means) / 2) ** 2 for m in window_means))  # n - 1 = 1
    assert got.kl_to_base_ci == pytest.approx([max(0.0, mean - 1.96 * sd / math.sqrt(2)), mean + 1.96 * sd / math.sqrt(2)],
                                              rel=1e-5)
    assert got.top1_agree == pytest.approx(1 / 3)  # argmax 0=0, 2 vs 1, 0 vs 1
    nll_q, nll_p = -math.log(0.6) - math.log(0.4) - math.log(0.8), -math.log(0.7) - math.log(0.5) - math.log(0.5)
    assert got.ppl_ratio == pytest.approx(math.exp((nll_q - nll_p) / 3), rel=1e-6)
    assert got.ref_ppl == pytest.approx(math.exp(nll_p / 3), rel=1e-6)
    assert per_position[1] <= got.kl_to_base_p99 <= per_position[2]


def test_a_model_against_itself_is_zero():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Linear(16, 50))
    wrapped = type("LM", (torch.nn.Module,), {"forward": lambda self, input_ids: type("Out", (), {
        "logits": self.inner(input_ids)})()})()
    wrapped.inner = model
    windows = [[1, 2, 3, 4, 5], [6, 7, 8]]
    got = compare(list(window_logprobs(wrapped, windows)), window_logprobs(wrapped, windows), targets(windows))
    assert got.kl_to_base == 0.0 and got.kl_to_base_p99 == 0.0 and got.top1_agree == 1.0 and got.ppl_ratio == 1.0


def test_sqnr_and_kurtosis_by_hand():
    weight = torch.tensor([1.0, -2.0, 3.0, -4.0])
    noisy = weight + torch.tensor([0.1, -0.1, 0.1, -0.1])
    assert sqnr_db(weight, noisy) == pytest.approx(10 * math.log10(30 / 0.04))
    assert sqnr_db(weight, weight) == math.inf
    assert kurtosis(torch.tensor([-1.0, 1.0] * 50)) == pytest.approx(1.0)  # two points: the smallest kurtosis
    assert kurtosis(torch.randn(200_000, generator=torch.Generator().manual_seed(0))) == pytest.approx(3.0, abs=0.05)


def test_weight_error_reads_the_checkpoint_and_the_quantized_layers(tmp_path):
    """A saved two-layer model, one layer quantized to NF4: the SQNR is that layer's, computed by
    hand from the codec; the kurtosis the mean of both layers'."""
    from safetensors.torch import save_file

    from qlora_kernels import QuantLinear, dequantize

    torch.manual_seed(0)
    model = torch.nn.Module()
    model.first, model.second = torch.nn.Linear(64, 32), torch.nn.Linear(32, 16)
    model.first.weight.data = torch.distributions.StudentT(3.0).sample((32, 64)) * 0.02  # heavy tails
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    original = model.first.weight.detach().clone()
    model.first = QuantLinear.from_linear(model.first, "nf4", 64, False, torch.float32)
    got = weight_error(model, str(tmp_path), skip=set())
    expected_sqnr = sqnr_db(original, dequantize(model.first.quant_state()))
    assert got.weight_sqnr_db == pytest.approx(expected_sqnr, abs=1e-4) == got.weight_sqnr_min_db
    assert got.weight_kurtosis == pytest.approx((kurtosis(original) + kurtosis(model.second.weight)) / 2, abs=1e-4)
    assert got.weight_kurtosis > 3.5  # the t(3) layer's tails show
    assert weight_error(model, str(tmp_path / "nowhere"), skip=set()).weight_sqnr_db is None


def _eval_only(tmp_path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from qlora_lab.config import run_config
    from qlora_lab.run import run
    from qlora_lab.sweep import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "eval.fidelity=true", "eval.fidelity_tokens=768", "eval.ppl.seq_len=128", "eval.loss=false",
            "eval.n_generate=0", "train.report_to=none", *overrides])
    folder = tmp_path / "_".join(o.replace("=", "-").replace(".", "") for o in overrides)
    return run(run_config(cfg), folder, list(overrides)).record


@pytest.mark.parametrize("dtype", ["dtype=nf4", "dtype=nf4 dtype.backend=lab dtype.double_quant=false", "dtype=fp4",
                                   "dtype=int4", "dtype=int4_affine", "dtype=fp4_e3m0", "dtype=nf3"])
def test_every_4_and_3_bit_type_is_away_from_its_base(tmp_path, dtype):
    record = _eval_only(tmp_path, *dtype.split(), "train.max_steps=0")
    assert record.status == "ok", record.error
    m = record.metrics
    assert m["kl_to_base"] > 0 and m["kl_to_base_ci"][0] < m["kl_to_base"] < m["kl_to_base_ci"][1]
    assert m["kl_to_base_p99"] > m["kl_to_base"] and 0.5 < m["top1_agree"] < 1
    assert 0.9 < m["ppl_ratio"] < 1.3  # either side of 1: on a short text, noise can help
    assert m["fidelity_tokens"] == 6 * 127  # 768 tokens + 1, windows of 128 predicting 127 each
    assert 5 < record.model["weight_sqnr_db"] < 40 and record.model["weight_sqnr_min_db"] <= record.model["weight_sqnr_db"]
    assert 2.5 < record.model["weight_kurtosis"] < 5


def test_the_unquantized_base_is_zero_before_and_after_fine_tuning(tmp_path):
    """fp32 storage and compute: the reference is the model itself, bare (eval-only) or with the
    very adapter the run trained (copied onto the reference base), so KL is 0 to the float."""
    for steps in ("train.max_steps=0", "train.max_steps=2"):
        record = _eval_only(tmp_path, "dtype=fp32", "dtype.compute_dtype=fp32", steps, "train.batch_size=2")
        assert record.status == "ok", record.error
        assert record.metrics["kl_to_base"] == pytest.approx(0.0, abs=1e-9), steps
        assert record.metrics["top1_agree"] == 1.0 and record.metrics["ppl_ratio"] == pytest.approx(1.0, abs=1e-6)
        assert record.model["weight_sqnr_db"] is None and record.model["weight_kurtosis"] > 2.5


def test_after_fine_tuning_the_reference_carries_the_adapter(tmp_path):
    """NF4 + a trained adapter against the unquantized base + the same adapter: still a small KL,
    not the larger one against the bare base (the adapter moved both models alike)."""
    trained = _eval_only(tmp_path, "dtype=nf4", "train.max_steps=4", "train.batch_size=2", "train.learning_rate=3e-3")
    assert trained.status == "ok", trained.error
    assert 0 < trained.metrics["kl_to_base"] < 0.05


def test_an_adapter_init_is_measured_at_init_and_its_split_base_after_training(tmp_path):
    """Eval-only: quantized base + LoftQ's or PiSSA's adapter against the 16-bit base comes closer
    than the base alone (gaussian: B = 0). After fine-tuning from PiSSA the reference is PiSSA's
    residual, unquantized, + the same adapter: a small KL (against the whole checkpoint + that
    adapter, the principal directions would count twice)."""
    kl = {init: _eval_only(tmp_path, "dtype=nf4", "train.max_steps=0", f"lora.init={init}").metrics["kl_to_base"]
          for init in ("gaussian", "loftq", "pissa")}
    assert kl["loftq"] < kl["gaussian"] and kl["pissa"] < kl["gaussian"], kl
    trained = _eval_only(tmp_path, "dtype=nf4", "lora.init=pissa", "train.max_steps=2", "train.batch_size=2")
    assert trained.status == "ok", trained.error
    assert 0 < trained.metrics["kl_to_base"] < 0.05


@pytest.mark.parametrize("overrides,message", [
    (["model=tiny_t5"], "eval.fidelity=true: measures next-token distributions: needs a causal model"),
    (["lora.enabled=false", "dtype=bf16", "train.max_steps=1"], "a full fine-tune (lora.enabled=false) has no"),
    (["eval.fidelity_tokens=0"], "eval.fidelity_tokens=0"),
])
def test_what_cannot_be_measured_is_refused_in_one_line(tmp_path, overrides, message):
    from hydra import compose, initialize_config_dir

    from qlora_lab.config import ConfigError, run_config
    from qlora_lab.evaluate.fidelity import _check
    from qlora_lab.sweep import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["eval.fidelity=true", *overrides])
    with pytest.raises(ConfigError) as raised:
        _check(run_config(cfg))
    assert message in str(raised.value) and "\n" not in str(raised.value)
