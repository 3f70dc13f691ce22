"""Table 7: Elo ratings from pairwise judgments (K=32, initial 1000, 10,000 orderings), one row
per configuration: the runs of its seeds play as one player (a match between two seeds of one
configuration says nothing about it and is left out). The per-seed ratings go to the CSV."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from qlora_analysis.elo import elo_ratings
from qlora_analysis.tables import Table, table


@table("elo")
def elo(runs, judgments):
    if judgments.empty or judgments["winner"].dropna().empty:
        return None
    per_run = elo_ratings(judgments).assign(level="run")
    pooled = by_configuration(runs, judgments)
    numbers = per_run if pooled is None else pd.concat([pooled, per_run], ignore_index=True)
    shown = pooled if pooled is not None else per_run
    frame = shown.set_index("model").apply(
        lambda r: pd.Series({"Elo": f"{r['elo']:.0f} [{r['lower']:.0f}, {r['upper']:.0f}]"}), axis=1)
    support = shown.set_index("model")[["matches"]]
    unit = "configuration (seeds pooled)" if pooled is not None else "run"
    return Table("elo", "Table 7: Elo ratings with 95% intervals", frame, support, numbers,
                 note=f"One row per {unit}. K=32, initial 1000; mean over 10,000 random orderings of the matches "
                      "(seed 0), 2.5th-97.5th percentiles: the interval spans the orderings of every seed's "
                      "matches. Per-run ratings: the CSV (level=run).")


def by_configuration(runs: pd.DataFrame, judgments: pd.DataFrame) -> pd.DataFrame | None:
    """Judgments renamed to the runs' configuration labels; None where the runs cannot be matched
    (judged under --label names) or every match is within one configuration."""
    if runs.empty or "judged_as" not in runs or "sweep_dir" not in judgments:
        return None
    sweep_dirs = runs["run_dir"].astype(str).map(os.path.dirname)
    resolved = {d: str(Path(d).resolve()) for d in set(sweep_dirs) | set(judgments["sweep_dir"])}  # once per folder
    names = {(resolved[d], name): config for d, name, config in zip(sweep_dirs, runs["judged_as"], runs["config"])}
    folders = judgments["sweep_dir"].map(resolved)
    a = [names.get(key) for key in zip(folders, judgments["model_a"])]
    b = [names.get(key) for key in zip(folders, judgments["model_b"])]
    renamed = judgments.assign(model_a=a, model_b=b).dropna(subset=["model_a", "model_b"])
    renamed = renamed[renamed["model_a"] != renamed["model_b"]]
    if renamed.empty or renamed["winner"].dropna().empty:
        return None
    return elo_ratings(renamed).assign(level="configuration")
