"""A table's frame as a LaTeX `table` (booktabs rules), laid out as pandas' `to_latex` lays it
out, written directly: pandas builds a Styler and renders a jinja template per table (a third of
writing a 10,000-run report's tables), and left LaTeX's special characters as they were, so a
cell reading "95% interval" commented out the rest of its row."""

from __future__ import annotations

import math
import numbers

import pandas as pd
from pandas.api.types import is_numeric_dtype

# each special character of LaTeX text as it is typed (pandas' `escape=True` spelling)
SPECIAL = str.maketrans({"\\": r"\textbackslash ", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                         "{": r"\{", "}": r"\}", "~": r"\textasciitilde ", "^": r"\textasciicircum "})


def escaped(text: str) -> str:
    return text.translate(SPECIAL)


def shown(value) -> str:
    """A cell as pandas' LaTeX shows it: a float to 6 places, a missing value `NaN`, else its str."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return "NaN" if math.isnan(value) else f"{value:.6f}"
    return str(value)


def latex_table(frame: pd.DataFrame, caption: str, label: str, escape: bool = True) -> str:
    """`frame` (one index level, one column level: `tables.readable`'s) with its caption and label;
    `escape=False` leaves the text as pandas does (what the tests compare against)."""
    text = escaped if escape else str
    columns = "l" + "".join("r" if is_numeric_dtype(dtype) else "l" for dtype in frame.dtypes)

    def row(cells) -> str:
        return " & ".join(text(cell) for cell in cells) + r" \\"

    lines = [r"\begin{table}", rf"\caption{{{text(caption)}}}", rf"\label{{{label}}}", rf"\begin{{tabular}}{{{columns}}}",
             r"\toprule", row([shown(frame.columns.name) if frame.columns.name is not None else "",
                               *map(shown, frame.columns)])]
    if frame.index.name is not None:
        lines.append(row([shown(frame.index.name)] + [""] * len(frame.columns)))
    lines.append(r"\midrule")
    cells = [frame.iloc[:, i].tolist() for i in range(frame.shape[1])]  # column by column: no row objects
    lines += [row(map(shown, (name, *values))) for name, *values in zip(frame.index, *cells)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)
