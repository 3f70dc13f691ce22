"""What a sweep costs beyond its runs: the `smoke` sweep, launched in one process (basic
launcher) and as parallel processes (local launcher, hydra-submitit-launcher), side by side.

For each launcher: the launch's wall time and the sum of the runs' own times (their records'
`timing.wall_s`: data, model, training, evaluation). Overhead is wall / sum - 1 for the basic
launcher, whose runs follow one another in one process; the local launcher runs its jobs at
once, so its wall is not compared with the sum. Start-up per run: in one process, the first run
pays the process start (`timing.process_to_first_step_s`) and later runs only their own
(`timing.first_step_s`: run start to the end of the first step); each local job is its own
process (`process_to_first_step_s`).

    python benchmarks/sweep_overhead.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def launch(launcher: str, sweep_dir: Path) -> dict:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "qlora_lab.train", "-m", "+sweep=smoke", f"hydra/launcher={launcher}",
                    "train.report_to=none", f"hydra.sweep.dir={sweep_dir}"], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    records = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/record.json"))]
    assert records and all(r["status"] == "ok" for r in records), "a smoke run failed"
    runs_sum = sum(r["timing"]["wall_s"] for r in records)
    if launcher == "basic":
        first = min(records, key=lambda r: r["started_at"])
        startups = [first["timing"]["process_to_first_step_s"]] + \
            [r["timing"]["first_step_s"] for r in records if r is not first]
    else:
        startups = [r["timing"]["process_to_first_step_s"] for r in records]
    return {"launcher": launcher, "runs": len(records), "wall_s": round(wall, 1), "runs_sum_s": round(runs_sum, 1),
            "overhead": round(wall / runs_sum - 1, 3) if launcher == "basic" else None,
            "startup_first_s": round(startups[0], 2), "startup_median_s": round(statistics.median(startups), 2),
            "startup_max_s": round(max(startups), 2)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        launch("basic", Path(tmp) / "warm")  # the tiny base and tokenizer built and cached first
        rows = [launch(launcher, Path(tmp) / launcher) for launcher in ("basic", "local")]
    for row in rows:
        print(json.dumps(row))
    basic = rows[0]
    print(f"smoke sweep, basic launcher: wall {basic['wall_s']} s vs runs' own {basic['runs_sum_s']} s: "
          f"overhead {basic['overhead']:.1%}; start-up per run: first {basic['startup_first_s']} s (process start "
          f"included), median {basic['startup_median_s']} s; local launcher (4 processes at once on this machine): "
          f"median {rows[1]['startup_median_s']} s")


if __name__ == "__main__":
    main()
