"""Train the adapters with transformers' Trainer, used as it is: its arguments, resume, the loss
history. What the run measures while training lives in qlora_lab.measure."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from qlora_lab.config import TrainConfig
from qlora_lab.data.tokens import PadCollator
from qlora_lab.stop_signals import STOP_SEEN, Stopped, signal_seen


class Diverged(RuntimeError):
    """A non-finite loss or gradient norm: the run fails at that step instead of training on
    NaN weights and recording `ok` (the record's error is this message as it is)."""


def training_guards():
    """Trainer callbacks: stop at the step's end once a stop signal was seen (the handler's own
    KeyboardInterrupt can land where a library swallows it, and the run would train on), and
    fail at the first logged step whose loss or gradient norm is not finite."""
    import math

    from transformers import TrainerCallback

    class Guards(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if STOP_SEEN.is_set():
                raise KeyboardInterrupt

        def on_log(self, args, state, control, logs=None, **kwargs):
            for key, name in (("loss", "loss"), ("grad_norm", "gradient norm")):
                value = (logs or {}).get(key)
                if isinstance(value, (int, float)) and not math.isfinite(value):
                    raise Diverged(f"diverged: non-finite {name} at step {state.global_step}")

    return Guards()


@dataclass
class FitResult:
    step_losses: list[float]  # one per optimizer step, from the whole log history (resume-safe)
    train_s: float  # wall time inside Trainer.train (this process's share of a resumed run)
    tokens: int  # non-padding input tokens seen by this process (a resumed run's earlier ones not counted)
    first_step_s: float | None  # fit() call to the end of the first step
    process_to_first_step_s: float | None  # this process's start to the end of the first step
    resumed_from_step: int | None = None  # the checkpoint's step a resumed run started from
    optimizer: dict | None = None  # what really ran: class and whether its state was paged
    peak_tensor_mb: float | None = None  # peak of torch's tensor allocations while training
    measure_s: float = 0.0  # of the wall time, spent opening and reading the CPU peak's profiler (not in train_s)


UNUSED_SAVE_STEPS = 500  # save_steps=0 means no checkpoints (save_strategy "no"); TrainingArguments still wants a positive value


def training_arguments(cfg: TrainConfig, compute_dtype: str, out_dir: Path, run_name: str):
    from transformers import TrainingArguments

    # transformers' `constant` schedule ignores warmup (the paper's code asked for both and got
    # none); with a warmup ratio we ask for what was meant.
    scheduler = cfg.lr_scheduler
    if scheduler == "constant" and cfg.warmup_ratio > 0:
        scheduler = "constant_with_warmup"
    return TrainingArguments(
        output_dir=str(out_dir),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a value below 1 is a ratio of max_steps
        max_grad_norm=cfg.max_grad_norm,
        weight_decay=cfg.weight_decay,
        optim=cfg.optimizer,
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        bf16=compute_dtype == "bf16",
        fp16=compute_dtype == "fp16",
        use_cpu=not torch.cuda.is_available(),
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or UNUSED_SAVE_STEPS,
        logging_steps=1,
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN (the filter logged 0.0), and the run fails
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        run_name=run_name,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=False,
    )


def fit(model, tokenizer, examples: list[dict], cfg: TrainConfig, compute_dtype: str, run_dir: Path,
        run_name: str) -> FitResult:
    """max_steps optimizer steps; resumes from the newest checkpoint in the run folder."""
    from transformers import Trainer

    from qlora_lab.measure import training_callbacks

    out_dir = run_dir / "checkpoints"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = training_arguments(cfg, compute_dtype, out_dir, run_name)
    first_step, peak = training_callbacks(cfg.cpu_tensor_peak)
    trainer = Trainer(model=model, args=args, train_dataset=examples,
                      data_collator=PadCollator(tokenizer.pad_token_id),
                      callbacks=[first_step, peak, training_guards()])
    resume = resume_point(out_dir, cfg.max_steps)
    tokens_before = _tokens_seen(resume)
    start = time.perf_counter()  # train_s: inside Trainer.train only, as a plain script times it
    try:
        trainer.train(resume_from_checkpoint=resume)
    except KeyboardInterrupt:
        raise Stopped(signal_seen(), trainer.state.global_step) from None
    finally:
        peak.close()
    train_s = time.perf_counter() - start - peak.measure_s
    # accelerate leaves its mixed-precision autocast wrapped around model.forward; evaluation
    # must see the same model an eval-only run or a reloaded adapter sees.
    trainer.accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry and "step" in entry]
    return FitResult(step_losses=losses, train_s=train_s,
                     tokens=int(trainer.state.num_input_tokens_seen) - tokens_before,
                     first_step_s=first_step.since_call, process_to_first_step_s=first_step.since_process,
                     resumed_from_step=_checkpoint_step(resume), optimizer=optimizer_used(trainer, cfg.optimizer),
                     peak_tensor_mb=peak.peak_mb(), measure_s=peak.measure_s)


def optimizer_used(trainer, asked: str) -> dict:
    """bitsandbytes' paged optimizers page nothing on the CPU (they fall back to plain state),
    so the record says what ran, not only what was asked."""
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate's wrapper
    paged = bool(getattr(optimizer, "is_paged", False)) and torch.cuda.is_available()
    return {"asked": asked, "ran": f"{type(optimizer).__module__.split('.')[0]}.{type(optimizer).__name__}",
            "paged": paged}


def _checkpoint_step(checkpoint: str | None) -> int | None:
    return None if checkpoint is None else int(Path(checkpoint).name.split("-")[1])


def _tokens_seen(checkpoint: str | None) -> int:
    """Tokens a resumed run had trained on before this process (the checkpoint's trainer state)."""
    import json

    if checkpoint is None:
        return 0
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    return int(state.get("num_input_tokens_seen") or 0)


def resume_point(out_dir: Path, max_steps: int) -> str | None:
    """The newest complete checkpoint before the last step.

    Complete: the Trainer writes `trainer_state.json` last, so a checkpoint cut short by a kill
    is passed over. One at max_steps (the Trainer saves the final step) is not resumed from:
    transformers then trains a step past max_steps, so such a run (finished training, failed
    later) trains again from the start, which repeats exactly."""
    steps = sorted(int(p.name.split("-")[1]) for p in out_dir.glob("checkpoint-*")
                   if p.name.split("-")[1].isdigit() and (p / "trainer_state.json").is_file())
    usable = [s for s in steps if s < max_steps]
    return str(out_dir / f"checkpoint-{usable[-1]}") if usable else None


def window_mean(losses: list[float], which: str) -> float | None:
    """Mean loss over the first or last tenth of the steps (at least one step)."""
    if not losses:
        return None
    n = max(1, len(losses) // 10)
    part = losses[:n] if which == "first" else losses[-n:]
    return sum(part) / len(part)
