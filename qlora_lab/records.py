"""The run record: one `record.json` per run folder, the contract between runs and analysis.

Torch-free on purpose: the analysis package imports this to read records on a laptop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import re
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from qlora_lab.cache import atomic_write_text

SCHEMA = 1
RECORD_NAME = "record.json"


@dataclass
class Record:
    """Field by field as ARCHITECTURE.md's 'The run record' lists them."""

    run_id: str  # hash of the resolved run config (no output paths, no launcher settings)
    status: str = "failed"  # ok | failed: a record is failed until the run finished
    error: str | None = None  # one line when failed
    overrides: list[str] = field(default_factory=list)  # this run's command-line overrides
    config: dict = field(default_factory=dict)  # the resolved RunConfig
    model: dict = field(default_factory=dict)  # name, n_params, n_trainable, bits_per_param, ...
    data: dict = field(default_factory=dict)  # name, fingerprint, n_train, n_eval
    metrics: dict = field(default_factory=dict)  # train_loss_first/last, eval_loss, ppl, rougeL
    timing: dict = field(default_factory=dict)  # wall_s, train_s, tokens_per_s, ...
    memory: dict = field(default_factory=dict)  # peak_rss_mb, peak_gpu_mb, peak_tensor_mb (training), estimate
    env: dict = field(default_factory=dict)  # library versions, device, git sha
    started_at: str | None = None  # ISO-8601 UTC
    finished_at: str | None = None
    rehearsal: bool = False  # train.rehearsal: the job's config and resources proved, no model work, no metrics
    resources: dict = field(default_factory=dict)  # what the job was given: gpus_seen, cpus_seen, mem_gb_seen, ...
    not_finite: dict = field(default_factory=dict)  # a value written as null because it was NaN or infinite: path -> what
    schema: int = SCHEMA

    def to_json(self) -> str:
        """Strict JSON: a NaN or infinite number is written as null, and `not_finite` says which
        value it was (`{"metrics.eval_loss": "NaN"}`); strict parsers refuse NaN."""
        found: dict = {}
        data = _finite(dataclasses.asdict(self), "", found)
        data["not_finite"] = {**(self.not_finite or {}), **found}
        return json.dumps(data, indent=2, sort_keys=False, default=str, allow_nan=False) + "\n"


