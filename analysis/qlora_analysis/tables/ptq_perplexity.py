"""Table 2: perplexity of a base quantized after training, by data type: eval-only runs' corpus
perplexity, or a fine-tuning run's `base_ppl` (the same measure, taken before it trained)."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from qlora_analysis.collect import plain_lora
from qlora_analysis.tables import summarize, table
from qlora_analysis.tables.fidelity import checkpoint_name, checkpoint_order


@table("ptq_perplexity")
def ptq_perplexity(runs, judgments):
    if runs.empty or "ppl" not in runs:
        return None
    runs = plain_lora(runs)  # an adapter study's eval-only runs measure the adapter's init, not the storage
    eval_only = runs[(runs["train.max_steps"] == 0) & runs["ppl"].notna()]
    before = runs[runs["base_ppl"].notna()].assign(ppl=lambda r: r["base_ppl"]) if "base_ppl" in runs else runs[:0]
    # one measure per base and data type: seeds and LoRA settings of a fine-tuning study share it
    before = before.drop_duplicates(subset=["model", "dtype_label"])
    both = pd.concat([eval_only, before])
    if "dtype.blocksize" in both:  # the paper's blocksize: a blocksize sweep has a table of its own
        both = both[both["dtype.blocksize"].isna() | (both["dtype.blocksize"] == 64)]
    index = ["model"]
    if "model.checkpoint" in both and both["model.checkpoint"].nunique() > 0:  # each checkpoint a row of its own
        both = both.assign(checkpoint=[checkpoint_name(s) for s in both["model.checkpoint"]])
        index.append("checkpoint")
    made = summarize(both, index, ["dtype_label"], "ppl", digits=2)
    if made is None:
        return None
    if "checkpoint" in index:
        rows = sorted(made.frame.index, key=lambda key: (key[0], checkpoint_order(key[1])))
        made = replace(made, frame=made.frame.loc[rows], support=made.support.loc[rows])
    return replace(made, name="ptq_perplexity", title="Table 2: post-training quantization perplexity by data type",
                   note="Perplexity of the quantized base before any fine-tuning (train.max_steps=0); lower is better.")
