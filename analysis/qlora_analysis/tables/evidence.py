"""What a verdict stands on, shared by the claims table and the formats' table: the evidence (a
difference, its 95% interval, the floor it is judged against) and the verdict rule; PTQ gaps from
the runs' intervals over text windows, fine-tuning gaps paired over seeds."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from qlora_analysis.collect import plain_lora
from qlora_analysis.intervals import t_975
from qlora_analysis.tables.fidelity import KL_SCALE, ptq_fidelity


@dataclass
class Evidence:
    difference: float  # how much better the claimed winner is (positive: as the paper says)
    half: float  # 95% half-interval of the difference
    floor: float  # the noise floor the difference is judged against
    ours: str  # as shown
    unit: str


def verdict(e: Evidence, equality: tuple[str, str] | None = None) -> str:
    """`equality`: a "matches" claim, with what to say when the difference is positive / negative."""
    low, high = e.difference - e.half, e.difference + e.half
    beyond = abs(e.difference) > e.floor
    if equality:
        if abs(e.difference) <= e.floor or low <= 0 <= high:
            return "holds"
        return f"does not hold ({equality[0] if e.difference > 0 else equality[1]})"
    if low > 0 and beyond:
        return "holds"
    if high < 0 and beyond:
        return "reversed"
    return "below the noise floor"


def final_ptq(runs: pd.DataFrame) -> pd.DataFrame:
    have = ptq_fidelity(runs)
    if have.empty:
        return have
    have = have[have["checkpoint"] == "final"]
    if "dtype.blocksize" in have:
        have = have[have["dtype.blocksize"].isna() | (have["dtype.blocksize"] == 64)]
    return have.sort_values("dtype.backend").drop_duplicates(subset=["dtype_label"]).set_index("dtype_label")


def ptq_gap(ptq: pd.DataFrame, better: str, worse: str) -> Evidence | None:
    """KL(worse) - KL(better), in 10^-3 nats, its interval from both runs' intervals."""
    if better not in ptq.index or worse not in ptq.index:
        return None
    a, b = ptq.loc[better], ptq.loc[worse]
    half_a, half_b = (a["kl_to_base_hi"] - a["kl_to_base_lo"]) / 2, (b["kl_to_base_hi"] - b["kl_to_base_lo"]) / 2
    half = math.hypot(half_a, half_b) * KL_SCALE
    diff = (b["kl_to_base"] - a["kl_to_base"]) * KL_SCALE
    return Evidence(diff, half, half, f"KL {better} {a['kl_to_base'] * KL_SCALE:.3f} vs {worse} "
                                      f"{b['kl_to_base'] * KL_SCALE:.3f}; gap {diff:+.3f} ± {half:.3f}", "10^-3 nats")


def finetuned(runs: pd.DataFrame) -> pd.DataFrame:
    if runs.empty or "train.max_steps" not in runs:
        return runs.iloc[0:0]
    runs = plain_lora(runs)
    return runs[(runs["train.max_steps"] > 0) & runs["eval_loss"].notna()]


def seed_floor(fine: pd.DataFrame) -> float:
    """The spread between seeds of one configuration: the pooled sd of the loss over seeds."""
    variances = fine.groupby("config")["eval_loss"].var(ddof=1).dropna()
    return math.sqrt(variances.mean()) if not variances.empty else math.nan


def paired_gap(fine: pd.DataFrame, better: str, worse: str, floor: float) -> Evidence | None:
    """loss(worse) - loss(better) per shared seed; mean and Student's t interval over seeds."""
    # one loss per seed: runs of one configuration and seed that differ in an axis the label does
    # not show (the dataset) are averaged (pandas 3 refused the per-seed lookup they made ambiguous)
    a = fine[fine["config"] == better].groupby("train.seed")["eval_loss"].mean()
    b = fine[fine["config"] == worse].groupby("train.seed")["eval_loss"].mean()
    shared = sorted(set(a.index) & set(b.index))
    if len(shared) < 2:
        return None
    diffs = (b[shared] - a[shared]).reset_index(drop=True)
    half = float(t_975(len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs)))
    mean = float(diffs.mean())
    return Evidence(mean, half, floor, f"loss {better} {a[shared].mean():.4f} vs {worse} {b[shared].mean():.4f}; "
                                       f"gap {mean:+.4f} ± {half:.4f} ({len(shared)} seeds, paired)", "nats/token")


def config_label(fine: pd.DataFrame, dtype: str, targets: str) -> str | None:
    match = fine[(fine["dtype_label"] == dtype) & (fine["lora.targets"] == targets)]["config"]
    return match.iloc[0] if not match.empty else None


def flipped(e: Evidence | None) -> Evidence | None:
    """For "4-bit matches 16-bit": positive when the 4-bit side is better."""
    return None if e is None else Evidence(-e.difference, e.half, e.floor, e.ours, e.unit)
