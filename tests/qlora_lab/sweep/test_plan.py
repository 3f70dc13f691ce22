"""`python -m qlora_lab.plan`: the runs, GPU-hours and memory fit of a sweep, before launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import run_cli, tiny_base_dir
from qlora_lab.config import run_config
from qlora_lab.memory_estimate import estimate_memory
from qlora_lab.sweep import CONF_DIR


def run_plan(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qlora_lab.plan", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=os.environ.copy())


def test_plan_of_a_sweep_file_lists_its_runs_and_launches_nothing(tmp_path: Path):
    proc = run_plan("+sweep=smoke", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "4 runs, 0.0 GPU-hours"
    runs = [line for line in lines if line.startswith("#")]
    assert len(runs) == 4
    assert {tuple(line.split("|")[0].split()[1:]) for line in runs} == {
        ("dtype=nf4", "lora.targets=all"), ("dtype=nf4", "lora.targets=qv"),
        ("dtype=fp4", "lora.targets=all"), ("dtype=fp4", "lora.targets=qv")}
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing was written


def test_plan_sums_gpu_hours_from_the_model_hints_and_flags_runs_that_will_not_fit(tmp_path: Path):
    proc = run_plan("-m", "model=llama_7b,llama_65b", "dtype=nf4,bf16", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "4 runs, 80.0 GPU-hours"  # 2 x 4 h (7B) + 2 x 36 h (65B), one GPU each
    by_run = {tuple(line.split("|")[0].split()[1:]): line for line in lines if line.startswith("#")}
    assert "WILL NOT FIT" in by_run[("model=llama_65b", "dtype=bf16")]  # 130 GB of 16-bit weights
    assert "WILL NOT FIT" not in by_run[("model=llama_65b", "dtype=nf4")]  # the paper: 65B on one 48 GB GPU
    assert "WILL NOT FIT" not in by_run[("model=llama_7b", "dtype=nf4")]
    assert lines[-2].startswith("1 of 4 runs will not fit")


def test_plan_refuses_a_bad_value_in_one_line(tmp_path: Path):
    proc = run_plan("+sweep=smoke", "dtype=nf5", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: dtype=nf5: expected one of bf16, e2m1, fp32, fp4, fp4_e3m0, hqq4, int4, int4_affine, int8, mxfp4, nf2, nf3, nf4, nvfp4, q4_0, q4_k, q8_0"]


def _config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return run_config(compose(config_name="config", overrides=list(overrides)))


def test_estimate_counts_the_papers_bits_per_parameter_for_the_base_weights():
    nf4 = estimate_memory(_config("model=llama_65b"), "bf16")
    params = 80 * (4 * 8192 * 8192 + 3 * 8192 * 22016)
    assert nf4.base_weights_mb * 2**20 == pytest.approx(params * (4 + 8 / 64 + 32 / (64 * 256)) / 8, rel=1e-3)
    no_dq = estimate_memory(_config("model=llama_65b", "dtype.double_quant=false"), "bf16")
    assert no_dq.base_weights_mb * 2**20 == pytest.approx(params * (4 + 32 / 64) / 8, rel=1e-3)
    # the 2026 formats at their stored bits: a 65B NVFP4 base (E4M3 per 16) and MXFP4 (E8M0 per 32)
    nvfp4 = estimate_memory(_config("model=llama_65b", "dtype=nvfp4"), "bf16")
    assert nvfp4.base_weights_mb * 2**20 == pytest.approx(params * (4 + 8 / 16) / 8, rel=1e-3)
    mxfp4 = estimate_memory(_config("model=llama_65b", "dtype=mxfp4"), "bf16")
    assert mxfp4.base_weights_mb * 2**20 == pytest.approx(params * (4 + 8 / 32) / 8, rel=1e-3)
    q4_k = estimate_memory(_config("model=llama_65b", "dtype=q4_k"), "bf16")
    assert q4_k.base_weights_mb * 2**20 == pytest.approx(params * 4.5 / 8, rel=1e-3)
    qv = estimate_memory(_config("model=llama_65b", "lora.targets=qv"), "bf16")
    assert qv.lora_mb < nf4.lora_mb and qv.optimizer_mb == pytest.approx(2 * qv.lora_mb)


@pytest.mark.parametrize("checkpointing", ["true", "false"])
def test_estimate_is_within_25_percent_of_the_measured_peak_on_tiny(tmp_path: Path, checkpointing: str):
    """Source and target lengths short enough that every batch reaches them, as the estimate
    (the longest batch) assumes; the record holds the peak of torch's tensor allocations."""
    tiny_base_dir()
    overrides = ["train.max_steps=5", "train.source_max_len=32", "train.target_max_len=32",
                 f"train.gradient_checkpointing={checkpointing}", "eval.n_generate=0", "train.report_to=none",
                 "train.cpu_tensor_peak=true"]  # the CPU profile is opt-in
    proc = run_cli(*overrides, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    memory = json.loads((tmp_path / "record.json").read_text())["memory"]
    measured, estimate = memory["peak_tensor_mb"], memory["estimate"]["total_mb"]
    assert measured > 0 and abs(estimate / measured - 1) <= 0.25, (estimate, measured)
