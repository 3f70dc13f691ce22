"""Table 3: RougeL (T5 on Super-NaturalInstructions) and accuracy (RoBERTa on GLUE) by data type."""

from __future__ import annotations

from dataclasses import replace

from qlora_analysis.tables import summarize, table


@table("kinds_by_dtype")
def kinds_by_dtype(runs, judgments):
    if runs.empty:
        return None
    parts = []
    for kind, metric in (("seq2seq", "rougeL"), ("classifier", "accuracy")):
        made = summarize(runs[runs["model_kind"] == kind], ["model"], ["dtype_label"], metric)
        if made is not None:
            parts.append((kind, metric, made))
    if not parts:
        return None
    import pandas as pd

    frame = pd.concat({f"{kind} ({metric})": made.frame for kind, metric, made in parts})
    support = pd.concat({f"{kind} ({metric})": made.support for kind, metric, made in parts})
    numbers = pd.concat([made.numbers.assign(kind=kind, metric=metric) for kind, metric, made in parts])
    return replace(parts[0][2], name="kinds_by_dtype", frame=frame, support=support, numbers=numbers,
                   title="Table 3: RougeL (seq2seq) and accuracy (classifier) by data type and model size",
                   note="T5-family runs scored by RougeL, RoBERTa-family runs by accuracy; higher is better.")
