"""`python -m qlora_lab.train [-m] [overrides]`: compose, check, run, record.

The overrides are checked before anything runs (one line per problem, exit 2); each run
leaves `record.json`; the command exits 1 when any run of the launch failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def task(cfg: DictConfig) -> str:
    from qlora_lab.run import run_task

    runtime = HydraConfig.get()
    return run_task(cfg, Path(runtime.runtime.output_dir), list(runtime.overrides.task)).status


def main() -> None:
    from qlora_lab import sweep_summary
    from qlora_lab.preflight import check_command_line
    from qlora_lab.sweep_files import register_sweep_files

    register_sweep_files()
    problem = check_command_line(sys.argv[1:], CONF_DIR)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    task()
    sys.exit(sweep_summary.exit_code())


if __name__ == "__main__":
    main()
