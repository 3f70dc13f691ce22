"""Table 4: MMLU accuracy by data type x dataset x model size."""

from __future__ import annotations

from dataclasses import replace

from qlora_analysis.tables import summarize, table


@table("mmlu_by_dtype")
def mmlu_by_dtype(runs, judgments):
    if runs.empty or runs["mmlu_acc"].dropna().empty or runs.dropna(subset=["mmlu_acc"])["dtype_label"].nunique() < 2:
        return None
    made = summarize(runs[runs["model_kind"] == "causal"], ["model"], ["dataset", "dtype_label"], "mmlu_acc")
    return None if made is None else replace(
        made, name="mmlu_by_dtype", title="Table 4: MMLU accuracy by data type x dataset x model size",
        note="Mean MMLU accuracy (the record's split and shots) of the fine-tuned models; higher is better.")