def _finite(value, path: str, found: dict):
    """The value with every non-finite float replaced by None, each one noted in `found`."""
    if isinstance(value, float) and not math.isfinite(value):
        found[path] = "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
        return None
    if isinstance(value, dict):
        return {k: _finite(v, f"{path}.{k}" if path else str(k), found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{path}[{i}]", found) for i, v in enumerate(value)]
    return value


# Keys added to a group after records were written, with the default that computes what runs
# without them computed: at that default they are left out of run_id, so earlier records keep
# their id (and a relaunch still reuses them); any other value changes the id.
ADDED_WITH_DEFAULTS = {"lora": {"init": "gaussian", "loftq_iter": 1, "pissa_niter": 0, "dora": False, "rslora": False},
                       "dtype": {"released": None}, "eval": {"fidelity_reference": None}}


def run_id(config: dict) -> str:
    """Stable id of what a run computes: the same config always gets the same id. What a
    search sweeper reads off the run (eval.objective) changes nothing computed, so is left out."""
    config = {**config, "eval": {k: v for k, v in config.get("eval", {}).items() if k != "objective"}} \
        if isinstance(config.get("eval"), dict) else config
    for group, defaults in ADDED_WITH_DEFAULTS.items():
        if isinstance(config.get(group), dict):
            config = {**config, group: {k: v for k, v in config[group].items()
                                        if k not in defaults or v != defaults[k]}}
    dtype = config.get("dtype")
    if isinstance(dtype, dict) and "scale" in dtype and dtype["scale"] in (None, _absmax_scale(dtype)):
        # dtype.scale came after double_quant: where it only restates it (fp32 / dq8), earlier ids hold
        config = {**config, "dtype": {k: v for k, v in dtype.items() if k != "scale"}}
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _absmax_scale(dtype: dict) -> str | None:
    """The scale format `double_quant` alone implies: dq8 or fp32 (None where it is unset)."""
    return {True: "dq8", False: "fp32"}.get(dtype.get("double_quant"))


def paper_name(dtype: str) -> str:
    """A data type's name as the paper writes it, by rule rather than a copied list: nf4 -> NF4,
    fp4_e3m0 -> FP4-E3M0, int4 -> Int4, bf16 -> BF16, int4_affine -> Int4-affine (a part without
    digits is a word, kept in lower case)."""
    if re.fullmatch(r"q\d_\w+", dtype):  # llama.cpp's names: Q4_0, Q4_K
        return dtype.upper()
    parts = [part if part.isalpha() and i else part.upper() for i, part in enumerate(dtype.split("_"))]
    label = "-".join(parts)
    return "Int" + label[3:] if label.startswith("INT") else label


def dtype_label(dtype: dict) -> str:
    """A data type as the tables name it: NF4+DQ, FP4, NVFP4; a scale format the data type does not
    store by default is named after it (`dtype=nf4 dtype.scale=e4m3`: NF4+E4M3)."""
    from qlora_lab.catalog import DTYPES

    name = str(dtype.get("name") or "?")
    label = paper_name(name) + ("+DQ" if dtype.get("double_quant") is True else "")
    scale, spec = dtype.get("scale"), DTYPES.get(name)
    if isinstance(scale, str) and scale not in ("fp32", "dq8") and (spec is None or scale != spec.scale):
        label += "+" + scale.upper()
    if dtype.get("released"):  # the weights as a release stored them, not quantized here
        label += " (released)"
    return label


def run_label(config: dict) -> str:
    """A run as a person names it on a dashboard: `NF4+DQ · all · r64 · seed 0`; an eval-only run
    of the quantized base `NF4+DQ · PTQ`; full fine-tuning `BF16 full · seed 0`."""
    dtype, lora, train = config.get("dtype", {}), config.get("lora", {}), config.get("train", {})
    label = dtype_label(dtype)
    if train.get("max_steps") == 0:
        return f"{label} · PTQ"
    if lora.get("enabled") is False:
        return f"{label} full · seed {train.get('seed')}"
    return f"{label} · {lora.get('targets', '?')} · r{lora.get('r', '?')} · seed {train.get('seed')}"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_record(run_dir: Path, record: Record) -> Path:
    """Atomic: a reader (or a relaunch) never sees half a record."""
    path = Path(run_dir) / RECORD_NAME
    atomic_write_text(path, record.to_json())
    return path


class RecordError(ValueError):
    """A record that cannot be read as this schema."""


def read_record(path: Path) -> Record:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("schema") != SCHEMA:
        raise RecordError(f"{path}: record schema {data.get('schema')!r} is not {SCHEMA}; "
                          f"read it with the qlora_lab version that wrote it")
    known = {f.name for f in dataclasses.fields(Record)}
    return Record(**{k: v for k, v in data.items() if k in known})


# What a result depends on beyond its config: a relaunch that reuses a record made with other
# versions says so, and a report that mixes them names which (`transformers 4.57.3: 3 runs`).
VERSION_KEYS = ("torch", "transformers", "peft", "bitsandbytes", "git_sha")


def versions(env: dict) -> dict:
    """The versions a record was made with, out of its `env` (None where it holds none)."""
    return {key: env.get(key) for key in VERSION_KEYS}


def environment(device: str) -> dict:
    """What produced the numbers: library versions, device, the code's git commit."""
    versions = {}
    for package in ("torch", "transformers", "peft", "bitsandbytes", "qlora-lab"):
        try:
            versions[package.replace("-", "_")] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package.replace("-", "_")] = None
    return {**versions, "python": platform.python_version(), "device": device, "git_sha": _git(["rev-parse", "HEAD"]),
            "git_dirty": _git_dirty()}


def _git(args: list[str]) -> str | None:
    """The code's git answer, None outside a checkout (an installed wheel) or without git."""
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip()


def _git_dirty() -> bool | None:
    """Uncommitted changes to tracked files: the sha alone would not say what ran."""
    status = _git(["status", "--porcelain", "--untracked-files=no"])
    return None if status is None else bool(status)
