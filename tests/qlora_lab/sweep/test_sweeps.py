"""Sweep files (-m +sweep=NAME) and idempotent relaunch: ok runs are reused, failed ones redone,
two launches at once train each run once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import records_under, run_cli
from qlora_lab.sweep.preflight import check_command_line
from qlora_lab.sweep.files import register_sweep_files
from qlora_lab.sweep import CONF_DIR

FAST = ["train.max_steps=2", "eval.n_generate=0", "eval.loss=false", "train.report_to=none"]


def test_smoke_sweep_relaunch_reuses_ok_runs_and_redoes_failed_ones(tmp_path):
    sweep = tmp_path / "sweep"
    first = run_cli("-m", "+sweep=smoke", *FAST, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.strip().splitlines()[-1] == "4 runs: 4 ok, 0 failed"
    records = records_under(sweep)
    assert {(r["config"]["dtype"]["name"], r["config"]["lora"]["targets"]) for r in records.values()} == {
        ("nf4", "all"), ("nf4", "qv"), ("fp4", "all"), ("fp4", "qv")}
    again = run_cli("-m", "+sweep=smoke", *FAST, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert again.stdout.strip().splitlines()[-1] == "4 runs: 4 ok (4 reused), 0 failed"
    assert records_under(sweep) == records  # untouched
    broken = json.loads((sweep / "2" / "record.json").read_text())
    (sweep / "2" / "record.json").write_text(json.dumps({**broken, "status": "failed", "error": "X: preempted"}))
    third = run_cli("-m", "+sweep=smoke", *FAST, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert third.stdout.strip().splitlines()[-1] == "4 runs: 4 ok (3 reused), 0 failed"
    redone = records_under(sweep)["2"]
    assert redone["status"] == "ok" and redone["finished_at"] >= broken["finished_at"]
    assert redone["metrics"] == broken["metrics"]  # the same seed gives the same numbers
    for job, env in (("0", {"transformers": "4.57.3"}), ("1", {"git_sha": "0" * 40})):  # made elsewhere
        old = json.loads((sweep / job / "record.json").read_text())
        (sweep / job / "record.json").write_text(json.dumps({**old, "env": {**old["env"], **env}}))
    fourth = run_cli("-m", "+sweep=smoke", *FAST, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert fourth.stdout.strip().splitlines()[-1] == "4 runs: 4 ok (4 reused, 2 made with other versions), 0 failed"


def test_two_launches_at_once_train_each_run_once(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "qlora_lab.train", "-m", "+sweep=smoke", *FAST, f"hydra.sweep.dir={sweep}"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    lasts = [o.strip().splitlines()[-1] for o in outs]
    reused = sum(int(line.split("(")[1].split()[0]) if "reused" in line else 0 for line in lasts)
    assert all(line.startswith("4 runs: 4 ok") for line in lasts) and reused == 4, lasts
    assert len(records_under(sweep)) == 4 and all(r["status"] == "ok" for r in records_under(sweep).values())


def test_a_bad_value_inside_a_sweep_file_is_named_before_launch(tmp_path):
    (tmp_path / "typo_sweep.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    params:\n      dtype: nf4,nf5\n")
    register_sweep_files(tmp_path)
    assert check_command_line(["-m", "+sweep=typo_sweep"], CONF_DIR) == (
        "sweeps/typo_sweep.yaml: dtype=nf5: expected one of bf16, e2m1, fp32, fp4, fp4_e3m0, hqq4, int4, int4_affine, int8, mxfp4, nf2, nf3, nf4, nvfp4, q4_0, q4_k, q8_0")
    assert check_command_line(["-m", "+sweep=typo_sweep", "dtype=fp4"], CONF_DIR) is None  # the command line wins


def test_an_unknown_sweep_is_one_line():
    register_sweep_files()
    assert check_command_line(["-m", "+sweep=nope"], CONF_DIR).startswith("sweep=nope: expected one of")


def test_optuna_searches_any_sweep_and_gets_each_runs_objective(tmp_path: Path):
    """hydra-optuna-sweeper on the smoke sweep's axes plus a learning-rate interval: each trial
    is a run with its record, and the best value optuna reports is the best record's metric."""
    sweep = tmp_path / "search"
    proc = run_cli("-m", "+sweep=smoke", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
                   "hydra.sweeper.sampler.seed=0", "train.learning_rate=interval(1e-4,1e-3)", "train.max_steps=2",
                   "eval.n_generate=0", "train.report_to=none", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = records_under(sweep)
    assert len(records) == 2 and all(r["status"] == "ok" for r in records.values())
    for record in records.values():
        assert 1e-4 <= record["config"]["train"]["learning_rate"] <= 1e-3
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(r["metrics"]["eval_loss"] for r in records.values()))


def test_a_record_that_names_no_versions_is_not_counted_as_made_with_other_ones():
    """A rehearsal's record loads no library and names no versions: a relaunch that reuses it
    says nothing of versions (a SLURM rehearsal relaunch once said `14 made with other versions`)."""
    from qlora_lab.sweep.summary import differs

    now = {"torch": "2.13.0+cpu", "transformers": "5.25.0", "git_sha": "a" * 40}
    assert not differs({"torch": None, "transformers": None, "git_sha": None}, now)
    assert not differs({"torch": "2.13.0+cpu", "transformers": "5.25.0", "git_sha": None}, now)
    assert differs({"torch": "2.13.0+cpu", "transformers": "4.57.3", "git_sha": None}, now)
    assert differs({"torch": None, "transformers": None, "git_sha": "b" * 40}, now)
