"""Means with their 95% intervals: the same floats pandas and scipy give, without a Series per
cell or scipy's import (a 10,000-run report asked for hundreds, in two processes)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import stdtrit

from qlora_analysis.intervals import mean_interval, t_975
from qlora_analysis.t_quantiles import T_975, module_source


def test_the_t_table_is_scipys_bit_for_bit_and_beyond_it_scipy_answers():
    assert len(T_975) == 512
    assert [float(stdtrit(df, 0.975)) for df in range(1, 513)] == list(T_975)
    assert t_975(3) == float(stdtrit(3, 0.975)) and t_975(2000) == float(stdtrit(2000, 0.975))


def test_the_table_module_regenerates_as_committed():
    """Its text made anew from the installed scipy is the committed text (the scipy version it
    names aside: a newer scipy with the same values leaves the table as it is)."""
    import re
    from pathlib import Path

    import qlora_analysis.t_quantiles as module

    def unversioned(text: str) -> str:
        return re.sub(r"\(scipy [^;]+;", "(scipy;", text, count=1)

    committed = Path(module.__file__).read_text(encoding="utf-8")
    assert unversioned(module_source()) == unversioned(committed) and "(scipy 1." in committed


@pytest.mark.parametrize("n", [1, 2, 3, 7, 40, 300, 600])
def test_mean_and_interval_equal_pandas_mean_and_std_bit_for_bit(n):
    rng = np.random.default_rng(n)
    values = pd.Series(rng.normal(0.4, 0.05, n) * 10.0 ** rng.integers(-3, 3))
    values[values.sample(frac=0.2, random_state=n).index] = np.nan  # missing values are left out
    expected = values.dropna()
    mean, half, count = mean_interval(values)
    assert count == len(expected)
    if count == 0:
        assert math.isnan(mean) and half is None
        return
    assert mean == float(expected.mean())
    if count == 1:
        assert half is None
    else:
        scipy_t = float(stdtrit(count - 1, 0.975))
        assert half == float(scipy_t * expected.std(ddof=1) / math.sqrt(count))
    assert mean_interval(values.to_numpy()) == (mean, half, count)  # an array as a Series


def test_an_object_column_with_none_counts_only_its_numbers():
    assert mean_interval(pd.Series([None, 1.0, 3.0], dtype=object)) == (2.0, pytest.approx(T_975[0]), 2)  # sd sqrt(2), n 2
    assert mean_interval(pd.Series([None], dtype=object))[1:] == (None, 0)
