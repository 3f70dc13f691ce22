"""Speed of qlora_analysis. Targets: the whole command `python -m qlora_analysis DIR --out OUT`
(imports, collect, every table, the plots, the report) over 10,000 run folders < 5 s, and over a
1,092-folder rehearsal (9 study folders, `--rehearsal`) < 2 s; 10,000 records into every table
in process < 5 s; the Elo bootstrap over 10,000 orderings of a 10-model, 1,000-judgment
tournament < 10 s.

    python benchmarks/analysis_speed.py
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _synthetic_runs():
    """tests/synthetic_runs.py, loaded by path: tests/ on sys.path would shadow qlora_lab with
    tests/qlora_lab."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "synthetic_runs", Path(__file__).resolve().parents[1] / "tests" / "synthetic_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


write_run, write_judgments = _synthetic_runs().write_run, _synthetic_runs().write_judgments

from qlora_analysis import collect, elo_ratings, read_judgments  # noqa: E402
from qlora_analysis.tables import all_tables  # noqa: E402


def write_study(root: Path, n_runs: int) -> None:
    """n_runs records over data types x datasets x targets x seeds, PTQ runs among them."""
    rng = np.random.default_rng(0)
    dtypes, datasets, targets = ["nf4", "fp4", "int4", "bf16"], ["alpaca", "flan_v2", "oasst1"], ["all", "qv", "attn"]
    for i in range(n_runs):
        overrides = {"dtype": dtypes[i % 4], "dataset": datasets[(i // 4) % 3], "lora.targets": targets[(i // 12) % 3],
                     "train.seed": i // 36}
        metrics = {"mmlu_acc": float(rng.uniform(0.3, 0.5)), "rougeL": float(rng.uniform(0.2, 0.4)),
                   "eval_loss": float(rng.uniform(1.5, 2.5))}
        if i % 10 == 0:
            overrides["train.max_steps"], metrics["ppl"] = 0, float(rng.uniform(20, 40))
        write_run(root / "sweep" / str(i), overrides, metrics)


def tournament(n_models: int, n_judgments: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    pairs = [rng.choice(n_models, size=2, replace=False) for _ in range(n_judgments)]
    return pd.DataFrame([{"model_a": f"m{a}", "model_b": f"m{b}", "winner": rng.choice(["a", "b", "tie"])}
                         for a, b in pairs])


def write_rehearsal(root: Path, n_runs: int = 1092, n_studies: int = 9) -> list[Path]:
    """A cluster rehearsal's records: n_runs over n_studies study folders, no metrics."""
    folders = [root / f"study_{s}" for s in range(n_studies)]
    for i in range(n_runs):
        write_run(folders[i % n_studies] / str(i // n_studies), {"dtype": ["nf4", "fp4", "int4"][i % 3],
                                                                 "train.seed": i}, {}, rehearsal=True)
    return folders


def command_s(args: list[str], cwd: Path) -> float:
    """Wall time of `python -m qlora_analysis ARGS`, as a user runs it (imports included)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "qlora_analysis", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, "MPLBACKEND": "Agg"})
    return time.perf_counter() - start


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        folders = write_rehearsal(Path(tmp) / "rehearsal")
        took = command_s([*map(str, folders), "--rehearsal", "--out", str(Path(tmp) / "out")], Path(tmp))
        print(f"python -m qlora_analysis <9 study folders> --rehearsal, 1,092 records: {took:.2f} s "
              f"(target < 2 s, ratio {took / 2:.2f})")
    with tempfile.TemporaryDirectory() as tmp:
        write_study(Path(tmp), 10_000)
        write_judgments(Path(tmp) / "sweep", tournament(10, 1000).to_dict("records"))
        start = time.perf_counter()
        runs = collect(Path(tmp))
        judgments = read_judgments(Path(tmp))
        tables = all_tables(runs, judgments)
        aggregate_s = time.perf_counter() - start
        took = command_s(["sweep", "--out", "report"], Path(tmp))
        print(f"python -m qlora_analysis DIR --out OUT, 10,000 run folders: {took:.2f} s (target < 5 s, ratio {took / 5:.2f})")
    print(f"10,000 records -> {len(tables)} tables ({', '.join(t.name for t in tables)}): {aggregate_s:.2f} s "
          f"(target < 5 s, ratio {aggregate_s / 5:.2f})")
    games = tournament(10, 1000)
    start = time.perf_counter()
    elo_ratings(games, n_orderings=10_000)
    elo_s = time.perf_counter() - start
    print(f"Elo, 10 models x 1,000 judgments x 10,000 orderings: {elo_s:.2f} s (target < 10 s, ratio {elo_s / 10:.2f})")


if __name__ == "__main__":
    main()
