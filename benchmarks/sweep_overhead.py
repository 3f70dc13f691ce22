"""What a sweep costs beyond its runs: a sweep launched in one process (basic launcher) and on
the local pool (`hydra/launcher=local`: hydra-joblib-launcher's reused loky workers), side by
side in one run of this script.

For each launch: its wall time, the sum of the runs' own times as recorded in that launch (their
records' `timing.wall_s`: data, model, training, evaluation), and wall / the sum of the same
runs' own times measured one at a time in one process (the basic launch). Start-up per run is
its process's start to the end of its first step (`timing.process_to_first_step_s`; a run that
is not its process's first counts from its own start, as its libraries are already imported).
The local pool's runs share the machine (one worker per core, one thread each), so their
recorded times are stretched; the basic launch's are not.

    python benchmarks/sweep_overhead.py                 # the smoke sweep (4 runs)
    python benchmarks/sweep_overhead.py --sweep micro   # the micro-study's 63 runs (over an hour here)
    python benchmarks/sweep_overhead.py --sweep micro train.seed=0   # its 21 runs of one seed
"""

from __future__ import annotations

import argparse
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

ONE_JOB = {  # the command line's values replace the sweep file's axes: one run
    "smoke": ("dtype=nf4", "lora.targets=all"),
    "micro": ("+variant=qlora_nf4_dq", "lora.targets=all", "train.seed=0"),
}


def launch(sweep: str, launcher: str, sweep_dir: Path, only: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "qlora_lab.train", "-m", f"+sweep={sweep}",
                           f"hydra/launcher={launcher}", "train.report_to=none", f"hydra.sweep.dir={sweep_dir}", *only,
                           *extra],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    records = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/record.json"))]
    assert proc.returncode == 0 and records and all(r["status"] == "ok" for r in records), proc.stderr[-2000:]
    startups = [r["timing"]["process_to_first_step_s"] for r in records]
    name = launcher + (", one job" if only else "")
    return {"launch": name, "runs": len(records), "wall_s": round(wall, 1),
            "runs_sum_s": round(sum(r["timing"]["wall_s"] for r in records), 1),
            "startup_median_s": round(statistics.median(startups), 2), "startup_min_s": round(min(startups), 2),
            "startup_max_s": round(max(startups), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default="smoke")
    parser.add_argument("overrides", nargs="*", help="added to every launch (train.seed=0: micro's 21 runs of one seed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # bases, tokenizers and cached evaluation data built first, outside every measured launch
        launch(args.sweep, "basic", Path(tmp) / "warm-up", ONE_JOB[args.sweep])
        rows = [launch(args.sweep, "basic", Path(tmp) / "basic", extra=tuple(args.overrides)),
                launch(args.sweep, "local", Path(tmp) / "local", extra=tuple(args.overrides))]
        if args.sweep == "smoke":
            rows.append(launch(args.sweep, "local", Path(tmp) / "local-1", only=ONE_JOB["smoke"]))
    alone = rows[0]["runs_sum_s"]
    print("| launch | runs | wall | runs' own (sum, as recorded) | wall / runs' own one at a time | "
          "start-up per run (median / min / max) |")
    print("|---|---:|---:|---:|---:|---|")
    for row in rows:
        row["wall_over_alone"] = round(row["wall_s"] / alone, 3) if row["runs"] == rows[0]["runs"] else None
        print(f"| {row['launch']} | {row['runs']} | {row['wall_s']} s | {row['runs_sum_s']} s | "
              f"{'-' if row['wall_over_alone'] is None else format(row['wall_over_alone'], '.3f')} | "
              f"{row['startup_median_s']} / {row['startup_min_s']} / {row['startup_max_s']} s |")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
