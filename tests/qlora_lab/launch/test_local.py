"""`hydra/launcher=local`: hydra-joblib-launcher's reused loky workers run whole Hydra jobs; the
numbers equal an in-process run's to the bit, and a worker's later runs find the libraries
already imported (`env.warm_start`)."""

from __future__ import annotations

from pathlib import Path

from conftest import records_under, run_cli, tiny_base_dir

STEPS = ["train.max_steps=3", "eval.n_generate=1", "train.report_to=none"]


def test_local_pool_runs_jobs_in_reused_workers_with_the_same_numbers(tmp_path: Path):
    tiny_base_dir()
    pool = tmp_path / "pool"
    proc = run_cli("-m", "dtype=nf4,fp4,int4", "hydra/launcher=local", "hydra.launcher.n_jobs=2", *STEPS,
                   f"hydra.sweep.dir={pool}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "3 runs: 3 ok, 0 failed"
    records = records_under(pool)
    assert sum(r["env"]["warm_start"] for r in records.values()) >= 1  # three jobs, two workers
    alone = tmp_path / "alone"
    proc = run_cli("dtype=nf4", *STEPS, f"hydra.run.dir={alone}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = records_under(alone.parent)["alone"]
    pooled = next(r for r in records.values() if r["config"]["dtype"]["name"] == "nf4")
    for key in ("train_loss_first", "train_loss_last", "eval_loss"):
        assert pooled["metrics"][key] == single["metrics"][key], key
    assert single["env"]["warm_start"] is False
