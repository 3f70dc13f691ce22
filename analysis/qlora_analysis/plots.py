"""The paper's figures, as PNGs (matplotlib, no display): each returns its path or None when
the runs give it no support."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from qlora_analysis.intervals import mean_interval

# Which metric a plot shows: the first the runs have (higher is better for all but losses).
METRIC_PREFERENCE = ("zero_shot_mean", "mmlu_acc", "rougeL", "accuracy", "eval_loss", "ppl")
LOWER_IS_BETTER = {"eval_loss", "ppl"}
MAX_ROWS = 24  # about 20: a plot of more rows or series is unreadable at its size (the tables show them)


def main_metric(runs: pd.DataFrame) -> str | None:
    """The first metric of METRIC_PREFERENCE that tells the runs apart (a RougeL of 0 for every
    run of a tiny model says nothing), else the first the runs have at all."""
    present = [m for m in METRIC_PREFERENCE if m in runs and runs[m].notna().any()]
    varying = [m for m in present if runs[m].dropna().nunique() > 1]
    return (varying or present or [None])[0]


def metric_vs_bits(runs: pd.DataFrame, out: Path) -> Path | None:
    """Figure 3's shape: a metric against total model bits, one line per configuration; an
    error bar spans only one configuration's seeds (95% interval), never different settings."""
    metric = main_metric(runs)
    if metric is None or runs["total_bits"].dropna().empty:
        return None
    have = runs.dropna(subset=[metric, "total_bits"])
    if have["config"].nunique() > MAX_ROWS:
        return None
    fig, ax = _figure((7, 4.5))
    for label, points in series_by_config(have, metric).items():
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] or 0.0 for p in points],
                    marker="o", capsize=3, label=label)
    bits = sorted(have["total_bits"].unique())
    ax.set_xscale("log")
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.xaxis.set_major_locator(FixedLocator(bits))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(bits, bits_labels(bits), rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("total model bits (every bit the base stores)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs total model bits (error bars: 95% interval over seeds)")
    ax.legend(fontsize=7, ncol=2 if have["config"].nunique() > 8 else 1)
    return _save(fig, out / "metric_vs_bits.png")


def series_by_config(runs: pd.DataFrame, metric: str) -> dict[str, list[tuple[float, float, float | None, int]]]:
    """configuration label -> [(total bits, mean, 95% half-width, n)]: one line per configuration,
    so an interval spans only the seeds of one setting."""
    return {label: [(bits, *mean_interval(part[metric])) for bits, part in group.groupby("total_bits")]
            for label, group in runs.groupby("config")}


def bits_labels(bits: list[float]) -> list[str]:
    """[30067712, 30100480] -> ["30.07 Mbit", "30.10 Mbit"]: one decimal, or as many more as it
    takes for different bit counts to get different labels (two ticks read "46.9 Mbit" once)."""
    for digits in range(1, 7):
        labels = [_bits_label(b, digits) for b in bits]
        if len(set(labels)) == len(set(bits)):
            return labels
    return [f"{b:.0f} bit" for b in bits]


def _bits_label(bits: float, digits: int = 1) -> str:
    """30067712 -> "30.1 Mbit" (3.8 MB)."""
    for unit, size in (("Gbit", 1e9), ("Mbit", 1e6), ("kbit", 1e3)):
        if bits >= size:
            return f"{bits / size:.{digits}f} {unit}"
    return f"{bits:.0f} bit"


def rouge_by_targets(runs: pd.DataFrame, out: Path) -> Path | None:
    """Figure 2's shape: RougeL by LoRA targets, every seed a point, the mean a short line (no
    bars: a bar's length from zero would mislead on an axis cut to the metric's range)."""
    if runs.empty or runs["rougeL"].dropna().empty:
        return None
    have = runs.dropna(subset=["rougeL"])
    settings = sorted(have["config"].unique())
    if not 2 <= len(settings) <= MAX_ROWS:
        return None
    fig, ax = _figure((max(5, 0.9 * len(settings)) + 1.2, 4))
    means = have.groupby("config")["rougeL"].mean()
    ax.hlines([means[s] for s in settings], [i - 0.3 for i in range(len(settings))],
              [i + 0.3 for i in range(len(settings))], color="#c0392b", linewidth=2, label="mean")
    for i, setting in enumerate(settings):
        values = have[have["config"] == setting]["rougeL"]
        ax.scatter(np.full(len(values), i), values.to_numpy(), color="#1f4e79", zorder=3, s=18,
                   label="one seed" if i == 0 else None)  # arrays: a list is masked element by element
    ax.set_xticks(range(len(settings)), settings, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("RougeL")
    ax.set_title("RougeL by LoRA targets (every seed a point)")
    legend_outside(ax, fontsize=8)
    return _save(fig, out / "rouge_by_targets.png")


def elo_intervals(elo: pd.DataFrame | None, out: Path) -> Path | None:
    """Elo ratings with their 95% intervals, best at the top."""
    if elo is None or elo.empty:
        return None
    out.mkdir(parents=True, exist_ok=True)
    if "level" in elo:  # per configuration where the table has it, else per run
        elo = elo[elo["level"] == elo["level"].iloc[0]]
    if len(elo) > MAX_ROWS:
        return None
    ordered = elo.iloc[::-1]
    fig, ax = _figure((6, 0.45 * len(elo) + 1.5))
    ax.errorbar(ordered["elo"], range(len(ordered)),
                xerr=[(ordered["elo"] - ordered["lower"]).clip(lower=0), (ordered["upper"] - ordered["elo"]).clip(lower=0)],
                fmt="o", capsize=3)  # clipped: equal ratings in every ordering leave float noise
    ax.set_yticks(range(len(ordered)), ordered["model"], fontsize=8)
    ax.axvline(1000, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("Elo (K=32, initial 1000; 95% interval over 10,000 orderings)")
    all_ties = bool((ordered["elo"].round(6) == 1000).all())  # what the table beside it says too
    ax.set_title("Elo ratings: every verdict was a tie, so every rating stays 1000" if all_ties else "Elo ratings",
                 fontsize=9 if all_ties else None)
    return _save(fig, out / "elo.png")


def pareto(runs: pd.DataFrame, cost: str, out: Path) -> Path | None:
    """A metric against a cost (peak memory or training time), the Pareto front drawn."""
    metric = main_metric(runs)
    if metric is None or cost not in runs or runs[cost].dropna().empty:
        return None
    have = runs.dropna(subset=[metric, cost]).sort_values([cost, metric], ascending=[True, metric in LOWER_IS_BETTER])
    values = have[metric] if metric in LOWER_IS_BETTER else -have[metric]  # lower is better from here on
    best_before = values.cummin().shift()  # arrays, not rows: 10,000 runs in milliseconds
    front = have[best_before.isna() | (values < best_before)]
    fig, ax = _figure((8.5, 4))
    by = "config" if have["config"].nunique() <= MAX_ROWS else "dtype_label"  # runs that differ in targets differ in colour
    for label, group in have.groupby(by):
        ax.scatter(group[cost], group[metric], label=label, s=22)
    ax.step(front[cost], front[metric], where="post", color="black", linewidth=1, label="Pareto front")
    ax.scatter(front[cost], front[metric], s=70, facecolors="none", edgecolors="black", zorder=3)
    ax.set_xlabel({"peak_memory_mb": "peak memory (MB)", "train_s": "training time (s)"}.get(cost, cost))
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {ax.get_xlabel()}")
    legend_outside(ax, ncol=2 if have[by].nunique() > 8 else 1)
    return _save(fig, out / f"pareto_{cost}.png")


def kl_by(runs: pd.DataFrame, column: str, out: Path) -> Path | None:
    """KL to the unquantized base per data type against a column of eval-only runs (pretraining
    checkpoint or blocksize), one line per data type, log scale: the fidelity tables drawn."""
    from qlora_analysis.tables.fidelity import ptq_fidelity

    have = ptq_fidelity(runs)
    if column == "dtype.blocksize":
        have = have[(have["checkpoint"] == "final") & (have["dtype.backend"] == "lab")]
        have = have[have["dtype.double_quant"] == False].dropna(subset=[column])  # noqa: E712
        have = have.assign(x=have[column].astype(int))
        xlabel, name = "blocksize", "kl_by_blocksize.png"
    else:
        have = have[have["dtype.blocksize"].isna() | (have["dtype.blocksize"] == 64)] if "dtype.blocksize" in have else have
        steps = have["model.checkpoint"].fillna(have["model.checkpoint"].max() * 3 if have["model.checkpoint"].notna().any() else 1)
        have = have.sort_values("dtype.backend").assign(x=steps).drop_duplicates(["dtype_label", "x"])
        xlabel, name = "pretraining step (final = the last point)", "kl_by_checkpoint.png"
    have = have[have["bits_per_param"] < 16]
    if have.empty or have["x"].nunique() < 2:
        return None
    fig, ax = _figure((6.5, 4))
    for label, group in have.groupby("dtype_label"):
        group = group.sort_values("x")
        ax.errorbar(group["x"], group["kl_to_base"], yerr=[group["kl_to_base"] - group["kl_to_base_lo"],
                                                          group["kl_to_base_hi"] - group["kl_to_base"]],
                    marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted(have["x"].unique()), [str(int(x)) for x in sorted(have["x"].unique())])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("KL to the unquantized base (nats/token)")
    ax.set_title("Output fidelity (95% interval over text windows)")
    ax.legend(fontsize=7)
    return _save(fig, out / name)


def formats_pareto(runs: pd.DataFrame, out: Path) -> Path | None:
    """The 4-bit formats of 2026: KL to the unquantized final checkpoint against bits per parameter
    as stored, every format labelled (a cross's cells with their block size), the Pareto front drawn."""
    from qlora_analysis.tables.fidelity import ptq_fidelity

    have = ptq_fidelity(runs)
    if have.empty or "dtype.scale" not in have or have["dtype.scale"].isna().all():
        return None
    have = have[(have["checkpoint"] == "final") & (have["bits_per_param"] < 16) & have["dtype.scale"].notna()]
    have = have.assign(name=have["dtype_label"] + " /" + have["dtype.blocksize"].astype(int).astype(str))
    have = have.drop_duplicates("name").sort_values(["bits_per_param", "kl_to_base"])
    if len(have) < 2:
        return None
    best_before = have["kl_to_base"].cummin().shift()
    front = have[best_before.isna() | (have["kl_to_base"] < best_before)]
    fig, ax = _figure((8, 5.5))
    named = have["dtype"].isin(["mxfp4", "nvfp4", "q4_0", "q4_k", "hqq4"]) | (have["dtype_label"] == "NF4+DQ")
    ax.scatter(have.loc[~named, "bits_per_param"], have.loc[~named, "kl_to_base"], s=14, color="grey",
               label="codebook x scale format x block size")
    ax.scatter(have.loc[named, "bits_per_param"], have.loc[named, "kl_to_base"], s=40, color="tab:red",
               label="named formats (and NF4+DQ)")
    for i, (_, row) in enumerate(have.iterrows()):
        ax.annotate(row["name"], (row["bits_per_param"], row["kl_to_base"]), fontsize=5 if not named.loc[row.name] else 7,
                    xytext=(4, (i % 3 - 1) * 5), textcoords="offset points")
    ax.step(front["bits_per_param"], front["kl_to_base"], where="post", color="black", linewidth=1,
            label="Pareto front")
    ax.set_yscale("log")
    ax.set_xlabel("bits per parameter as stored")
    ax.set_ylabel("KL to the unquantized base (nats/token)")
    ax.set_title("The 4-bit formats of 2026: fidelity against stored bits (final checkpoint)")
    ax.legend(fontsize=7)
    return _save(fig, out / "formats_kl_vs_bits.png")


def zero_shot_vs_bits(runs: pd.DataFrame, out: Path) -> Path | None:
    """Figure 3's axes for eval-only runs: accuracy against total model bits, a line per checkpoint."""
    from qlora_analysis.tables.fidelity import checkpoint_name, checkpoints_in_order

    if "zero_shot_mean" not in runs:
        return None
    have = runs[(runs["train.max_steps"] == 0)].dropna(subset=["zero_shot_mean", "total_bits"])
    if have.empty or have["total_bits"].nunique() < 2:
        return None
    steps = have["model.checkpoint"] if "model.checkpoint" in have else pd.Series(None, index=have.index)
    have = have.assign(checkpoint=[checkpoint_name(s) for s in steps]).sort_values("dtype.backend")
    have = have.drop_duplicates(["dtype_label", "checkpoint"])
    fig, ax = _figure((7, 4.5))
    order = checkpoints_in_order(have["checkpoint"])
    for name in order:
        group = have[have["checkpoint"] == name].groupby("total_bits")["zero_shot_mean"].mean()
        ax.plot(group.index, group.values, marker="o", label=name)
    labels = have.groupby("total_bits")["dtype_label"].agg(lambda names: ", ".join(sorted(set(names))))
    top = have.groupby("total_bits")["zero_shot_mean"].max()
    for i, (bits, names) in enumerate(labels.items()):  # one label per bit count: equal bits, one line of names
        ax.annotate(names, (bits, top[bits]), fontsize=6, xytext=(0, 6 + 8 * (i % 2)), textcoords="offset points",
                    ha="center")
    ax.axhline(0.25, color="grey", linewidth=0.8, linestyle=":", label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("total model bits")
    ax.set_ylabel("zero-shot accuracy")
    ax.set_title("Zero-shot accuracy vs total model bits (eval-only, per checkpoint)")
    ax.legend(fontsize=7)
    return _save(fig, out / "zero_shot_vs_bits.png")


def all_plots(runs: pd.DataFrame, elo: pd.DataFrame | None, out: Path) -> list[Path]:
    """Every figure the runs and the Elo table support, in the report's order."""
    return with_elo(plots_of_runs(runs, out), elo_intervals(elo, out) if elo is not None else None)


def plots_of_runs(runs: pd.DataFrame, out: Path) -> list[Path]:
    """The figures that need only the runs (all but Elo's), in the report's order."""
    out.mkdir(parents=True, exist_ok=True)
    made = [metric_vs_bits(runs, out), rouge_by_targets(runs, out), pareto(runs, "peak_memory_mb", out),
            pareto(runs, "train_s", out)]
    if "kl_to_base" in runs:
        made += [kl_by(runs, "model.checkpoint", out), kl_by(runs, "dtype.blocksize", out), formats_pareto(runs, out)]
    made.append(zero_shot_vs_bits(runs, out))
    return [path for path in made if path is not None]


def with_elo(made: list[Path], elo_plot: Path | None) -> list[Path]:
    """The Elo figure in its place: after the metric and RougeL figures, before the Pareto ones."""
    if elo_plot is None:
        return made
    at = sum(p.stem in ("metric_vs_bits", "rouge_by_targets") for p in made)
    return made[:at] + [elo_plot] + made[at:]


def legend_outside(ax, fontsize: int = 7, ncol: int = 1) -> None:
    """The legend right of the axes, for plots with a point per run: matplotlib's "best" place
    tests every point against every spot (0.8 s for 10,000 runs), and outside it hides none."""
    ax.legend(fontsize=fontsize, ncol=ncol, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)


def _figure(figsize: tuple[float, float]):
    """A new figure and its axes. matplotlib is imported here, on the first figure drawn (0.75 s):
    runs that support no figure (a rehearsal's) never pay for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize, dpi=120)  # as saved: tight_layout measures the text as the PNG draws it, once


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.set_layout_engine(None)  # laid out: else savefig draws the whole figure once more first, unrendered
    fig.savefig(path, pil_kwargs={"compress_level": 1})  # zlib level 6 took 40 ms a figure; the pixels are the same
    plt.close(fig)
    return path
