"""Tokens: the source is masked out of the loss unless train_on_source; padding never counts."""

from __future__ import annotations

import pytest

from qlora_lab.config import Arch, ModelConfig, Pretrain
from qlora_lab.data.tokens import IGNORE_INDEX, PadCollator, encode_pairs


@pytest.fixture(scope="module")
def tokenizer():
    from qlora_lab.model.build import load_tokenizer
    from qlora_lab.model.tiny import built_model_dir

    cfg = ModelConfig(name="unit", arch=Arch(vocab_size=512, hidden_size=64, intermediate_size=128,
                                             num_layers=1, num_heads=2), pretrain=Pretrain(steps=0))
    return load_tokenizer(str(built_model_dir(cfg)))


def test_source_is_masked_and_target_ends_with_eos(tokenizer):
    [ex] = encode_pairs([("def f(x):", "    return x")], tokenizer, 64, 64, train_on_source=False)
    n_source = len(tokenizer(tokenizer.bos_token + "def f(x):", add_special_tokens=False)["input_ids"])
    assert ex["input_ids"][0] == tokenizer.bos_token_id and ex["input_ids"][-1] == tokenizer.eos_token_id
    assert ex["labels"][:n_source] == [IGNORE_INDEX] * n_source
    assert ex["labels"][n_source:] == ex["input_ids"][n_source:]


def test_train_on_source_keeps_source_labels(tokenizer):
    [ex] = encode_pairs([("def f(x):", "    return x")], tokenizer, 64, 64, train_on_source=True)
    assert ex["labels"] == ex["input_ids"]


def test_max_lengths_cut_source_and_target(tokenizer):
    [ex] = encode_pairs([("a " * 100, "b " * 100)], tokenizer, 10, 7, train_on_source=False)
    assert len(ex["input_ids"]) == 17 and ex["labels"].count(IGNORE_INDEX) == 10


def test_collator_pads_right_and_masks_padding(tokenizer):
    examples = encode_pairs([("x", "y"), ("a longer source", "and a longer target")], tokenizer, 64, 64, False)
    batch = PadCollator(tokenizer.pad_token_id)(examples)
    short = len(examples[0]["input_ids"])
    assert batch["input_ids"].shape[1] == len(examples[1]["input_ids"])
    assert (batch["attention_mask"][0, short:] == 0).all() and (batch["labels"][0, short:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][0, short:] == tokenizer.pad_token_id).all()
