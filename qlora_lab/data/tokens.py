"""(source, target) pairs -> token ids with the source masked out of the loss, and batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100  # label value the loss skips


def encode_pairs(pairs: list[tuple[str, str]], tokenizer, source_max_len: int, target_max_len: int,
                 train_on_source: bool) -> list[dict]:
    """As the paper's code did: bos + source (cut at source_max_len), target + eos (cut at
    target_max_len); the source's labels are IGNORE_INDEX unless train_on_source."""
    sources = tokenizer([tokenizer.bos_token + s for s in (p[0] for p in pairs)], max_length=source_max_len,
                        truncation=True, add_special_tokens=False)["input_ids"]
    targets = tokenizer([t + tokenizer.eos_token for t in (p[1] for p in pairs)], max_length=target_max_len,
                        truncation=True, add_special_tokens=False)["input_ids"]
    examples = []
    for source, target in zip(sources, targets):
        labels = (source if train_on_source else [IGNORE_INDEX] * len(source)) + target
        examples.append({"input_ids": source + target, "labels": labels})
    return examples


def encode_seq2seq(pairs: list[tuple[str, str]], tokenizer, source_max_len: int, target_max_len: int) -> list[dict]:
    """Encoder-decoder (T5): the source (+ eos) into the encoder, the target (+ eos) as the
    decoder's labels; the model makes its decoder inputs by shifting the labels right."""
    eos = [tokenizer.eos_token_id]
    sources = tokenizer([p[0] for p in pairs], max_length=source_max_len - 1, truncation=True,
                        add_special_tokens=False)["input_ids"]
    targets = tokenizer([p[1] for p in pairs], max_length=target_max_len - 1, truncation=True,
                        add_special_tokens=False)["input_ids"]
    return [{"input_ids": s + eos, "labels": t + eos} for s, t in zip(sources, targets)]


def encode_classes(pairs: list[tuple], tokenizer, labels: tuple[str, ...], max_len: int) -> list[dict]:
    """Sequence classification: one text or a text pair, with the tokenizer's own special
    tokens (RoBERTa: <s> a </s></s> b </s>); the label's index, or the score for regression."""
    examples = []
    for source, target in pairs:
        texts = source if isinstance(source, (tuple, list)) else (source,)
        ids = tokenizer(*texts, max_length=max_len, truncation=True)["input_ids"]
        examples.append({"input_ids": ids, "labels": labels.index(target) if labels else float(target)})
    return examples


@dataclass
class PadCollator:
    """Right-pads a list of examples to the longest; padding never counts in the loss.
    Labels are padded to their own longest (a decoder's differ from the input), or stacked
    when each example has one (a class index or a score)."""

    pad_token_id: int

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            ids[row, :n] = torch.tensor(example["input_ids"])
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": _labels([e["labels"] for e in examples]), "attention_mask": mask}


def _labels(rows: list) -> torch.Tensor:
    if not isinstance(rows[0], list):
        return torch.tensor(rows, dtype=torch.float if isinstance(rows[0], float) else torch.long)
    labels = torch.full((len(rows), max(len(r) for r in rows)), IGNORE_INDEX, dtype=torch.long)
    for row, values in enumerate(rows):
        labels[row, : len(values)] = torch.tensor(values)
    return labels
