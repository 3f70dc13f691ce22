"""A Hydra callback that holds each job to the CPU cores its launcher asked for.

submitit's local executor starts every job at once with no CPU limit, and torch then takes
every core in each of them: four jobs on two cores ran 20x slower than one. Inside each job
(any launcher that has `cpus_per_task`) torch gets that many threads: the callback notes the
number in the job's environment, and the process that runs the job (its own, or the warm
server's child that took it, qlora_lab.warm_start) applies it.
"""

from __future__ import annotations

import os
from typing import Any

from hydra.experimental.callback import Callback

THREADS_ENV = "QLORA_LAB_TORCH_THREADS"


class ThreadsPerJob(Callback):
    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        cpus = config.hydra.launcher.get("cpus_per_task") if "launcher" in config.hydra else None
        if cpus:
            os.environ[THREADS_ENV] = str(int(cpus))


def apply_job_threads() -> None:
    threads = os.environ.get(THREADS_ENV)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
