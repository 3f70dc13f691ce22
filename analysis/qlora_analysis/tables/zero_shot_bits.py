"""Figure 3 at micro scale, as tables: zero-shot accuracy of the quantized bases (eval-only runs)
by data type and pretraining checkpoint, beside the total bits each stores; and the fine-tuned
runs' accuracy per configuration."""

from __future__ import annotations

import math

import pandas as pd

from qlora_analysis.intervals import mean_interval, shown
from qlora_analysis.tables import Table, table
from qlora_analysis.tables.fidelity import checkpoint_name, checkpoints_in_order


def accuracy_cell(accuracy: float, n: int) -> str:
    """Accuracy with its 95% binomial (normal) interval over the questions."""
    half = 1.96 * math.sqrt(accuracy * (1 - accuracy) / n) if n else float("nan")
    return f"{accuracy:.3f} ± {half:.3f}"


def _questions(runs: pd.DataFrame) -> pd.Series:
    """Questions per run: the sum of the tasks' counts (zero_shot_n is a mapping per task)."""
    return runs.get("zero_shot_questions", pd.Series(float("nan"), index=runs.index))


@table("zero_shot_bits")
def zero_shot_bits(runs, judgments):
    if runs.empty or "zero_shot_mean" not in runs or runs["zero_shot_mean"].dropna().empty:
        return None
    have = runs[(runs["train.max_steps"] == 0) & runs["zero_shot_mean"].notna()].copy()
    if have.empty:
        return None
    steps = have["model.checkpoint"] if "model.checkpoint" in have else pd.Series(None, index=have.index)
    have["checkpoint"] = [checkpoint_name(s) for s in steps]
    have = have.sort_values("dtype.backend").drop_duplicates(subset=["dtype_label", "checkpoint"])
    questions = _questions(have).fillna(0).astype(int)
    have["cell"] = [accuracy_cell(a, n) for a, n in zip(have["zero_shot_mean"], questions)]
    order = checkpoints_in_order(have["checkpoint"])
    frame = have.pivot(index="dtype_label", columns="checkpoint", values="cell")[order]
    bits = have.groupby("dtype_label")["total_bits"].first()
    frame.insert(0, "total bits (Mbit)", (bits / 1e6).round(2).astype(str))
    frame = frame.loc[bits.sort_values().index]
    numbers = have[["dtype_label", "checkpoint", "zero_shot_mean", "total_bits", "bits_per_param"]]
    return Table("zero_shot_bits", "Figure 3 at micro scale: zero-shot accuracy against total model bits", frame,
                 pd.DataFrame(), numbers,
                 note="Eval-only runs of each quantized base; accuracy of the log-likelihood multiple-choice "
                      "task (chance 0.25) with its 95% interval over the questions. Smallest model first.")


@table("zero_shot_finetuned")
def zero_shot_finetuned(runs, judgments):
    if runs.empty or "zero_shot_mean" not in runs:
        return None
    have = runs[(runs["train.max_steps"] > 0) & runs["zero_shot_mean"].notna()]
    if have.empty:
        return None
    rows = [(config, *mean_interval(part["zero_shot_mean"])) for config, part in have.groupby("config")]
    numbers = pd.DataFrame(rows, columns=["config", "mean", "half_interval", "seeds"]).sort_values("mean", ascending=False)
    frame = numbers.set_index("config").apply(
        lambda r: pd.Series({"zero-shot accuracy": shown(r["mean"], r["half_interval"], 3)}), axis=1)
    return Table("zero_shot_finetuned", "Zero-shot accuracy after fine-tuning, per configuration", frame,
                 numbers.set_index("config")[["seeds"]], numbers,
                 note="Mean over seeds ± the 95% interval (Student's t); chance 0.25.")
