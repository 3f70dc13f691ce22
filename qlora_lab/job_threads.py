"""A Hydra callback that holds each job to the CPU cores its launcher asked for.

submitit's local executor starts every job at once with no CPU limit, and torch then takes
every core in each of them: four jobs on two cores ran 20x slower than one. Inside each job
(any launcher that has `cpus_per_task`) torch gets that many threads.
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback


class ThreadsPerJob(Callback):
    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        cpus = config.hydra.launcher.get("cpus_per_task") if "launcher" in config.hydra else None
        if cpus:
            import torch

            torch.set_num_threads(int(cpus))
