"""`python -m qlora_lab.train [-m] [overrides]`: compose, check, run, record.

The overrides are checked before anything runs (one line per problem, exit 2); each run
leaves `record.json`; the command exits 1 when any run of the launch failed, 130 after Ctrl-C,
143 after SIGTERM.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from qlora_lab.sweep import CONF_DIR


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def task(cfg: DictConfig) -> float:
    """One run. Returns its `eval.objective` metric for search sweepers (hydra/sweeper=optuna);
    NaN for a failed run, which optuna records as a failed trial."""
    from qlora_lab.run import run_task
    from qlora_lab.sweep.summary import stamp_reused

    runtime = HydraConfig.get()
    outcome = run_task(cfg, Path(runtime.runtime.output_dir), list(runtime.overrides.task))
    if outcome.reused:
        stamp_reused(Path(runtime.runtime.output_dir))
    record = outcome.record
    value = record.metrics.get(cfg.eval.objective) if record.status == "ok" else None
    return float(value) if isinstance(value, (int, float)) else float("nan")


def main() -> None:
    from qlora_lab.launch.submitit_launchers import register
    from qlora_lab.sweep import summary as sweep_summary
    from qlora_lab.sweep.compose import batch_checked_once_per_composition, shared_config_files
    from qlora_lab.sweep.files import register_sweep_files
    from qlora_lab.sweep.preflight import check_command_line
    from qlora_lab.stop_signals import catch_stop_signals, exit_status, signal_seen

    catch_stop_signals()  # SIGTERM before or between runs: the summary and 143, as after Ctrl-C
    register_sweep_files()
    register()
    with shared_config_files():  # the check composes each distinct run once, from files parsed once
        problem = check_command_line(sys.argv[1:], CONF_DIR)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    try:
        with shared_config_files(), batch_checked_once_per_composition(CONF_DIR):
            task()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: each run's record says where it stopped; no traceback
        name = signal_seen()
        print(f"{'interrupted' if name == 'SIGINT' else 'terminated'} ({name}): the runs so far", file=sys.stderr,
              flush=True)
        sweep_summary.report_interrupted()
        sys.exit(exit_status())
    sys.exit(sweep_summary.exit_code())


if __name__ == "__main__":
    main()
