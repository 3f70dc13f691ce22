"""`python -m qlora_lab.plan [+sweep=NAME | --studies] [overrides]` (`qlora-plan`): what a sweep will ask for, before launch.

Prints each run of the sweep (its overrides), the GPUs and hours its model's resource hints ask
for, and its estimated peak memory against what its job gets (qlora_lab.memory_estimate),
flagging runs that will not fit. The last line is `N runs, H GPU-hours`. Nothing is launched.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class PlannedRun:
    """One run of a sweep, as its job will ask for it."""

    overrides: list[str]  # the sweep overrides that make this run
    gpus: int  # accelerators the job asks for
    hours: float  # wall-clock hours expected (the model's hint)
    estimate_mb: float | None  # estimated peak memory of training; None: the model has no shape
    budget_mb: float  # what the job gets: its GPUs' memory (device_map=auto spreads the layers),
    # or a CPU job's host memory
    device: str  # "GPU" or "CPU"

    @property
    def gpu_hours(self) -> float:
        return self.gpus * self.hours

    @property
    def fits(self) -> bool | None:
        return None if self.estimate_mb is None else self.estimate_mb <= self.budget_mb


def plan(overrides: list[str], conf_dir: Path) -> list[PlannedRun]:
    """The planned runs of a command line (without `-m`)."""
    from hydra import compose, initialize_config_dir

    from qlora_lab.config import run_config
    from qlora_lab.sweep.compose import CachedComposer, sweep_grid
    from qlora_lab.memory_estimate import estimate_memory
    from qlora_lab.model.dtypes import native_compute_dtype

    runs = []
    grid = sweep_grid(overrides, conf_dir)
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        composer = CachedComposer(conf_dir, compose)
        for run_overrides in grid:
            config = run_config(composer(run_overrides))
            hints = config.model.resources
            compute = config.dtype.compute_dtype
            if compute == "auto":  # the job's machine decides: GPUs of a cluster compute in bf16
                compute = "bf16" if hints.gpus > 0 else native_compute_dtype()
            try:
                estimate = estimate_memory(config, compute).total_mb
            except ValueError:
                estimate = None
            on_gpu = hints.gpus > 0
            runs.append(PlannedRun(
                overrides=[o for o in run_overrides if not o.startswith(("hydra", "+sweep", "sweep"))],
                gpus=hints.gpus, hours=hints.hours, estimate_mb=estimate,
                budget_mb=(hints.gpus * hints.gpu_mem_gb if on_gpu else hints.mem_gb) * 1024,
                device=f"GPU{'s' if hints.gpus > 1 else ''}" if on_gpu else "CPU"))
    return runs


def render(runs: list[PlannedRun]) -> str:
    """The plan as text: the overrides every run shares, one line per run with its own, the
    runs that will not fit, and the total last."""
    shared = [o for o in runs[0].overrides if all(o in run.overrides for run in runs)] if runs else []
    lines = [f"every run: {' '.join(shared)}"] if shared and len(runs) > 1 else []
    for index, run in enumerate(runs):
        own = [o for o in run.overrides if o not in shared] if len(runs) > 1 else run.overrides
        memory = "est. n/a (no model.arch)" if run.estimate_mb is None else \
            f"est. {run.estimate_mb / 1024:.2f} GB of {run.budget_mb / 1024:g} GB {run.device}"
        flag = "  WILL NOT FIT" if run.fits is False else ""
        lines.append(f"#{index:<4d} {' '.join(own) or '(defaults)'} | {run.gpus} GPU x {run.hours:g} h"
                     f" | {memory}{flag}")
    misfits = [f"#{i}" for i, run in enumerate(runs) if run.fits is False]
    if misfits:
        lines.append(f"{len(misfits)} of {len(runs)} runs will not fit the memory their job asks for: "
                     f"{', '.join(misfits[:20])}{' ...' if len(misfits) > 20 else ''}")
    lines.append(f"{len(runs)} runs, {sum(run.gpu_hours for run in runs):.1f} GPU-hours")
    return "\n".join(lines)


def main() -> None:
    """`plan [+sweep=NAME] [overrides]`, or `plan --studies [overrides]`: every paper study's
    totals, then the grand total on the last line."""
    from qlora_lab.sweep.compose import shared_config_files
    from qlora_lab.sweep.files import register_sweep_files

    argv = [arg for arg in sys.argv[1:] if arg not in ("-m", "--multirun")]
    if {"-h", "--help"} & set(argv):
        print("usage: qlora-plan [+sweep=NAME] [overrides]   the runs of a sweep, their GPU-hours and memory fit\n"
              "       qlora-plan --studies [overrides]      every paper study's totals\n"
              "(also python -m qlora_lab.plan); launches nothing")
        return
    register_sweep_files()
    with shared_config_files():
        _plan_main(argv)


def _plan_main(argv: list[str]) -> None:
    from qlora_lab.sweep import CONF_DIR
    from qlora_lab.sweep.preflight import check_command_line

    if "--studies" not in argv:
        print(render(plan(_checked(argv, CONF_DIR, check_command_line), CONF_DIR)))
        return
    _plan_studies([arg for arg in argv if arg != "--studies"])


def _plan_studies(rest: list[str]) -> None:
    """Every paper study's totals, the studies planned side by side in forked processes (one per
    core: composing is pure Python), printed in order."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    from qlora_lab.sweep.files import paper_studies

    studies = paper_studies()
    workers = max(1, min(len(studies), os.cpu_count() or 1))
    totals = []
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        for name, result in zip(studies, pool.map(_study_totals, studies, [rest] * len(studies))):
            if isinstance(result, str):
                print(f"error: {result}", file=sys.stderr)
                sys.exit(2)
            runs, hours, misfits = result
            totals.append((runs, hours))
            print(f"{name:<16} {runs:>5} runs {hours:>9.1f} GPU-hours"
                  + (f"  ({misfits} will not fit)" if misfits else ""), flush=True)
    print(f"{sum(n for n, _ in totals)} runs, {sum(h for _, h in totals):.1f} GPU-hours")


def _study_totals(name: str, rest: list[str]) -> tuple[int, float, int] | str:
    """(runs, GPU-hours, runs that will not fit) of one study, or the problem with its command line."""
    from qlora_lab.sweep import CONF_DIR
    from qlora_lab.sweep.compose import shared_config_files
    from qlora_lab.sweep.preflight import check_command_line

    argv = [f"+sweep={name}", *rest]
    with shared_config_files():
        problem = check_command_line(argv, CONF_DIR)
        if problem:
            return problem
        runs = plan(argv, CONF_DIR)
    return len(runs), sum(run.gpu_hours for run in runs), sum(run.fits is False for run in runs)


def _checked(argv: list[str], conf_dir: Path, check) -> list[str]:
    problem = check(argv, conf_dir)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    return argv


if __name__ == "__main__":
    main()
