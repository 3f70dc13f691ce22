"""Bases built locally from a config: never downloaded, built once, cached on disk.

A byte-level BPE tokenizer is trained on the stdlib pretraining text, then a Llama of
`model.arch` is pretrained on it for `model.pretrain.steps` (a plain loop: the whole recipe
reads in one screen). The folder it leaves is an ordinary transformers checkpoint, so the run
loads it through the same `from_pretrained` + `BitsAndBytesConfig` path as a hub model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import sys
from pathlib import Path

from qlora_lab.cache import build_lock, cache_dir
from qlora_lab.config import Arch, ModelConfig, Pretrain

BUILD_VERSION = 1  # bump when the recipe below changes


def built_model_dir(cfg: ModelConfig) -> Path:
    """The cached checkpoint folder of a `source=build` model, building it when missing."""
    key = _build_key(cfg.arch, cfg.pretrain)
    target = cache_dir() / "models" / f"{cfg.name}-{key}"
    if (target / "config.json").exists():
        return target
    with build_lock(f"models/{cfg.name}-{key}"):
        if not (target / "config.json").exists():
            staging = target.with_name(target.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            _build(cfg.arch, cfg.pretrain, staging, label=cfg.name)
            staging.rename(target)
    return target


def _build_key(arch: Arch, pretrain: Pretrain) -> str:
    spec = {"arch": dataclasses.asdict(arch), "pretrain": dataclasses.asdict(pretrain),
            "python": sys.version.split()[0], "version": BUILD_VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _build(arch: Arch, pretrain: Pretrain, out: Path, label: str) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from qlora_lab.data.stdlib import pretrain_text

    text = pretrain_text()
    tokenizer = train_tokenizer(text, arch.vocab_size)
    torch.manual_seed(pretrain.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_heads,
        max_position_embeddings=arch.max_seq_len, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    if pretrain.steps:
        ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        _pretrain(model, ids, pretrain, label)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _pretrain(model, ids, pretrain: Pretrain, label: str) -> None:
    """nanoGPT-style: random windows of the token stream, AdamW, warmup then cosine."""
    import torch
    from tqdm.auto import tqdm

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=pretrain.learning_rate, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, pretrain.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, warmup, pretrain.steps))
    windows = torch.Generator().manual_seed(pretrain.seed)
    progress = tqdm(range(pretrain.steps), desc=f"pretraining {label} base (cached after)", unit="step")
    for _ in progress:
        starts = torch.randint(0, len(ids) - pretrain.seq_len - 1, (pretrain.batch_size,), generator=windows)
        batch = torch.stack([ids[s : s + pretrain.seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        progress.set_postfix(loss=f"{loss.item():.3f}")


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE (GPT-2 style) trained on `text`, wrapped as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(_chunks(text), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def _chunks(text: str, size: int = 1 << 16):
    for start in range(0, len(text), size):
        yield text[start : start + size]
