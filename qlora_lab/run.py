"""One run, top to bottom: data, model, train, evaluate, record.

Whatever happens, the run folder ends with a record: `ok`, or `failed` with the error in one
line (the traceback beside it in `traceback.txt`), and everything measured up to the failure.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from qlora_lab.cache import file_lock
from qlora_lab.config import ConfigError, RunConfig, run_config
from qlora_lab.measure import peak_gpu_mb, peak_rss_mb, reset_peak_gpu, reset_peak_rss
from qlora_lab.records import Record, environment, run_id, utc_now, write_record
from qlora_lab.stop_signals import Stopped, catch_stop_signals, signal_seen

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
    if not config.train.rehearsal:  # a rehearsal loads no framework: `auto` stays as written
        config = with_native_compute(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(run_dir / ".lock"):  # two launches of one sweep at once: the second waits, then reuses
        done = _reusable(run_dir, run_id(config.to_dict()))
        if done is not None:
            log.info("run %s: reusing its ok record (run_id %s)", run_dir, done.run_id)
            return Outcome(done, reused=True)
        return Outcome(rehearse(config, run_dir, overrides) if config.train.rehearsal else
                       _run(config, run_dir, overrides))


def rehearse(config: RunConfig, run_dir: Path, overrides: list[str]) -> Record:
    """A cluster rehearsal: the config as a real run composes and validates it, the resources the
    job got against what its model asks for, an `ok` record with no metrics (failed where the
    job got fewer GPUs than it asked for, naming both). No model, data or framework is loaded."""
    from qlora_lab.resources_seen import seen

    started_at, start = utc_now(), time.perf_counter()
    got, asked = seen(), config.model.resources
    status, error = "ok", None
    if got.gpus_seen < asked.gpus:
        status, error = "failed", (f"got {got.gpus_seen} GPU(s) (CUDA_VISIBLE_DEVICES={got.gpu_ids}); "
                                   f"model.resources.gpus asks for {asked.gpus}")
        log.error("run %s failed: %s", run_dir, error)
    record = Record(run_id=run_id(config.to_dict()), status=status, error=error, overrides=overrides,
                    config=config.to_dict(), started_at=started_at, finished_at=utc_now(), rehearsal=True,
                    resources=vars(got), memory={"estimate": _rehearsal_estimate(config)},
                    timing={"wall_s": round(time.perf_counter() - start, 3)})
    write_record(run_dir, record)
    return record


def with_native_compute(config: RunConfig) -> RunConfig:
    """`dtype.compute_dtype=auto` resolved here, so the record and run_id name what ran."""
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


@dataclass
class Measured:
    """The record's measured sections, each step's returned values added as they come: a failure
    keeps what the steps before it measured."""

    env: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)

    def add(self, **sections: dict) -> None:
        for name, values in sections.items():
            getattr(self, name).update(values)


def _run(config: RunConfig, run_dir: Path, overrides: list[str]) -> Record:
    _RUNS_IN_PROCESS["n"] += 1
    catch_stop_signals()
    (run_dir / "traceback.txt").unlink(missing_ok=True)  # a rerun's folder holds only its own failure
    started_at, start, measured = utc_now(), time.perf_counter(), Measured()
    status, error = "failed", None
    reset_peak_rss()
    reset_peak_gpu()
    try:
        _train_and_evaluate(config, run_dir, overrides, start, measured)
        status = "ok"
    except Exception as err:  # the record says what failed; the sweep goes on
        error = _error_line(err)
        (run_dir / "traceback.txt").write_text(traceback.format_exc())
        log.error("run %s failed: %s", run_dir, error)
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: the record says where; the launch stops (130, 143)
        error = str(err) if isinstance(err, Stopped) else str(Stopped(signal_seen(), 0))
        log.error("run %s: %s", run_dir, error)
        raise
    finally:
        measured.add(timing={"wall_s": round(time.perf_counter() - start, 3)},
                     memory={"peak_rss_mb": round(peak_rss_mb(), 1), "peak_gpu_mb": peak_gpu_mb()})
        record = Record(run_id=run_id(config.to_dict()), status=status, error=error, overrides=overrides,
                        config=config.to_dict(), started_at=started_at, finished_at=utc_now(),
                        **dataclasses.asdict(measured))  # the record, built here and only here
        write_record(run_dir, record)
        _finish_wandb(record)
    return record


def _error_line(err: Exception) -> str:
    """The record's one line: the exception's type and first line; a divergence's own words."""
    from qlora_lab.fit import Diverged

    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return first if isinstance(err, Diverged) else f"{type(err).__name__}: {first}"


