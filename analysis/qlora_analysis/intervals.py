"""Means with their 95% intervals (Student's t over the runs of one configuration)."""

from __future__ import annotations

import math

import pandas as pd


def mean_interval(values: pd.Series) -> tuple[float, float | None, int]:
    """(mean, half-width of the 95% interval or None for a single run, n)."""
    values = values.dropna().astype(float)
    n = len(values)
    if n == 0:
        return math.nan, None, 0
    if n == 1:
        return float(values.iloc[0]), None, 1
    return float(values.mean()), float(t_975(n - 1) * values.std(ddof=1) / math.sqrt(n)), n


def t_975(df: int) -> float:
    """Student's t 97.5th percentile: scipy.special's inverse CDF, the same number scipy.stats'
    `t.ppf` gives, without importing scipy.stats (3 s of a report's start-up here)."""
    from scipy.special import stdtrit

    return float(stdtrit(df, 0.975))


def shown(mean: float, half: float | None, digits: int) -> str:
    """"4.987 ± 0.012"; a single run shows its value alone."""
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if half is not None else "")
