"""The run record: one `record.json` per run folder, the contract between runs and analysis.

Torch-free on purpose: the analysis package imports this to read records on a laptop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
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
    schema: int = SCHEMA

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False, default=str) + "\n"


# Keys added to a group after records were written, with the default that computes what runs
# without them computed: at that default they are left out of run_id, so earlier records keep
# their id (and a relaunch still reuses them); any other value changes the id.
ADDED_WITH_DEFAULTS = {"lora": {"init": "gaussian", "loftq_iter": 1, "pissa_niter": 0, "dora": False, "rslora": False}}


def run_id(config: dict) -> str:
    """Stable id of what a run computes: the same config always gets the same id. What a
    search sweeper reads off the run (eval.objective) changes nothing computed, so is left out."""
    config = {**config, "eval": {k: v for k, v in config.get("eval", {}).items() if k != "objective"}} \
        if isinstance(config.get("eval"), dict) else config
    for group, defaults in ADDED_WITH_DEFAULTS.items():
        if isinstance(config.get(group), dict):
            config = {**config, group: {k: v for k, v in config[group].items()
                                        if k not in defaults or v != defaults[k]}}
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


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
