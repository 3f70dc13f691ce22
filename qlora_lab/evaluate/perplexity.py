"""Perplexity of a text corpus (the paper's post-training quantization measure): the texts,
joined by eos, cut into non-overlapping windows; mean loss per predicted token, exponentiated."""

from __future__ import annotations

import math
from pathlib import Path

import torch


def corpus_texts(folder: str | Path | None, hub_id: str | None, hub_config: str | None, text_field: str) -> list[str]:
    """A local folder's *.txt files (sorted), "stdlib" (the library source no built base was
    pretrained on), or a hub dataset's text field."""
    if folder == "stdlib":
        from qlora_lab.data.stdlib_mc import heldout_source_texts

        return heldout_source_texts()
    if folder is not None:
        texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(Path(folder).rglob("*.txt"))]
        if not texts:
            raise ValueError(f"eval.ppl.path={folder}: no .txt files")
        return texts
    import datasets

    return list(datasets.load_dataset(hub_id, hub_config, split="train")[text_field])


@torch.no_grad()
def corpus_perplexity(model, tokenizer, texts: list[str], seq_len: int, max_tokens: int,
                      batch_size: int) -> tuple[float, int]:
    """(perplexity, tokens scored) over at most max_tokens tokens."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) >= max_tokens + 1:
            break
    ids = ids[: max_tokens + 1]
    windows = [ids[i : i + seq_len] for i in range(0, len(ids) - 1, seq_len)]
    windows = [w for w in windows if len(w) > 1]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        for window in windows[start : start + batch_size]:  # equal lengths but the last: no padding
            batch = torch.tensor([window], device=device)
            logits = model(input_ids=batch).logits.float()
            total += torch.nn.functional.cross_entropy(logits[0, :-1], batch[0, 1:], reduction="sum").item()
            count += len(window) - 1
    model.train(was_training)
    return math.exp(total / count), count
