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


@dataclass
class PadCollator:
    """Right-pads a list of examples to the longest; padding never counts in the loss."""

    pad_token_id: int

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            ids[row, :n] = torch.tensor(example["input_ids"])
            labels[row, :n] = torch.tensor(example["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
