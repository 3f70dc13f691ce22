"""Greedy answers to held-out sources, scored by RougeL (rouge-score) against the targets."""

from __future__ import annotations

import torch


@torch.no_grad()
def generate_answers(model, tokenizer, pairs: list[tuple[str, str]], max_new_tokens: int,
                     source_max_len: int) -> list[dict]:
    """One greedy answer per (source, reference) pair, as generations.jsonl rows."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for index, (source, reference) in enumerate(pairs):
        ids = tokenizer(tokenizer.bos_token + source, max_length=source_max_len, truncation=True,
                        add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        rows.append({"id": index, "prompt": source, "reference": reference, "generation": answer})
    model.train(was_training)
    return rows


def rouge_l(rows: list[dict]) -> float | None:
    """Mean RougeL F-measure of generations against references (None when there are none)."""
    if not rows:
        return None
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = [scorer.score(r["reference"], r["generation"])["rougeL"].fmeasure for r in rows]
    return sum(scores) / len(scores)
