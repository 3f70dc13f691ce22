"""Means with their 95% intervals (Student's t over the runs of one configuration)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from qlora_analysis.t_quantiles import T_975


def mean_interval(values: pd.Series | np.ndarray) -> tuple[float, float | None, int]:
    """(mean, half-width of the 95% interval or None for a single run, n), missing values left
    out. The mean and sd as pandas' Series.mean() and .std(ddof=1) compute them (a sum, then the
    two-pass variance), in numpy: the same floats without a Series per cell (a sweep's table
    asks for hundreds)."""
    array = values.to_numpy(dtype=float, na_value=np.nan) if isinstance(values, pd.Series) else \
        np.asarray(values, dtype=float)
    array = array[~np.isnan(array)]
    n = len(array)
    if n == 0:
        return math.nan, None, 0
    if n == 1:
        return float(array[0]), None, 1
    count = np.float64(n)
    mean = array.sum(dtype=np.float64) / count
    sd = np.sqrt(((mean - array) ** 2).sum(dtype=np.float64) / (count - 1))
    return float(mean), float(t_975(n - 1) * sd / math.sqrt(n)), n


def t_975(df: int) -> float:
    """Student's t 97.5th percentile: scipy.special's inverse CDF, the same number scipy.stats'
    `t.ppf` gives; up to 512 degrees of freedom read from its table (`t_quantiles`), beyond
    imported (scipy.stats took 3 s of a report's start-up here, scipy.special 0.2-0.4 s)."""
    if 1 <= df <= len(T_975):
        return T_975[df - 1]
    from scipy.special import stdtrit

    return float(stdtrit(df, 0.975))


def shown(mean: float, half: float | None, digits: int) -> str:
    """"4.987 ± 0.012"; a single run shows its value alone."""
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if half is not None else "")
