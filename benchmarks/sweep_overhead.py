"""What a sweep costs beyond its runs: the `smoke` sweep launched in one process (basic
launcher), and as parallel processes (local launcher, hydra-submitit-launcher) with each job
importing its own libraries (cold) and with the runs forked from the launch's warm server
(qlora_lab.warm_start), side by side in one run of this script.

For each launch: its wall time, the sum of the runs' own times as recorded in that launch (their
records' `timing.wall_s`: data, model, training, evaluation), and the overhead against the sum of
the same runs' own times measured one at a time in one process (the basic launch): wall / that
sum - 1. The local launcher sends out as many jobs at once as the machine's cores hold (2 here,
one core each), so its runs' recorded times are stretched by sharing memory bandwidth and
caches and by running on one thread; the basic launch's are not. Start-up
per run is its process's start to the end of its first step (`timing.process_to_first_step_s`;
for a run forked from the warm server, its job's process start); in the one-process launch,
later runs pay only their own (`timing.first_step_s`). The same local launches with one job
show a run's start-up when it has the machine to itself.

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


ONE_JOB = ("dtype=nf4", "lora.targets=all")  # the command line's value replaces the sweep file's axis


def launch(launcher: str, sweep_dir: Path, warm: bool = True, only: tuple[str, ...] = ()) -> dict:
    env = {**os.environ, "QLORA_LAB_WARM_START": "1" if warm else "0"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "qlora_lab.train", "-m", "+sweep=smoke", f"hydra/launcher={launcher}",
                    "train.report_to=none", f"hydra.sweep.dir={sweep_dir}", *only], check=True,
                   capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    records = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/record.json"))]
    assert records and all(r["status"] == "ok" for r in records), "a smoke run failed"
    assert all(r["env"].get("warm_start", False) == (warm and launcher == "local") for r in records)
    if launcher == "basic":
        first = min(records, key=lambda r: r["started_at"])
        startups = [first["timing"]["process_to_first_step_s"]] + \
            [r["timing"]["first_step_s"] for r in records if r is not first]
    else:
        startups = [r["timing"]["process_to_first_step_s"] for r in records]
    name = launcher if launcher == "basic" else f"local ({'warm' if warm else 'cold'})"
    name += ", one job" if only else ""
    return {"launch": name, "runs": len(records), "wall_s": round(wall, 1),
            "runs_sum_s": round(sum(r["timing"]["wall_s"] for r in records), 1),
            "startup_median_s": round(statistics.median(startups), 2), "startup_min_s": round(min(startups), 2),
            "startup_max_s": round(max(startups), 2)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        launch("basic", Path(tmp) / "warm-up")  # the tiny base and tokenizer built and cached first
        rows = [launch("basic", Path(tmp) / "basic"), launch("local", Path(tmp) / "cold", warm=False),
                launch("local", Path(tmp) / "warm"),
                launch("local", Path(tmp) / "cold-1", warm=False, only=ONE_JOB),
                launch("local", Path(tmp) / "warm-1", only=ONE_JOB)]
    alone = rows[0]["runs_sum_s"]
    print("| launch | runs | wall | runs' own (sum, as recorded) | overhead vs runs' own alone | "
          "start-up per run (median / min / max) |")
    print("|---|---:|---:|---:|---:|---|")
    for row in rows:
        row["overhead"] = round(row["wall_s"] / alone - 1, 3) if row["runs"] == rows[0]["runs"] else None
        print(f"| {row['launch']} | {row['runs']} | {row['wall_s']} s | {row['runs_sum_s']} s | "
              f"{'-' if row['overhead'] is None else format(row['overhead'], '+.1%')} | {row['startup_median_s']} / {row['startup_min_s']} / "
              f"{row['startup_max_s']} s |")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
