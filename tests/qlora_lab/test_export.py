"""`python -m qlora_lab.export`: a trained run merged into an ordinary transformers checkpoint.

Tolerance stated and tested: a 16-bit (bf16) export evaluates, reloaded by qlora-lab itself as
`model.path`, to the unmerged run's held-out loss within 0.01 nats per token (bf16 rounding of the
merged weights; measured: 3.5e-5 nats of KL on `tiny`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, tiny_base_dir

LOSS_TOLERANCE = 0.01  # nats per token, 16-bit export against the unmerged model


def _export(run_dir: Path, merge: str, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qlora_lab.export", str(run_dir), "--merge", merge, "--out", str(out),
                           "--tokens", "1024"], capture_output=True, text=True, cwd=REPO, timeout=600)


def _run(run_dir: Path, *overrides: str):
    """One run in this process (as the fidelity tests do): its record."""
    from hydra import compose, initialize_config_dir

    from qlora_lab.config import run_config
    from qlora_lab.run import run
    from qlora_lab.sweep import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["train.report_to=none", "eval.n_generate=0", *overrides])
    return run(run_config(cfg), run_dir, list(overrides)).record


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A DoRA adapter trained a few steps on an NF4 base (bitsandbytes), with a visible lr."""
    tiny_base_dir()
    run_dir = tmp_path_factory.mktemp("export") / "run"
    record = _run(run_dir, "lora.dora=true", "train.max_steps=6", "train.learning_rate=3e-3", "train.save_steps=0")
    assert record.status == "ok", record.error
    return run_dir


def test_a_16_bit_export_reloads_and_evaluates_to_the_unmerged_loss(trained, tmp_path):
    proc = _export(trained, "16bit", tmp_path / "merged")  # the command, as a user runs it
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "KL to the unmerged model" in proc.stdout
    report = json.loads((tmp_path / "merged" / "export.json").read_text())
    assert report["merge"] == "16bit" and report["format"] == "bfloat16 safetensors"
    assert 0 <= report["kl_to_unmerged"] < 1e-3 and report["top1_agree"] > 0.95
    assert abs(report["loss_exported"] - report["loss_unmerged"]) <= LOSS_TOLERANCE

    # an ordinary checkpoint: transformers loads it with no peft or qlora class, every linear plain
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype="auto")
    linears = [m for m in model.modules() if "Linear" in type(m).__name__]
    assert linears and all(type(m) is torch.nn.Linear for m in linears)
    assert next(model.parameters()).dtype == torch.bfloat16

    # qlora-lab evaluates it as a model of its own: the same held-out loss as the run recorded
    record = json.loads((trained / "record.json").read_text())
    evaluated = _run(tmp_path / "eval", f"model.path={tmp_path / 'merged'}", "dtype=bf16", "train.max_steps=0")
    assert evaluated.status == "ok", evaluated.error
    assert abs(evaluated.metrics["eval_loss"] - record["metrics"]["eval_loss"]) <= LOSS_TOLERANCE


def test_a_4_bit_export_is_bitsandbytes_format_and_its_change_is_measured(trained, tmp_path):
    from qlora_lab.export import export

    export(trained, "4bit", tmp_path / "nf4", tokens=1024)
    config = json.loads((tmp_path / "nf4" / "config.json").read_text())
    assert config["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    report = json.loads((tmp_path / "nf4" / "export.json").read_text())
    assert report["merge"] == "4bit" and report["kl_to_unmerged"] > 0  # re-quantizing changes the model
    assert abs(report["loss_exported"] - report["loss_unmerged"]) < 0.1
    assert report["kl_to_unmerged_ci"][0] <= report["kl_to_unmerged"] <= report["kl_to_unmerged_ci"][1]


def test_a_failed_run_is_refused_in_one_line(tmp_path):
    from qlora_lab.records import Record, write_record

    write_record(tmp_path, Record(run_id="invalid", error="ValueError: boom"))
    proc = _export(tmp_path, "16bit", tmp_path / "out")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "only an ok run is exported" in lines[0]
    assert not (tmp_path / "out").exists()
