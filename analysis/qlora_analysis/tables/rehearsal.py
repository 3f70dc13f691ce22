"""A cluster rehearsal's table (`--rehearsal`): per model, the jobs and what each asked for
against what the scheduler gave it (GPUs, CPUs, memory), so a mismatch shows before any
GPU-hour is spent."""

from __future__ import annotations

import pandas as pd

from qlora_analysis.tables import Table, table

PAIRS = (("gpus", "GPUs"), ("cpus", "CPUs"), ("mem_gb", "memory (GB)"))


@table("rehearsal")
def rehearsal(runs, judgments):
    if runs.empty or "resources.gpus_seen" not in runs:
        return None
    rows = []
    for model, group in runs.groupby("model"):
        row = {"model": model, "jobs": len(group)}
        for key, heading in PAIRS:
            asked, got = group[f"resources.{key}_asked"], group[f"resources.{key}_seen"]
            row[f"{heading} asked"] = _values(asked)
            row[f"{heading} seen"] = _values(got)
        row["all as asked"] = bool(all((group[f"resources.{k}_seen"] == group[f"resources.{k}_asked"]).all()
                                       for k, _ in PAIRS))
        rows.append(row)
    numbers = pd.DataFrame(rows)
    frame = numbers.set_index("model")
    return Table("rehearsal", "Cluster rehearsal: what each job asked for and what it got", frame, pd.DataFrame(),
                 numbers, note="Rehearsal records (train.rehearsal=true): the model config's resources against "
                               "what the job saw (CUDA_VISIBLE_DEVICES, the CPU allocation, the memory limit).")


def _values(column: pd.Series) -> str:
    return ", ".join(str(v) for v in sorted(column.dropna().unique())) or "-"