def _rehearsal_estimate(config: RunConfig) -> dict | None:
    """The planner's memory estimate at the compute dtype a GPU job would use for `auto` (bf16)."""
    from qlora_lab.memory_estimate import estimate_memory

    compute = "bf16" if config.dtype.compute_dtype == "auto" else config.dtype.compute_dtype
    try:
        return estimate_memory(config, compute).to_dict()
    except ValueError:
        return None


def _train_and_evaluate(config: RunConfig, run_dir: Path, overrides: list[str], start: float,
                        measured: Measured) -> None:
    """Data, model, (the quantized base's measures), training, evaluation: each step returns what
    it measured, added to `measured` at once."""
    import torch

    from qlora_lab.data.glue import num_labels
    from qlora_lab.data.load import load_splits
    from qlora_lab.evaluate.registry import EvalInputs, enabled_evaluations
    from qlora_lab.model.build import adapter_dir, build_model, full_model_dir
    from qlora_lab.model.kinds import KINDS

    measured.add(env={**environment("cuda:" + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"),
                      "warm_start": _RUNS_IN_PROCESS["n"] > 1})  # libraries imported by an earlier run of this process
    splits = load_splits(config.dataset)  # bad data fails here, before any model is loaded
    measured.add(data={"name": config.dataset.name, "fingerprint": splits.fingerprint, "n_train": len(splits.train),
                       "n_eval": len(splits.eval), "eval_split": splits.eval_split})
    evaluations = enabled_evaluations(config)
    prepared = {e.name: e.prepare(config) for e in evaluations if e.prepare}  # bad inputs fail before any model
    tc = config.train
    load_start = time.perf_counter()
    classes = _classes(config)
    built = build_model(config.model, config.dtype, config.lora, seed=tc.seed,
                        gradient_checkpointing=tc.gradient_checkpointing,
                        num_labels=None if classes is None else num_labels(config.dataset.task))
    measured.add(timing={"load_s": round(time.perf_counter() - load_start, 3)},  # a first-ever build included
                 model=vars(built.info))
    encode = KINDS[config.model.kind].encode(tc, built.tokenizer, classes)  # pairs -> the kind's examples
    inputs = lambda evaluation: EvalInputs(built.model, built.tokenizer, config, splits.eval, encode, run_dir,
                                           prepared.get(evaluation.name))
    before = [e for e in evaluations if e.before_training(config)]
    measured.add(metrics=_measure(config, built, before, inputs))  # the quantized base, before any adapter update
    if tc.max_steps > 0:
        trained = _train(config, built, encode(splits.train), run_dir, overrides, start)
        measured.add(**trained.sections)
        if trained.bad_step is not None:
            from qlora_lab.fit import Diverged

            raise Diverged(f"diverged: non-finite loss at step {trained.bad_step}")
        built.model.save_pretrained(adapter_dir(run_dir) if config.lora.enabled else full_model_dir(run_dir))
    eval_start = time.perf_counter()
    measured.add(metrics=_measure(config, built, [e for e in evaluations if e not in before], inputs))
    measured.add(timing={"eval_s": round(time.perf_counter() - eval_start, 3)})


def _measure(config: RunConfig, built, evaluations: list, inputs) -> dict:
    """The evaluations' metrics, in their order, under the compute dtype's autocast."""
    from qlora_lab.model.quantize import compute_autocast

    metrics: dict = {}
    if not evaluations:
        return metrics
    with compute_autocast(config.dtype.compute_dtype, next(built.model.parameters()).device.type):
        for evaluation in evaluations:
            metrics.update(evaluation.measure(inputs(evaluation)))
    return metrics


def _classes(config: RunConfig) -> list | None:
    """A classifier's class labels (its dataset's task; empty for a regression task); None for
    the other kinds."""
    from qlora_lab.data.glue import GLUE_TASKS
    from qlora_lab.model.kinds import KINDS

    return GLUE_TASKS[config.dataset.task].labels if KINDS[config.model.kind].classifies else None


@dataclass
class Trained:
    sections: dict  # record section -> what training measured (metrics, timing, memory, env)
    bad_step: int | None  # the first step whose loss is not finite


def _train(config: RunConfig, built, examples: list[dict], run_dir: Path, overrides: list[str],
           start: float) -> Trained:
    from qlora_lab.fit import fit, window_mean

    from qlora_lab.records import run_label

    run_name = run_label(config.to_dict())
    if config.train.report_to == "wandb":
        _start_wandb(run_dir, overrides, config)
    fit_start = time.perf_counter()
    result = fit(built.model, built.tokenizer, examples, config.train, config.dtype.compute_dtype, run_dir,
                 run_name=run_name)
    first_step_s = None if result.first_step_s is None else fit_start - start + result.first_step_s
    # the process's start-up counts for its first run only; a later run of an in-process sweep
    # counts from its own start (else the fifth run reports four runs' worth of "start-up")
    to_first_step = result.process_to_first_step_s if _RUNS_IN_PROCESS["n"] <= 1 else first_step_s
    bad = [i + 1 for i, loss in enumerate(result.step_losses) if not math.isfinite(loss)]
    return Trained(sections={
        "metrics": {"train_loss_first": window_mean(result.step_losses, "first"),
                    "train_loss_last": window_mean(result.step_losses, "last"),
                    "train_steps": len(result.step_losses)},
        "memory": {"peak_tensor_mb": result.peak_tensor_mb, "estimate": _memory_estimate(config)},
        "env": {"optimizer": result.optimizer},
        "timing": {"train_s": round(result.train_s, 3), "peak_measure_s": round(result.measure_s, 3),
                   "tokens": result.tokens, "resumed_from_step": result.resumed_from_step,
                   "tokens_per_s": round(result.tokens / result.train_s, 1),  # this process's tokens and time
                   "first_step_s": None if first_step_s is None else round(first_step_s, 3),
                   "process_to_first_step_s": None if to_first_step is None else round(to_first_step, 3)},
    }, bad_step=bad[0] if bad else None)


def _memory_estimate(config: RunConfig) -> dict | None:
    """The planner's estimate of this run's training peak, for comparison with the measured."""
    from qlora_lab.memory_estimate import estimate_memory

    try:
        return estimate_memory(config, config.dtype.compute_dtype).to_dict()
    except ValueError:  # a model without `arch` shapes, or a family the estimate does not know
        return None


def _start_wandb(run_dir: Path, overrides: list[str], config: RunConfig) -> None:
    """One wandb run per run folder, offline unless WANDB_MODE says otherwise: named as a person
    names the run, grouped by its sweep folder, tagged with its overrides.

    Opened here rather than by the Trainer's callback: wandb reads WANDB_DIR once per process,
    so in an in-process sweep every later run would log into the first run's folder.
    """
    import wandb

    from qlora_lab.records import run_label

    as_dict = config.to_dict()
    wandb.init(dir=str(run_dir), project=os.environ.get("WANDB_PROJECT", "qlora-lab"), name=run_label(as_dict),
               group=run_dir.parent.name, job_type="eval" if config.train.max_steps == 0 else "finetune",
               tags=wandb_tags(overrides), config={**as_dict, "run_id": run_id(as_dict)},
               mode=os.environ.get("WANDB_MODE", "offline"), reinit="finish_previous",
               settings=wandb.Settings(quiet=True))  # its history block stays in the run's files, not the console


def wandb_tags(overrides: list[str]) -> list[str]:
    """The run's overrides as tags (`dtype=nf4`); a path as its file name (no machine's absolute
    paths on a dashboard), at most wandb's 64 characters."""
    tags = []
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key.startswith("hydra"):
            continue
        if "/" in value:
            value = Path(value).name
        tags.append(f"{key}={value}"[:64])
    return tags


def record_summary(record: Record) -> dict:
    """Every number the record holds at the end, under its record name: the metrics, the stored
    bits, the memory peaks, the speed; with the run's status."""
    numbers = {**record.metrics, **record.model, **record.memory, **record.timing}
    summary = {k: v for k, v in numbers.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    return {**summary, "status": record.status, **({"error": record.error} if record.error else {})}


def _finish_wandb(record: Record) -> None:
    """The record's numbers into the run's summary, then the run closed (the Trainer's wandb
    callback leaves it open; the next run must get its own)."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.run.summary.update(record_summary(record))
        wandb.finish()
