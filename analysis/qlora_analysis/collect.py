"""`collect(*dirs)`: one row per run, one column per swept axis and per metric.

Runs left out are never dropped silently: `frame.attrs["left_out"]` lists each failed,
unfinished or duplicate run folder with the reason.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd

from qlora_lab.records import RECORD_NAME, SCHEMA, paper_name, versions  # noqa: F401  (paper_name: re-exported)
from qlora_lab.records import dtype_label as record_dtype_label

# Axes every study slices by, as config paths (a group's name for a group); swept overrides
# add their own keys beside these.
STANDARD_AXES = ("model", "model.checkpoint", "dataset", "dataset.task", "dtype", "dtype.double_quant", "dtype.scale", "dtype.released", "dtype.backend",
                 "dtype.blocksize", "lora.targets", "lora.r", "lora.init", "lora.dora", "lora.rslora",
                 "train.learning_rate", "train.max_steps", "train.seed")
ADAPTER_KEYS = ("lora.init", "lora.dora", "lora.rslora")  # the adapter variant (records before them: plain LoRA)
# The metrics the tables read: a column each even where no run has one. Every other number a
# record's `metrics` holds (a new evaluation's) becomes a column too, read off the records.
METRICS = ("eval_loss", "ppl", "base_ppl", "rougeL", "mmlu_acc", "accuracy", "zero_shot_mean", "train_loss_first",
           "train_loss_last")
LEFT_OUT_COLUMNS = ["run_dir", "run_id", "reason"]
ASIDE_MIN = 1000  # records from which `collect` hands a third to its `aside` worker


class RecordSchemaError(ValueError):
    """A record written by another version of the record schema."""


class CorruptRecordError(RecordSchemaError):
    """A record.json that is not JSON (truncated by a full disk, edited by hand)."""


def collect(*dirs: str | Path, strict: bool = False, rehearsal: bool = False, scanned: Scan | None = None,
            aside=None) -> pd.DataFrame:
    """Every `record.json` under the folders -> a DataFrame of the ok runs, one per run_id.

    `attrs["left_out"]` (as a DataFrame: `left_out(frame)`): run_dir, run_id, reason of failed runs, unfinished run
    folders (a Hydra job folder without a record), corrupt records (unless `strict`: then they
    are refused), rehearsal records (unless `rehearsal`: then they are the rows) and duplicates
    (a run_id already counted). `scanned`: the folders' `scan`, where the caller walked them already;
    `aside`: an executor (concurrent.futures') that reads the last third of the records meanwhile."""
    rows, left_out, seen = [], [], {}
    scanned = scanned or scan(*dirs)
    paths = scanned.records
    half = len(paths) * 2 // 3 if aside is not None and len(paths) >= ASIDE_MIN else len(paths)  # the worker starts later
    later = aside.submit(examine, paths[half:], rehearsal) if half < len(paths) else None
    found = examine(paths[:half], rehearsal) + (later.result() if later is not None else [])
    for run_dir, run_id, reason, row in found:
        if reason is not None and reason.startswith("corrupt record: ") and strict:
            raise CorruptRecordError(f"{os.path.join(run_dir, RECORD_NAME)}: {reason.removeprefix('corrupt record: ')}")
        if reason is None and run_id in seen:
            reason = f"duplicate of {seen[run_id]} (same run_id)"
        if reason is not None:
            left_out.append({"run_dir": run_dir, "run_id": run_id, "reason": reason})
            continue
        seen[run_id] = run_dir
        rows.append(row)
    for run_dir in scanned.unfinished:
        left_out.append({"run_dir": run_dir, "run_id": None,
                         "reason": "unfinished: a job folder without record.json (running, or killed)"})
    axes = list(dict.fromkeys(a for row in rows for a in row.pop("_axes")))
    frame = pd.DataFrame(rows)
    frame.attrs["left_out"] = Kept(left_out)  # plain dicts: pandas compares attrs when it combines frames
    frame.attrs["axes"] = Kept(a for a in axes if a in frame)  # the columns a sweep chose (the rest are measured)
    return frame


def examine(paths: list[str], rehearsal: bool) -> list[tuple]:
    """(run_dir, run_id, why it is left out or None, its row or None) per record: what can be said
    of each record alone (duplicates need them all: `collect` finds them). A record of another
    schema raises RecordSchemaError."""
    found = []
    for path in paths:
        run_dir = os.path.dirname(path) or "."
        try:
            record = _read(path)
        except CorruptRecordError as err:
            found.append((run_dir, None, f"corrupt record: {err.reason}", None))
            continue
        run_id = record.get("run_id")
        if bool(record.get("rehearsal")) != rehearsal and record.get("status") == "ok":
            found.append((run_dir, run_id, "rehearsal: a cluster rehearsal's record, no model work (--rehearsal shows "
                                           "them)" if record.get("rehearsal") else
                          "not a rehearsal (--rehearsal shows only rehearsals)", None))
        elif record.get("status") != "ok":
            found.append((run_dir, run_id, f"failed: {record.get('error') or 'no error given'}", None))
        else:
            found.append((run_dir, record["run_id"], None, _row(record, run_dir)))
    return found


class Kept(tuple):
    """A frame's attrs value that pandas shares instead of deep-copying: it deep-copies attrs on
    every operation, which for 1,000 runs left out was a list of 1,000 dicts per column selected.
    Never modified after `collect`."""

    def __deepcopy__(self, memo):
        return self


def left_out(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs `collect` left out, with the reason: run_dir, run_id, reason."""
    return pd.DataFrame(runs.attrs.get("left_out", []), columns=LEFT_OUT_COLUMNS)


def read_judgments(*dirs: str | Path, scanned: Scan | None = None) -> pd.DataFrame:
    """Every `judgments.jsonl` under the folders, one row per judged pair and order."""
    rows = []
    for path in (scanned or scan(*dirs)).judgments:
        with open(path, encoding="utf-8") as handle:
            rows.extend({**json.loads(line), "sweep_dir": os.path.dirname(path)} for line in handle if line.strip())
    return pd.DataFrame(rows, columns=None if rows else ["prompt_id", "model_a", "model_b", "winner", "judge"])


@dataclass(frozen=True)
class Scan:
    """What one walk of the folders found: record.json files, Hydra job folders without one
    (`.hydra/` and `.launches` inside), and judgments.jsonl files; paths as strings."""

    records: list[str]
    unfinished: list[str]
    judgments: list[str]


def scan(*dirs: str | Path) -> Scan:
    """One walk per folder, shared by `collect` and `read_judgments`. A folder holding a record is
    a run's and is not entered (its checkpoints hold no records: one stat per run instead of a
    listing); nor are hidden folders (.hydra, .submitit, .git). Paths stay strings (a Path per
    run cost a second per 10,000); records come in path order, as a depth-first walk meets them."""
    records, unfinished, judgments = [], [], []
    for root in (str(Path(d)) for d in dirs):  # as Path spells it: `./sweep/` -> `sweep`
        if not os.path.exists(root):
            raise FileNotFoundError(f"{root}: no such folder")
        if os.path.isfile(root):
            records.append(root)
            continue
        found = []
        for folder, subdirs, files in os.walk(root):
            if "judgments.jsonl" in files:
                judgments.append(os.path.join(folder, "judgments.jsonl"))
            if RECORD_NAME in files:  # the root itself is a run folder
                found.append(os.path.join(folder, RECORD_NAME))
                subdirs[:] = []
                continue
            if ".hydra" in subdirs and ".launches" in files:
                unfinished.append(folder)
            entered = []
            for name in sorted(subdirs):
                inside = os.path.join(folder, name, RECORD_NAME)
                if name.startswith("."):
                    continue
                if os.path.isfile(inside):  # a run folder: its record, and nothing below it
                    found.append(inside)
                else:
                    entered.append(name)
            subdirs[:] = entered
        records += sorted(found, key=lambda path: path.split(os.sep))
    return Scan(records, unfinished, judgments)


def _read(path: str) -> dict:
    try:
        with open(path, "rb") as handle:
            record = json.loads(handle.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        reason = f"not JSON ({err.msg}, line {err.lineno})" if isinstance(err, json.JSONDecodeError) else "not UTF-8"
        error = CorruptRecordError(f"{path}: {reason}")
        error.reason = reason
        raise error from None
    if not isinstance(record, dict):
        error = CorruptRecordError(f"{path}: not a JSON object")
        error.reason = "not a JSON object"
        raise error
    schema = record.get("schema")
    if schema != SCHEMA:
        raise RecordSchemaError(f"{path}: record schema {schema!r}; this qlora_analysis reads schema {SCHEMA} "
                                f"(records from another qlora-lab version: use that version's analysis)")
    return record


def flat_config(node: dict, prefix: str = "", out: dict | None = None) -> dict:
    """Every config path's value, in one pass over the record's config (twenty lookups a run, path
    by path, were most of reading 10,000 records): a group's own name for a group (a section with a
    `name`: `dtype` -> `nf4`), a section without one as itself, a list joined by commas."""
    out = {} if out is None else out
    for key, value in node.items():
        path = prefix + str(key)
        if isinstance(value, dict):
            out[path] = value.get("name", value)
            flat_config(value, path + ".", out)
        else:
            out[path] = ",".join(map(str, value)) if isinstance(value, list) else value
    return out


def _or(value, fallback):
    return fallback if value is None else value


def _row(record: dict, run_dir: str) -> dict:
    config = record.get("config", {})
    given = dict(o.lstrip("+~").split("=", 1) for o in record.get("overrides", []) if "=" in o)
    given = {key: None if value == "null" else value for key, value in given.items()}
    axes = list(STANDARD_AXES) + [k for k in given if k not in STANDARD_AXES and not k.startswith(("hydra", "sweep"))]
    row = {"run_dir": run_dir, "run_id": record["run_id"], "_axes": axes}
    # a choice that is not itself in the config (a study's `+variant=...`) keeps its given value
    flat = flat_config(config)
    row.update({axis: _or(flat.get(axis), given.get(axis)) for axis in axes})
    row["model_kind"] = flat.get("model.kind") or "causal"
    metrics = record.get("metrics", {})
    row.update({name: metrics.get(name) for name in METRICS})
    row.update({name: value for name, value in metrics.items() if name not in row and _is_number(value)})
    model, timing, memory = record.get("model", {}), record.get("timing", {}), record.get("memory", {})
    row["n_params"] = model.get("n_params")
    row["bits_per_param"] = model.get("bits_per_param")
    row["total_bits"] = model.get("total_bits")  # every stored bit of the base (Figure 3's x-axis)
    for name in ("weight_sqnr_db", "weight_sqnr_min_db", "weight_kurtosis"):
        row[name] = model.get(name)
    interval = metrics.get("kl_to_base_ci")
    if isinstance(interval, list) and len(interval) == 2:
        row["kl_to_base_lo"], row["kl_to_base_hi"] = interval
    counts = metrics.get("zero_shot_n")
    if isinstance(counts, dict):
        row["zero_shot_questions"] = sum(counts.values())
    for name, value in record.get("resources", {}).items():  # a rehearsal's: what the job was given
        row[f"resources.{name}"] = value
    if record.get("rehearsal"):  # and what its model asked for
        for name in ("gpus", "cpus", "mem_gb"):
            row[f"resources.{name}_asked"] = flat.get(f"model.resources.{name}")
    for name, value in versions(record.get("env", {})).items():  # what the report checks for a mix
        row[f"env.{name}"] = value
    row["judged_as"] = ",".join(record.get("overrides", []))  # the name judging gives the run (no --label)
    row["train_s"] = timing.get("train_s")
    row["tokens_per_s"] = timing.get("tokens_per_s")
    row["peak_memory_mb"] = memory.get("peak_gpu_mb") or memory.get("peak_tensor_mb") or memory.get("peak_rss_mb")
    row["full_finetune"] = flat.get("lora.enabled") is False
    row["n_trainable"] = model.get("n_trainable")
    row["adapter"] = adapter_label(row)
    row["adapter_axis"] = any(key in given for key in ADAPTER_KEYS)  # a sweep that varies the adapter
    row["dtype_label"] = dtype_label(row)
    row["config"] = config_label(row)
    return row


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def config_label(row: dict) -> str:
    """A run's configuration as a person reads it: `NF4+DQ · all · r64` (seeds pooled); an
    eval-only run of the quantized base `NF4+DQ · PTQ`, with its blocksize where it is not the
    paper's 64 (`· b32`) and its pretraining checkpoint where one was chosen (`· step 200`)."""
    if row.get("full_finetune"):
        label = row["dtype_label"]  # every weight trained: no adapter targets or rank
    elif row.get("train.max_steps") == 0:
        label = f"{row['dtype_label']} · PTQ"
    else:
        label = f"{row['dtype_label']} · {row.get('lora.targets') or '?'} · r{row.get('lora.r') or '?'}"
    if row.get("adapter") not in (None, "LoRA") and not row.get("full_finetune"):
        label += f" · {row['adapter']}"
    if row.get("dtype.blocksize") not in (None, 64) and not _missing(row.get("dtype.blocksize")):
        label += f" · b{int(row['dtype.blocksize'])}"
    if row.get("model.checkpoint") is not None and not _missing(row.get("model.checkpoint")):
        label += f" · step {int(row['model.checkpoint'])}"
    return label


