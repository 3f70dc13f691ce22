"""Bases built locally from a config: never downloaded, built once, cached on disk.

A byte-level BPE tokenizer is trained on the stdlib pretraining text, then a model of
`model.arch` is pretrained on it for `model.pretrain.steps` (a plain loop: the whole recipe
reads in one screen): a Llama (causal) by next-token prediction, a T5 (seq2seq) by continuing
a window's first half, a RoBERTa (classifier) by masked-token prediction. The folder it leaves
is an ordinary transformers checkpoint, so the run loads it through the same
`from_pretrained` + `BitsAndBytesConfig` path as a hub model (a classifier's head is then
initialised fresh, as for a hub RoBERTa).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from qlora_lab.cache import build_lock, cache_dir
from qlora_lab.config import Arch, ModelConfig, Pretrain
from qlora_lab.model.kinds import KINDS

BUILD_VERSION = 1  # bump when the recipe below changes
BUILD_REPORT = "build.json"  # beside the weights: what the build made and what it cost
HELDOUT_WINDOWS = 32  # windows of pretrain.seq_len tokens the built base is scored on


@dataclass
class BuildReport:
    """What a build made and what it took, kept beside the weights (build.json): the base's loss on
    modules it was not pretrained on is how two recipes are compared (benchmarks/base_build.py)."""

    name: str
    kind: str
    recipe: dict  # model.pretrain as built: steps, batch_size, seq_len, learning_rate, seed, checkpoints
    pretrain_tokens: int  # steps x batch_size x seq_len
    heldout_loss: Optional[float]  # mean pretraining loss on the held-out windows; None without pretraining
    heldout_tokens: int
    tokenizer_s: float  # the BPE trained on the pretraining text
    pretrain_s: float  # the rest: tokenizing the text, the steps, the held-out loss, saving
    total_s: float


def read_build_report(folder: Path) -> Optional[BuildReport]:
    """A built base's report; None for a folder built before bases kept one."""
    path = Path(folder) / BUILD_REPORT
    return BuildReport(**json.loads(path.read_text())) if path.exists() else None


