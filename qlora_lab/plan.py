"""`python -m qlora_lab.plan [+sweep=NAME] [overrides]`: what a sweep will ask for, before launch.

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
    budget_mb: float  # what the job gets: one GPU's memory, or the host memory of a CPU job
    device: str  # "GPU" or "CPU"

    @property
    def gpu_hours(self) -> float:
        return self.gpus * self.hours

    @property
    def fits(self) -> bool | None:
        return None if self.estimate_mb is None else self.estimate_mb <= self.budget_mb


def sweep_grid(overrides: list[str], conf_dir: Path) -> list[list[str]]:
    """Every run's overrides, expanded as Hydra's basic sweeper expands them (the command
    line's axes and the sweep file's `hydra.sweeper.params`, the command line winning)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from qlora_lab.preflight import sweep_file_axes

    parsed = OverridesParser.create().parse_overrides(overrides) + sweep_file_axes(overrides, conf_dir)
    batches = BasicSweeper.split_arguments(parsed, None)
    return [list(run) for batch in batches for run in batch]


def plan(overrides: list[str], conf_dir: Path) -> list[PlannedRun]:
    """The planned runs of a command line (without `-m`)."""
    from hydra import compose, initialize_config_dir

    from qlora_lab.config import run_config
    from qlora_lab.memory_estimate import estimate_memory
    from qlora_lab.model.dtypes import native_compute_dtype

    runs = []
    grid = sweep_grid(overrides, conf_dir)
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        for run_overrides in grid:
            config = run_config(compose(config_name="config", overrides=run_overrides))
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
                budget_mb=(hints.gpu_mem_gb if on_gpu else hints.mem_gb) * 1024, device="GPU" if on_gpu else "CPU"))
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
    from qlora_lab.preflight import check_command_line
    from qlora_lab.sweep_files import register_sweep_files
    from qlora_lab.train import CONF_DIR

    argv = [arg for arg in sys.argv[1:] if arg not in ("-m", "--multirun")]
    register_sweep_files()
    problem = check_command_line(argv, CONF_DIR)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    print(render(plan(argv, CONF_DIR)))


if __name__ == "__main__":
    main()