def adapter_label(row: dict) -> str:
    """The adapter variant as its papers name it: LoRA, LoftQ, PiSSA, with +DoRA / +rsLoRA."""
    label = {"loftq": "LoftQ", "pissa": "PiSSA"}.get(str(row.get("lora.init")), "LoRA")
    if row.get("lora.dora") is True:
        label += "+DoRA"
    if row.get("lora.rslora") is True:
        label += "+rsLoRA"
    return label


def version_mix(runs: pd.DataFrame) -> list[str]:
    """One line per version key on which the counted runs differ, each version named as the
    records hold it with its count of runs: `transformers 4.57.3 (3 runs), transformers 5.25.0 (7 runs)`."""
    lines = []
    for column in [c for c in runs.columns if c.startswith("env.")] if not runs.empty else []:
        counts = runs[column].fillna("unknown").astype(str).value_counts(sort=False).sort_index()
        if len(counts) > 1:
            name = "qlora-lab commit" if column == "env.git_sha" else column[len("env."):]
            lines.append(", ".join(f"{name} {value[:12] if column == 'env.git_sha' else value} "
                                   f"({n} run{'s' * (n != 1)})" for value, n in counts.items()))
    return lines


def plain_lora(runs):
    """The runs whose adapter is the paper's (plain LoRA, from a sweep that does not vary it), each
    measured against its own base: what the data-type and target tables compare, so an adapter study
    or the released-weights study (fidelity against a named original) never stands in for them."""
    if not runs.empty and "eval.fidelity_reference" in runs:
        runs = runs[runs["eval.fidelity_reference"].isna()]
    if runs.empty or "adapter" not in runs:
        return runs
    return runs[(runs["adapter"] == "LoRA") & ~runs["adapter_axis"].fillna(False).astype(bool)]


def _missing(value) -> bool:
    return isinstance(value, float) and value != value  # NaN


def dtype_label(row: dict) -> str:
    """The paper's names: NF4+DQ, FP4, Int4, BF16, ..."""
    return _dtype_label(row.get("dtype"), row.get("dtype.double_quant"), row.get("dtype.scale"),
                        row.get("dtype.released"), bool(row.get("full_finetune")))


@lru_cache(maxsize=1024)
def _dtype_label(name, double_quant, scale, released, full: bool) -> str:
    if full:
        return f"{paper_name(str(name or '?'))} full"  # Table 3's "BF16 full fine-tuning" row
    return record_dtype_label({"name": name, "double_quant": double_quant, "scale": scale, "released": released})
