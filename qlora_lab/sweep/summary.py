"""A Hydra callback that ends every launch with one line per run, read from the records.

It runs in the launching process for every launcher (in-process or submitit), so the summary
and the exit status come from what the runs wrote, never from launcher internals.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from qlora_lab.records import RECORD_NAME, Record, environment, read_record, versions

LAUNCH_ENV = "QLORA_LAB_LAUNCH"  # set by the launching process; every job's process inherits it
LAUNCH_STAMPS = ".launches"  # one line per launch that ran (or reused) a run folder

_launch = {"id": None, "failed": [], "folder": None, "multirun": False}


def _start_launch(folder: Path, multirun: bool) -> None:
    """A fresh launch id, inherited by every job (in process, a local worker or a cluster job)."""
    _launch.update(id=f"{time.time():.6f}-{os.getpid()}", failed=[], folder=folder, multirun=multirun)
    os.environ[LAUNCH_ENV] = _launch["id"]


class SweepSummary(Callback):
    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        """In the job's own process, before its run: stamp its folder with this launch, so the
        summary finds the runs of this launch among a shared sweep folder's (the run itself
        knows nothing of launches)."""
        _stamp(Path(config.hydra.runtime.output_dir), "started")

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        _start_launch(Path(config.hydra.run.dir), multirun=False)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        _start_launch(Path(config.hydra.sweep.dir), multirun=True)

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        _report([Path(config.hydra.runtime.output_dir)])

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        _report(_launched_run_dirs())


def stamp_reused(run_dir: Path) -> None:
    """The job found its folder's ok record and kept it (said by the entry's task, in the job)."""
    _stamp(run_dir, "reused")


def _stamp(run_dir: Path, what: str) -> None:
    """'<launch id> started|reused', appended: concurrent launches each keep their lines."""
    with open(run_dir / LAUNCH_STAMPS, "a", encoding="utf-8") as stamps:
        stamps.write(f"{os.environ.get(LAUNCH_ENV, '')} {what}\n")


def _launched_run_dirs() -> list[Path]:
    """The run folders this launch started or reused (their `.launches` stamps say so)."""
    folder = _launch["folder"]
    if folder is None:
        return []
    if not _launch["multirun"]:
        return [folder] if folder.is_dir() else []
    stamps = folder.glob(f"*/{LAUNCH_STAMPS}")
    return sorted((p.parent for p in stamps if _launch["id"] in p.read_text().split()), key=_job_order)


def report_interrupted(wait_s: float = 15.0) -> None:
    """After Ctrl-C: the summary of what ran, once the runs still writing their records (a local
    launcher's jobs get the same SIGINT) have done so or `wait_s` has passed."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(not (d / RECORD_NAME).exists() for d in _launched_run_dirs()):
        time.sleep(0.2)
    _report(_launched_run_dirs())


def _reused_here(run_dir: Path) -> bool:
    path = run_dir / LAUNCH_STAMPS
    return path.exists() and f"{_launch['id']} reused" in path.read_text().splitlines()


def exit_code() -> int:
    """1 when a run of the last launch in this process failed (or left no record), else 0."""
    return 1 if _launch["failed"] else 0


def _job_order(path: Path) -> tuple:
    return (0, int(path.name)) if path.name.isdigit() else (1, path.name)


def _report(run_dirs: list[Path]) -> None:
    records = [(d, read_record(d / RECORD_NAME) if (d / RECORD_NAME).exists() else None) for d in run_dirs]
    _launch["failed"] = [str(d) for d, r in records if r is None or r.status != "ok"]
    reused = {str(d) for d, _ in records if _reused_here(d)}
    now = versions(environment(device="")) if reused else {}
    other = {str(d) for d, r in records if str(d) in reused and r is not None and differs(versions(r.env), now)}
    lines = summary_lines(records, reused=reused, other_versions=other)
    if _launch["folder"] is not None:  # before the count line, which stays last
        lines.insert(-1, f"{'sweep' if _launch['multirun'] else 'run'} folder: {_launch['folder']}")
    for line in lines:
        print(line, flush=True)


def differs(recorded: dict, now: dict) -> bool:
    """A version the record names that is not this launch's. A record that names none (a
    rehearsal's, which loads no library) says nothing either way."""
    return any(value is not None and now.get(key) is not None and value != now[key] for key, value in recorded.items())


def _num(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_lines(records: list[tuple[Path, Record | None]], reused: set[str] = frozenset(),
                  other_versions: set[str] = frozenset()) -> list[str]:
    """A table a person reads and `awk` parses: one row per run, then failures in full. The count
    line says how many ok runs were reused, and how many of those were made with other versions
    of torch, transformers, peft, bitsandbytes or qlora-lab's commit than this launch runs."""
    header = ("run", "status", "loss_first", "loss_last", "eval_loss", "bits/param", "tokens/s", "overrides")
    rows = [header]
    for run_dir, rec in records:
        if rec is None:
            rows.append((run_dir.name, "missing", "-", "-", "-", "-", "-", "-"))
            continue
        m, t = rec.metrics, rec.timing
        rows.append((run_dir.name, rec.status, _num(m.get("train_loss_first"), 3), _num(m.get("train_loss_last"), 3),
                     _num(m.get("eval_loss"), 3), _num(rec.model.get("bits_per_param"), 3),
                     _num(t.get("tokens_per_s"), 0), " ".join(rec.overrides) or "(defaults)"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1] for row in rows]
    failed = [(d, r) for d, r in records if r is None or r.status != "ok"]
    for run_dir, rec in failed:
        lines.append(f"FAILED {run_dir}: {rec.error if rec else 'no record written'}")
    ok = len(records) - len(failed)
    reused_ok = {str(d) for d, r in records if r is not None and r.status == "ok" and str(d) in reused}
    n_other = len(reused_ok & set(other_versions))
    said = f" ({len(reused_ok)} reused{f', {n_other} made with other versions' if n_other else ''})" if reused_ok else ""
    lines.append(f"{len(records)} runs: {ok} ok{said}, {len(failed)} failed")
    return lines
