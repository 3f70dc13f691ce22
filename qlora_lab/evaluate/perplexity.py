"""Perplexity of a text corpus (the paper's post-training quantization measure): the texts,
joined by eos, cut into non-overlapping windows; mean loss per predicted token, exponentiated."""

from __future__ import annotations

import math
from pathlib import Path

from qlora_lab.evaluate.registry import EvalInputs, evaluation, no_grad


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


def corpus_windows(tokenizer, texts: list[str], seq_len: int, max_tokens: int) -> list[list[int]]:
    """The texts joined by eos, cut at max_tokens + 1 tokens into non-overlapping windows of
    seq_len (the last may be shorter; a window of one token predicts nothing and is dropped)."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) >= max_tokens + 1:
            break
    ids = ids[: max_tokens + 1]
    windows = [ids[i : i + seq_len] for i in range(0, len(ids) - 1, seq_len)]
    return [w for w in windows if len(w) > 1]


@no_grad
def corpus_perplexity(model, tokenizer, texts: list[str], seq_len: int, max_tokens: int,
                      batch_size: int) -> tuple[float, int]:
    """(perplexity, tokens scored) over at most max_tokens tokens."""
    import torch

    windows = corpus_windows(tokenizer, texts, seq_len, max_tokens)
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


def _corpus_chosen(config) -> bool:
    return bool(config.eval.ppl.path or config.eval.ppl.hub_id)


@evaluation("corpus_ppl", order=30, enabled=_corpus_chosen, metrics=("ppl", "base_ppl"),
            before_training=lambda c: c.eval.ppl.before_training)
def measure(inputs: EvalInputs) -> dict:
    """A corpus's perplexity: of the quantized base before fine-tuning (`base_ppl`, Table 2's
    measure) or of the trained model (`ppl`)."""
    ec = inputs.config.eval
    texts = corpus_texts(ec.ppl.path, ec.ppl.hub_id, ec.ppl.hub_config, ec.ppl.text_field)
    ppl, tokens = corpus_perplexity(inputs.model, inputs.tokenizer, texts, ec.ppl.seq_len, ec.ppl.max_tokens,
                                    ec.batch_size)
    if ec.ppl.before_training:
        return {"base_ppl": ppl, "base_ppl_tokens": tokens}
    return {"ppl": ppl, "ppl_on": "corpus", "ppl_tokens": tokens}
