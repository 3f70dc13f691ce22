"""A Hydra callback that holds a cluster job to the CPU cores its launcher asked for.

torch takes every core it sees, and a SLURM node without cgroups shows a job all of them: four
jobs on two cores ran 20x slower than one. In the job's own process, before its run, torch gets
`cpus_per_task` threads (launchers that have the key; the local pool sets its workers' threads
itself). A rehearsal (`train.rehearsal=true`) never runs torch: it is not imported for one (a
second of each job).
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback


class ThreadsPerJob(Callback):
    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        cpus = config.hydra.launcher.get("cpus_per_task") if "launcher" in config.hydra else None
        if cpus and not config.get("train", {}).get("rehearsal", False):
            import torch

            torch.set_num_threads(int(cpus))
