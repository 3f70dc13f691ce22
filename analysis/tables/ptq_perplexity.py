"""Table 2: perplexity of a base quantized after training, by data type (eval-only runs)."""

from __future__ import annotations

from dataclasses import replace

from qlora_analysis.tables import summarize, table


@table("ptq_perplexity")
def ptq_perplexity(runs, judgments):
    if runs.empty or "ppl" not in runs:
        return None
    eval_only = runs[(runs["train.max_steps"] == 0) & runs["ppl"].notna()]
    made = summarize(eval_only, ["model"], ["dtype_label"], "ppl", digits=2)
    if made is None:
        return None
    return replace(made, name="ptq_perplexity", title="Table 2: post-training quantization perplexity by data type",
                   note="Perplexity of the quantized base before any fine-tuning (train.max_steps=0); lower is better.")
