"""A run killed mid-training (kill -9) and launched again ends as an uninterrupted one, and its
record says it resumed and counts only the resuming process's tokens and time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli, tiny_base_dir

STEPS = ["train.max_steps=8", "train.save_steps=4", "eval.n_generate=1", "train.report_to=none"]


def test_killed_run_resumes_to_the_uninterrupted_metrics(tmp_path: Path):
    tiny_base_dir()
    whole = tmp_path / "whole"
    proc = run_cli(*STEPS, f"hydra.run.dir={whole}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = json.loads((whole / "record.json").read_text())

    cut = tmp_path / "cut"
    victim = subprocess.Popen([sys.executable, "-m", "qlora_lab.train", *STEPS, f"hydra.run.dir={cut}"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    checkpoint = cut / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert victim.poll() is None, "the run ended before it could be killed mid-training"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (cut / "record.json").exists()  # killed: no record, so a relaunch reruns it
    assert not (cut / "checkpoints" / "checkpoint-8").exists()

    before = json.loads(checkpoint.read_text())["num_input_tokens_seen"]
    proc = run_cli(*STEPS, f"hydra.run.dir={cut}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    resumed = json.loads((cut / "record.json").read_text())
    assert expected["timing"]["resumed_from_step"] is None and resumed["timing"]["resumed_from_step"] == 4
    assert 0 < before < expected["timing"]["tokens"]
    assert resumed["timing"]["tokens"] == expected["timing"]["tokens"] - before  # steps 5-8 only
    timing = resumed["timing"]
    assert timing["tokens_per_s"] == pytest.approx(timing["tokens"] / timing["train_s"], rel=1e-3)
    assert resumed["status"] == "ok" and resumed["run_id"] == expected["run_id"]
    # the whole log history, not only the resumed steps: 8 steps, and the first window from
    # before the kill
    assert resumed["metrics"]["train_steps"] == 8
    for key in ("train_loss_first", "train_loss_last", "eval_loss", "rougeL"):
        assert resumed["metrics"][key] == expected["metrics"][key], key
