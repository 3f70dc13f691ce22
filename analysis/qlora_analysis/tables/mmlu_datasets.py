"""Table 5: MMLU accuracy by fine-tuning dataset x model size."""

from __future__ import annotations

from dataclasses import replace

from qlora_analysis.tables import summarize, table


@table("mmlu_by_dataset")
def mmlu_by_dataset(runs, judgments):
    if runs.empty or runs["mmlu_acc"].dropna().empty or runs.dropna(subset=["mmlu_acc"])["dataset"].nunique() < 2:
        return None
    made = summarize(runs, ["dataset"], ["model"], "mmlu_acc")
    return None if made is None else replace(
        made, name="mmlu_by_dataset", title="Table 5: MMLU accuracy by dataset x model size",
        note="Mean MMLU accuracy after fine-tuning on each dataset; higher is better.")
