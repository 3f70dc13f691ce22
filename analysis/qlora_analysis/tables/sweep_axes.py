"""Every sweep's own table: its swept axes against the metrics that vary, seeds pooled.

The paper's tables answer the paper's questions; a researcher's sweep asks its own
(`-m dtype=nf4,fp4,int4 lora.targets=all,qv`). One row per configuration, mean ± 95% interval
and n per cell; with exactly two swept axes, also the grid of the main metric (data type x
targets for that sweep).
"""

from __future__ import annotations

import pandas as pd

from qlora_analysis.intervals import mean_interval, shown
from qlora_analysis.tables import Table, table

# (column, heading, digits): what a sweep may move, in the order a reader looks for it
SWEPT_METRICS = (("eval_loss", "eval loss", 3), ("ppl", "perplexity", 2), ("rougeL", "RougeL", 3),
                 ("accuracy", "accuracy", 3), ("mmlu_acc", "MMLU", 3), ("zero_shot_mean", "zero-shot", 3),
                 ("bits_per_param", "bits/param", 3), ("tokens_per_s", "tokens/s", 0))
AXIS_NAMES = {"dtype_label": "data type", "lora.targets": "LoRA targets", "lora.r": "LoRA r",
              "train.learning_rate": "learning rate", "train.max_steps": "steps"}
POOLED = {"train.seed"}  # what a configuration's runs differ in: pooled into its interval
FOLDED = {"dtype": "dtype_label", "dtype.double_quant": "dtype_label", "dtype.scale": "dtype_label"}  # shown through the data type's label


def one_sweep(runs: pd.DataFrame) -> bool:
    """The runs come from one sweep folder: several sweeps (the micro-study's three) have tables
    of their own questions, and this one would cross their unrelated axes."""
    import os

    return runs["run_dir"].astype(str).str.rsplit(os.sep, n=1).str[0].nunique() <= 1


def swept_axes(runs: pd.DataFrame) -> list[str]:
    """The axes whose values differ between the runs (seeds pooled), data type first. An axis
    that follows another (`dtype.backend` follows the data type: Int4 runs on `lab`) is folded
    into it: it asks no question of its own."""
    axes = []
    for column in runs.attrs.get("axes", []):  # what the sweep chose (collect: standard axes and overrides)
        if column in POOLED or column not in runs:
            continue
        if _distinct_as_text(runs[column]) > 1:
            axes.append(FOLDED.get(column, column))
    kept: list[str] = []
    for axis in dict.fromkeys(axes):
        if not any(follows(runs, axis, leader) for leader in kept):
            kept.append(axis)
    return kept


def _distinct_as_text(values: pd.Series) -> int:
    """How many values differ as text (64 and "64" are one), each distinct value converted once."""
    try:
        return len({str(value) for value in values.unique()})
    except TypeError:  # an unhashable value (a config section): every row as text
        return values.astype(str).nunique()


def follows(runs: pd.DataFrame, axis: str, leader: str) -> bool:
    """Each value of `leader` comes with one value of `axis` across the runs."""
    pair = runs[[axis, leader]].astype(str)  # the two columns only: the frame has a hundred
    return bool((pair.groupby(leader)[axis].nunique() <= 1).all())


def _axis_value(column: str, value) -> str:
    if column == "lora.r":
        return f"r{value}"
    if column in ("dtype_label", "lora.targets", "model", "dataset"):
        return str(value)
    return f"{column.split('.')[-1]}={value}"


@table("sweep_axes")
def sweep_axes(runs, judgments):
    if runs.empty or not one_sweep(runs):
        return None
    axes = swept_axes(runs)
    metrics = [(c, h, d) for c, h, d in SWEPT_METRICS if c in runs and runs[c].dropna().nunique() > 1]
    if not axes or not metrics:
        return None
    labels = [runs[a].map(lambda v, a=a: _axis_value(a, v)) for a in axes]  # column by column, no row loop
    settings = pd.Series([" · ".join(values) for values in zip(*labels)], index=runs.index)
    at = settings.groupby(settings, sort=True).indices  # setting -> its rows' positions: no frame per group
    columns = {column: runs[column].to_numpy(dtype=float, na_value=float("nan")) for column, _, _ in metrics}
    axis_values = {a: runs[a].to_numpy() for a in axes}
    rows, numbers = [], []
    for setting in sorted(at):
        rows_at = at[setting]
        row = {"configuration": setting, "n": len(rows_at)}
        for column, heading, digits in metrics:
            mean, half, n = mean_interval(columns[column][rows_at])
            row[heading] = shown(mean, half, digits) if n else ""
            numbers.append({"configuration": setting, **{a: axis_values[a][rows_at[0]] for a in axes}, "metric": column,
                            "mean": mean, "ci95_half": half, "n": n})
        rows.append(row)
    frame = pd.DataFrame(rows).set_index("configuration")
    support = frame[["n"]]
    return Table("sweep_axes", f"This sweep: {' × '.join(AXIS_NAMES.get(a, a) for a in axes)} "
                               f"against the metrics that vary",
                 frame.drop(columns=["n"]), support, pd.DataFrame(numbers),
                 note="Mean ± half-width of the 95% interval (Student's t) over the configuration's runs "
                      "(seeds pooled); n runs per row below.")


@table("sweep_grid")
def sweep_grid(runs, judgments):
    """Two swept axes: the main metric as a grid, rows the first axis, columns the second."""
    if runs.empty or not one_sweep(runs):
        return None
    axes = swept_axes(runs)
    metrics = [(c, h, d) for c, h, d in SWEPT_METRICS[:6] if c in runs and runs[c].dropna().nunique() > 1]
    if len(axes) != 2 or not metrics:
        return None
    column, heading, digits = metrics[0]
    cells, numbers = {}, []
    for (first, second), group in runs.groupby(axes, sort=True):
        mean, half, n = mean_interval(group[column])
        if not n:
            continue
        rows = cells.setdefault(_axis_value(axes[0], first), {})
        rows[_axis_value(axes[1], second)] = f"{shown(mean, half, digits)} (n={n})"
        numbers.append({axes[0]: first, axes[1]: second, "mean": mean, "ci95_half": half, "n": n})
    frame = pd.DataFrame.from_dict(cells, orient="index").sort_index()
    frame.index.name = AXIS_NAMES.get(axes[0], axes[0])
    names = [AXIS_NAMES.get(a, a) for a in axes]
    return Table("sweep_grid", f"This sweep: {heading} by {names[0]} × {names[1]}", frame, pd.DataFrame(),
                 pd.DataFrame(numbers), note=f"{heading}: mean ± half-width of the 95% interval (n runs, seeds pooled).")
