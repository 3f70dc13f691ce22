"""Table 2: perplexity of a base quantized after training, by data type: eval-only runs' corpus
perplexity, or a fine-tuning run's `base_ppl` (the same measure, taken before it trained)."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from qlora_analysis.tables import summarize, table


@table("ptq_perplexity")
def ptq_perplexity(runs, judgments):
    if runs.empty or "ppl" not in runs:
        return None
    eval_only = runs[(runs["train.max_steps"] == 0) & runs["ppl"].notna()]
    before = runs[runs["base_ppl"].notna()].assign(ppl=lambda r: r["base_ppl"]) if "base_ppl" in runs else runs[:0]
    # one measure per base and data type: seeds and LoRA settings of a fine-tuning study share it
    before = before.drop_duplicates(subset=["model", "dtype_label"])
    made = summarize(pd.concat([eval_only, before]), ["model"], ["dtype_label"], "ppl", digits=2)
    if made is None:
        return None
    return replace(made, name="ptq_perplexity", title="Table 2: post-training quantization perplexity by data type",
                   note="Perplexity of the quantized base before any fine-tuning (train.max_steps=0); lower is better.")
