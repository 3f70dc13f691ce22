"""The lab backend (our codecs under peft) trains like bitsandbytes: on `tiny`, same seed, NF4
and FP4, every step's training loss and the eval loss within 0.1% (measured: within 0.02%),
and the same stored bits, parameter and adapter counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import records_under, run_cli, tiny_base_dir

STEPS = 8


def step_losses(run_dir: Path) -> list[float]:
    state = json.loads((run_dir / "checkpoints" / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def test_lab_and_bitsandbytes_backends_train_alike(tmp_path: Path):
    tiny_base_dir()
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "dtype=nf4,fp4", "dtype.backend=bnb,lab", f"train.max_steps={STEPS}",
                   f"train.save_steps={STEPS}", "eval.n_generate=0", "train.report_to=none",
                   f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {(r["config"]["dtype"]["name"], r["config"]["dtype"]["backend"]): (name, r)
            for name, r in records_under(sweep).items()}
    for dtype in ("nf4", "fp4"):
        (bnb_dir, bnb), (lab_dir, lab) = runs[(dtype, "bnb")], runs[(dtype, "lab")]
        for key in ("bits_per_param", "n_params", "n_trainable"):
            assert lab["model"][key] == bnb["model"][key], (dtype, key)
        bnb_losses, lab_losses = step_losses(sweep / bnb_dir), step_losses(sweep / lab_dir)
        assert len(bnb_losses) == len(lab_losses) == STEPS
        assert lab_losses == pytest.approx(bnb_losses, rel=1e-3), dtype
        assert lab["metrics"]["eval_loss"] == pytest.approx(bnb["metrics"]["eval_loss"], rel=1e-3), dtype
