"""The tables' LaTeX: laid out as pandas' `to_latex` lays it out (written directly, a third of
writing a report's tables), with LaTeX's special characters escaped (pandas left "95% interval"
to comment out the rest of its row)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qlora_analysis.latex import latex_table


def frames():
    mixed = pd.DataFrame({"text": pd.Series(["x", None], dtype=object), "float": [1.5, np.nan],
                          "nullable": pd.array([1, None], dtype="Int64"), "str": ["s", np.nan], "flag": [True, False]},
                         index=pd.Index([0.0002, np.nan]))
    named = pd.DataFrame({"alpaca · NF4+DQ": ["0.400 ± 0.058"], "alpaca · FP4": ["0.398 ± 0.057"]},
                         index=pd.Index(["tiny"], name="model"))
    named.columns.name = "dataset · dtype_label"
    columns_named = named.rename_axis(index=None)
    index_named = named.rename_axis(columns=None)
    return [mixed, named, columns_named, index_named, pd.DataFrame({"n": [3, 4]}, index=["a", "b"])]


@pytest.mark.parametrize("frame", frames())
def test_laid_out_as_pandas_lays_it_out(frame):
    assert latex_table(frame, "Table 4: MMLU", "tab:mmlu", escape=False) == frame.to_latex(caption="Table 4: MMLU",
                                                                                           label="tab:mmlu")


def test_latex_special_characters_are_escaped_in_cells_headers_and_caption():
    frame = pd.DataFrame({"ours (95% interval)": ["KL 10^-3 & more_of $x$ #1 {a} ~b \\c"]},
                         index=pd.Index(["Q4_K"], name="claim"))
    text = latex_table(frame, "The 4-bit formats of 2026: 50% off", "tab:formats_2026")
    assert r"\caption{The 4-bit formats of 2026: 50\% off}" in text
    assert r"\label{tab:formats_2026}" in text  # a label is a name, not text
    assert r" & ours (95\% interval) \\" in text
    assert r"Q4\_K & KL 10\textasciicircum -3 \& more\_of \$x\$ \#1 \{a\} \textasciitilde b \textbackslash c \\" in text
    body = text.split(r"\midrule")[1]
    assert "%" not in body.replace(r"\%", "")  # no bare % left to comment out the row