def built_model_dir(cfg: ModelConfig) -> Path:
    """The cached checkpoint folder of a `source=build` model (of its `model.checkpoint` step,
    where one is chosen), building it when missing."""
    key = _build_key(cfg.arch, cfg.pretrain, cfg.kind)
    target = cache_dir() / "models" / f"{cfg.kind}-{key}"  # by recipe: configs of one recipe share a build
    chosen = target if cfg.checkpoint is None else checkpoint_dir(target, cfg.checkpoint)
    if (target / "config.json").exists():
        return chosen
    with build_lock(f"models/{cfg.kind}-{key}"):
        if not (target / "config.json").exists():
            staging = target.with_name(target.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            _build(cfg.arch, cfg.pretrain, cfg.kind, staging, label=cfg.name)
            staging.rename(target)
    return chosen


def checkpoint_dir(built: Path, step: int) -> Path:
    """Where a build keeps the checkpoint of an intermediate step: an ordinary transformers folder."""
    return built / "checkpoints" / f"step-{step}"


def _build_key(arch: Arch, pretrain: Pretrain, kind: str = "causal") -> str:
    recipe = dataclasses.asdict(pretrain)
    if not recipe["checkpoints"]:  # a build without intermediate checkpoints keeps the key it had before them
        del recipe["checkpoints"]
    spec = {"arch": dataclasses.asdict(arch), "pretrain": recipe, "kind": kind,
            "python": sys.version.split()[0], "version": BUILD_VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _say(message: str) -> None:
    """A first build takes minutes: each phase says what it does, on stderr beside tqdm's bar."""
    print(f"building the {message}", file=sys.stderr, flush=True)


def _build(arch: Arch, pretrain: Pretrain, kind: str, out: Path, label: str) -> None:
    import time

    import torch

    from qlora_lab.data.stdlib import pretrain_text

    start = time.perf_counter()
    text = pretrain_text()
    spec = KINDS[kind]
    _say(f"{label} base (once per machine, cached): a {arch.vocab_size}-token BPE tokenizer on "
         f"{len(text) / 1e6:.1f} MB of the standard library's source")
    tokenizer = train_tokenizer(text, arch.vocab_size, kind)
    tokenizer_s = time.perf_counter() - start
    _say(f"{label} base: tokenizer {tokenizer_s:.0f} s; tokenizing the text, then "
         f"{pretrain.steps} pretraining steps of {pretrain.batch_size} x {pretrain.seq_len} tokens")
    torch.manual_seed(pretrain.seed)
    model = spec.new_model(arch, tokenizer)
    def save(folder: Path) -> None:
        if spec.saved_as:  # e.g. saved as an encoder, loaded with a fresh head: what a hub RoBERTa is
            model.config.architectures = [spec.saved_as]
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    heldout_loss, heldout_tokens = None, 0
    if pretrain.steps:
        ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        objective = spec.pretrain_loss(tokenizer)
        _pretrain(model, ids, pretrain, label, objective,
                  lambda step: save(checkpoint_dir(out, step)) if step in pretrain.checkpoints else None)
        windows = heldout_windows(tokenizer, pretrain.seq_len)
        heldout_loss, heldout_tokens = _mean_loss(model, objective, windows, pretrain.batch_size), windows.numel()
        _say(f"{label} base: held-out loss {heldout_loss:.3f} ({heldout_tokens:,} tokens of modules it was "
             f"not pretrained on)")
    save(out)
    total_s = time.perf_counter() - start
    report = BuildReport(name=label, kind=kind, recipe=dataclasses.asdict(pretrain),
                         pretrain_tokens=pretrain.steps * pretrain.batch_size * pretrain.seq_len,
                         heldout_loss=heldout_loss, heldout_tokens=heldout_tokens, tokenizer_s=round(tokenizer_s, 2),
                         pretrain_s=round(total_s - tokenizer_s, 2), total_s=round(total_s, 2))
    (out / BUILD_REPORT).write_text(json.dumps(dataclasses.asdict(report), indent=2) + "\n")
    _say(f"{label} base: done in {total_s:.0f} s")


def heldout_windows(tokenizer, seq_len: int, count: int = HELDOUT_WINDOWS):
    """`count` windows of `seq_len` tokens, spread evenly over the source of the modules the bases
    are not pretrained on (the fine-tuning half): the same text for every recipe of a tokenizer."""
    import torch

    from qlora_lab.data.stdlib_mc import heldout_source_texts

    text = "\n\n".join(heldout_source_texts())
    span = 8 * seq_len  # characters: byte-level BPE on code keeps well over one token per 8 of them
    windows = []
    for start in range(0, len(text) - span, (len(text) - span) // count)[:count]:
        ids = tokenizer(text[start : start + span], add_special_tokens=False)["input_ids"]
        if len(ids) < seq_len:
            raise RuntimeError(f"held-out window at character {start}: {len(ids)} tokens, fewer than {seq_len}")
        windows.append(ids[:seq_len])
    return torch.tensor(windows, dtype=torch.long)


def _mean_loss(model, objective, windows, batch_size: int) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        total = sum(objective(model, batch).item() * len(batch) for batch in windows.split(batch_size))
    model.train()
    return round(total / len(windows), 4)


def _pretrain(model, ids, pretrain: Pretrain, label: str, objective, after_step) -> None:
    """nanoGPT-style: random windows of the token stream, AdamW, warmup then cosine;
    `after_step(steps done)` after each step (saves the checkpoints)."""
    import torch
    from tqdm.auto import tqdm

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=pretrain.learning_rate, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, pretrain.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, warmup, pretrain.steps))
    windows = torch.Generator().manual_seed(pretrain.seed)
    progress = tqdm(range(pretrain.steps), desc=f"pretraining {label} base (cached after)", unit="step")
    for step in progress:
        starts = torch.randint(0, len(ids) - pretrain.seq_len - 1, (pretrain.batch_size,), generator=windows)
        batch = torch.stack([ids[s : s + pretrain.seq_len] for s in starts.tolist()])
        loss = objective(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        progress.set_postfix(loss=f"{loss.item():.3f}")
        after_step(step + 1)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_tokenizer(text: str, vocab_size: int, kind: str = "causal"):
    """A byte-level BPE (GPT-2 style) trained on `text`, wrapped as a transformers tokenizer.
    Encoder kinds add their family's special tokens around a text (T5: `a </s>`; RoBERTa:
    `<s> a </s></s> b </s>`, and a <mask> for pretraining); the causal one adds none (the run
    puts bos and eos where the paper's code did)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = KINDS[kind]
    specials = ["<pad>", "<s>", "</s>"] + (["<mask>"] if spec.mask_token else [])
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(_chunks(text), trainer=trainer)
    ids = {token: core.token_to_id(token) for token in specials}
    if spec.template is not None:
        core.post_processor = spec.template(ids)
    extra = {"mask_token": "<mask>"} if spec.mask_token else {}
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   **extra)


def _chunks(text: str, size: int = 1 << 16):
    for start in range(0, len(text), size):
        yield text[start : start + size]
