"""One run, top to bottom: data, model, train, evaluate, record.

Whatever happens, the run folder ends with a record: `ok`, or `failed` with the error in one
line (the traceback beside it in `traceback.txt`), and everything measured up to the failure.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from qlora_lab.cache import file_lock
from qlora_lab.config import ConfigError, RunConfig, run_config
from qlora_lab.memory import peak_gpu_mb, peak_rss_mb, reset_peak_gpu, reset_peak_rss
from qlora_lab.records import Record, environment, run_id, utc_now, write_record

log = logging.getLogger("qlora_lab")


@dataclass
class Outcome:
    """What one run returns: its record, and whether that record was already in the folder (an
    ok record of this very config, reused as it is)."""

    record: Record
    reused: bool = False


def run_task(cfg, run_dir: Path, overrides: list[str]) -> Outcome:
    """A composed DictConfig -> a record; a bad config leaves a failed record too."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        config = run_config(cfg)
    except ConfigError as err:
        record = Record(run_id="invalid", error=str(err), overrides=overrides, started_at=utc_now(),
                        finished_at=utc_now())
        write_record(run_dir, record)
        log.error("run %s failed: %s", run_dir, err)
        return Outcome(record)
    return run(config, run_dir, overrides)


def run(config: RunConfig, run_dir: Path, overrides: list[str]) -> Outcome:
    """Train, evaluate, record; a folder that already holds an ok record of this very config
    is reused as it is (a relaunched sweep redoes only failed and unfinished runs)."""
    config = with_native_compute(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(run_dir / ".lock"):  # two launches of one sweep at once: the second waits, then reuses
        done = _reusable(run_dir, run_id(config.to_dict()))
        if done is not None:
            log.info("run %s: reusing its ok record (run_id %s)", run_dir, done.run_id)
            return Outcome(done, reused=True)
        return Outcome(_run(config, run_dir, overrides))


def with_native_compute(config: RunConfig) -> RunConfig:
    """`dtype.compute_dtype=auto` resolved here, so the record and run_id name what ran."""
    import dataclasses

    from qlora_lab.model.dtypes import native_compute_dtype

    if config.dtype.compute_dtype != "auto":
        return config
    return dataclasses.replace(config, dtype=dataclasses.replace(config.dtype, compute_dtype=native_compute_dtype()))


def _reusable(run_dir: Path, wanted: str) -> Record | None:
    from qlora_lab.records import RECORD_NAME, RecordError, read_record

    try:
        record = read_record(run_dir / RECORD_NAME)
    except (OSError, ValueError, RecordError):
        return None
    return record if record.status == "ok" and record.run_id == wanted else None


_RUNS_IN_PROCESS = {"n": 0}  # runs this process has started (an in-process sweep runs many)


def _run(config: RunConfig, run_dir: Path, overrides: list[str]) -> Record:
    _RUNS_IN_PROCESS["n"] += 1
    _first_sigint_only()
    (run_dir / "traceback.txt").unlink(missing_ok=True)  # a rerun's folder holds only its own failure
    record = Record(run_id=run_id(config.to_dict()), overrides=overrides, config=config.to_dict(),
                    started_at=utc_now())
    start = time.perf_counter()
    reset_peak_rss()
    reset_peak_gpu()
    try:
        _train_and_evaluate(config, run_dir, record, start)
        record.status = "ok"
    except Exception as err:  # the record says what failed; the sweep goes on
        record.error = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        (run_dir / "traceback.txt").write_text(traceback.format_exc())
        log.error("run %s failed: %s", run_dir, record.error)
    except KeyboardInterrupt as err:  # Ctrl-C: the record says where; the launch stops (exit 130)
        record.error = str(err) if str(err).startswith("interrupted") else "interrupted (SIGINT) at step 0"
        log.error("run %s: %s", run_dir, record.error)
        raise
    finally:
        record.timing["wall_s"] = round(time.perf_counter() - start, 3)
        record.memory.update(peak_rss_mb=round(peak_rss_mb(), 1), peak_gpu_mb=peak_gpu_mb())
        record.finished_at = utc_now()
        write_record(run_dir, record)
        _finish_wandb()
    return record


def _first_sigint_only() -> None:
    """Ctrl-C raises KeyboardInterrupt once; later SIGINTs (a second Ctrl-C, a launcher
    forwarding the first to its job's run) are ignored, so they cannot cut the record short."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupt)


def _train_and_evaluate(config: RunConfig, run_dir: Path, record: Record, start: float) -> None:
    import torch

    from qlora_lab.data.load import load_splits
    from qlora_lab.model.build import adapter_dir, build_model, full_model_dir

    record.env = environment("cuda:" + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
    record.env["warm_start"] = _RUNS_IN_PROCESS["n"] > 1  # libraries imported by an earlier run of this process
    splits = load_splits(config.dataset)  # bad data fails here, before any model is loaded
    record.data = {"name": config.dataset.name, "fingerprint": splits.fingerprint,
                   "n_train": len(splits.train), "n_eval": len(splits.eval), "eval_split": splits.eval_split}
    prompts = None
    if config.eval.prompts:  # a bad prompts file or an unreachable set fails here, before any model is loaded
        from qlora_lab.evaluate.prompt_sets import load_prompts

        prompts = load_prompts(config.eval.prompts)
    if config.eval.lm_eval.tasks:  # a misspelt task fails here, before any training
        from qlora_lab.evaluate.zero_shot import task_manager

        task_manager(config.eval.lm_eval.tasks, config.eval.lm_eval.include_path)
    tc = config.train
    load_start = time.perf_counter()
    built = build_model(config.model, config.dtype, config.lora, seed=tc.seed,
                        gradient_checkpointing=tc.gradient_checkpointing, num_labels=_num_labels(config))
    record.timing["load_s"] = round(time.perf_counter() - load_start, 3)  # a first-ever build included
    record.model = vars(built.info).copy()
    encode = _encoder(config, built.tokenizer)
    ppl = config.eval.ppl
    if ppl.before_training and (ppl.path or ppl.hub_id):  # the quantized base, before any adapter update
        from qlora_lab.model.quantize import compute_autocast

        with compute_autocast(config.dtype.compute_dtype, next(built.model.parameters()).device.type):
            corpus = _corpus_ppl(built, config.eval)
        record.metrics.update(base_ppl=corpus["ppl"], base_ppl_tokens=corpus["ppl_tokens"])
    if tc.max_steps > 0:
        _train(config, built, encode(splits.train), run_dir, record, start)
        built.model.save_pretrained(adapter_dir(run_dir) if config.lora.enabled else full_model_dir(run_dir))
    eval_start = time.perf_counter()
    _evaluate(config, built, encode, splits.eval, run_dir, record, prompts)
    record.timing["eval_s"] = round(time.perf_counter() - eval_start, 3)


def _num_labels(config: RunConfig) -> int | None:
    from qlora_lab.data.glue import num_labels

    return num_labels(config.dataset.task) if config.model.kind == "classifier" else None


def _encoder(config: RunConfig, tokenizer):
    """pairs -> token examples, as the model kind reads them."""
    from qlora_lab.data import tokens

    tc = config.train
    if config.model.kind == "seq2seq":
        return lambda pairs: tokens.encode_seq2seq(pairs, tokenizer, tc.source_max_len, tc.target_max_len)
    if config.model.kind == "classifier":
        from qlora_lab.data.glue import GLUE_TASKS

        labels = GLUE_TASKS[config.dataset.task].labels
        return lambda pairs: tokens.encode_classes(pairs, tokenizer, labels, tc.source_max_len)
    return lambda pairs: tokens.encode_pairs(pairs, tokenizer, tc.source_max_len, tc.target_max_len,
                                             tc.train_on_source)


def _train(config: RunConfig, built, examples: list[dict], run_dir: Path, record: Record, start: float) -> None:
    from qlora_lab.fit import fit, window_mean

    run_name = ",".join(record.overrides) or "defaults"
    if config.train.report_to == "wandb":
        _start_wandb(run_dir, run_name, record)
    fit_start = time.perf_counter()
    result = fit(built.model, built.tokenizer, examples, config.train, config.dtype.compute_dtype, run_dir,
                 run_name=run_name)
    record.metrics["train_loss_first"] = window_mean(result.step_losses, "first")
    record.metrics["train_loss_last"] = window_mean(result.step_losses, "last")
    record.metrics["train_steps"] = len(result.step_losses)
    record.memory["peak_tensor_mb"] = result.peak_tensor_mb
    record.memory["estimate"] = _memory_estimate(config)
    record.env["optimizer"] = result.optimizer
    first_step_s = None if result.first_step_s is None else fit_start - start + result.first_step_s
    # the process's start-up counts for its first run only; a later run of an in-process sweep
    # counts from its own start (else the fifth run reports four runs' worth of "start-up")
    to_first_step = result.process_to_first_step_s if _RUNS_IN_PROCESS["n"] <= 1 else first_step_s
    record.timing.update(train_s=round(result.train_s, 3), peak_measure_s=round(result.measure_s, 3),
                         tokens=result.tokens, resumed_from_step=result.resumed_from_step,
                         tokens_per_s=round(result.tokens / result.train_s, 1),  # this process's tokens and time
                         first_step_s=None if first_step_s is None else round(first_step_s, 3),
                         process_to_first_step_s=None if to_first_step is None else round(to_first_step, 3))
    bad = [i + 1 for i, loss in enumerate(result.step_losses) if not math.isfinite(loss)]
    if bad:
        raise FloatingPointError(f"training loss is not finite from step {bad[0]}")


def _memory_estimate(config: RunConfig) -> dict | None:
    """The planner's estimate of this run's training peak, for comparison with the measured."""
    from qlora_lab.memory_estimate import estimate_memory

    try:
        return estimate_memory(config, config.dtype.compute_dtype).to_dict()
    except ValueError:  # a model without `arch` shapes, or a family the estimate does not know
        return None


def _evaluate(config: RunConfig, built, encode, eval_pairs, run_dir: Path, record: Record,
              prompts: list[dict] | None) -> None:
    from qlora_lab.evaluate.loss import heldout_loss
    from qlora_lab.evaluate.rouge import generate_answers, rouge_l
    from qlora_lab.model.quantize import compute_autocast

    ec, tc = config.eval, config.train
    device = next(built.model.parameters()).device.type
    answer = lambda pairs, ids: generate_answers(built.model, built.tokenizer, pairs, ec.max_new_tokens,
                                                 tc.source_max_len, ids=ids, sampling=ec.sampling, seed=tc.seed)
    if config.model.kind == "classifier":
        with compute_autocast(config.dtype.compute_dtype, device):
            record.metrics.update(_classification(built, encode(eval_pairs), config))
        return
    with compute_autocast(config.dtype.compute_dtype, device):
        if ec.loss:
            loss, ppl = heldout_loss(built.model, encode(eval_pairs), built.tokenizer.pad_token_id, ec.batch_size)
            record.metrics.update(eval_loss=loss, ppl=ppl, ppl_on="heldout")
        if ec.lm_eval.tasks:
            record.metrics.update(_zero_shot(built, ec.lm_eval, tc.seed))
        if (ec.ppl.path or ec.ppl.hub_id) and not ec.ppl.before_training:
            record.metrics.update(_corpus_ppl(built, ec))
        if ec.mmlu.path:
            record.metrics.update(_mmlu(built, ec.mmlu))
        heldout = answer(eval_pairs[: ec.n_generate], [f"heldout-{i}" for i in range(min(ec.n_generate, len(eval_pairs)))])
        prompted = []
        if prompts:
            prompted = answer([(ec.prompt_template.format(prompt=r["prompt"]), r.get("reference")) for r in prompts],
                              [r["id"] for r in prompts])
            prompted = [{**row, "prompt": r["prompt"]} for row, r in zip(prompted, prompts)]  # the question as asked
    rows = [{**r, "set": "heldout"} for r in heldout] + [{**r, "set": "prompts"} for r in prompted]
    if rows:
        with open(run_dir / "generations.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    if heldout:
        record.metrics["rougeL"] = rouge_l(heldout)


def _corpus_ppl(built, ec) -> dict:
    from qlora_lab.evaluate.perplexity import corpus_perplexity, corpus_texts

    texts = corpus_texts(ec.ppl.path, ec.ppl.hub_id, ec.ppl.hub_config, ec.ppl.text_field)
    ppl, tokens = corpus_perplexity(built.model, built.tokenizer, texts, ec.ppl.seq_len, ec.ppl.max_tokens,
                                    ec.batch_size)
    return {"ppl": ppl, "ppl_on": "corpus", "ppl_tokens": tokens}


def _classification(built, examples: list[dict], config: RunConfig) -> dict:
    from qlora_lab.evaluate.classification import glue_metrics, predict

    predictions, labels, loss = predict(built.model, examples, built.tokenizer.pad_token_id, config.eval.batch_size)
    return {"eval_loss": loss, **glue_metrics(config.dataset.task, predictions, labels), "n_scored": len(labels)}


def _zero_shot(built, cfg, seed: int) -> dict:
    from qlora_lab.evaluate.zero_shot import zero_shot

    result = zero_shot(built.model, built.tokenizer, cfg.tasks, cfg.include_path, cfg.num_fewshot, cfg.limit,
                       cfg.batch_size, seed)
    return {"zero_shot": result.accuracy, "zero_shot_acc_norm": result.accuracy_norm,
            "zero_shot_n": result.n_questions, "zero_shot_mean": result.mean}


def _mmlu(built, cfg) -> dict:
    from qlora_lab.evaluate import mmlu

    subjects = mmlu.load(cfg.path, cfg.hub_id, cfg.split)
    result = mmlu.evaluate_mmlu(built.model, built.tokenizer, subjects, cfg.split, cfg.shots, cfg.batch_size)
    return {"mmlu_acc": result.accuracy, "mmlu_acc_by_subject": result.by_subject, "mmlu_split": result.split,
            "mmlu_shots": result.shots, "mmlu_n_questions": result.n_questions}


def _start_wandb(run_dir: Path, run_name: str, record: Record) -> None:
    """One wandb run per run folder, offline unless WANDB_MODE says otherwise.

    Opened here rather than by the Trainer's callback: wandb reads WANDB_DIR once per process,
    so in an in-process sweep every later run would log into the first run's folder.
    """
    import wandb

    wandb.init(dir=str(run_dir), project=os.environ.get("WANDB_PROJECT", "qlora-lab"), name=run_name,
               config={**record.config, "run_id": record.run_id}, mode=os.environ.get("WANDB_MODE", "offline"),
               reinit="finish_previous",
               settings=wandb.Settings(quiet=True))  # its history block stays in the run's files, not the console


def _finish_wandb() -> None:
    """Trainer's wandb callback opens a run and leaves it open; the next run must get its own."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
