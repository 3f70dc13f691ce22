"""hydra-submitit-launcher's SLURM launcher, asking each job for what its own model needs.

The plugin resolves the launcher config once per sweep, so a sweep over model sizes would ask
every job for the first size's GPUs and time. These subclasses resolve the launcher config
per job (its `${model.resources.*}` interpolations see the job's own model) and submit one job
array per distinct set of resources; submitting, checkpointing (requeue on preemption or
timeout) and waiting stay the plugin's and submitit's.

Hydra instantiates a launcher only from a class it registered under `hydra_plugins.*`, and its
scan cannot see a package an editable install maps there; `register()` adds ours to its
registry under PLUGIN_PREFIX (the classes keep this module's name, so jobs unpickle them).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

# Launcher keys that may differ from job to job (they interpolate the model's resource hints).
PER_JOB_KEYS = ("timeout_min", "cpus_per_task", "gpus_per_node", "mem_gb", "gres", "mem_per_gpu")



def resources_per_job(launcher, job_overrides: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    """Each job's launcher values for PER_JOB_KEYS, resolved in that job's own config."""
    wanted = []
    for overrides in job_overrides:
        cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        node = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
        wanted.append({key: node.get(key) for key in PER_JOB_KEYS if key in node})
    return wanted


class _PerJobResources:
    """`launch` of BaseSubmititLauncher, with one executor per distinct job resources."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and len(job_overrides) > 0
        per_job = resources_per_job(self, job_overrides)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")

        groups: dict[tuple, list[int]] = {}
        for idx in range(len(per_job)):
            groups.setdefault(tuple(sorted(per_job[idx].items())), []).append(idx)
        jobs: dict[int, Any] = {}
        for key, members in groups.items():
            executor = self._executor(dict(key))
            log.info("\tresources %s: %d job(s)", dict(key), len(members))
            job_params = []
            for idx in members:
                num = initial_job_idx + idx
                log.info(f"\t#{num} : {' '.join(filter_overrides(job_overrides[idx]))}")
                job_params.append((list(job_overrides[idx]), "hydra.sweep.dir", num, f"job_id_for_{num}",
                                   Singleton.get_state()))
            for idx, job in zip(members, executor.map_array(self, *zip(*job_params))):
                jobs[idx] = job
        returns, error = [], None
        for idx in range(len(per_job)):  # a job that broke (no result) does not stop the wait for the others
            try:
                returns.append(jobs[idx].results()[0])
            except Exception as err:  # submitit's: the job died without a result
                error = error or err
        if error is not None:
            raise error
        return returns

    def _executor(self, resources: dict[str, Any]):
        import submitit

        params = {**self.params, **resources}
        init_keys = {"submitit_folder", "max_num_timeout"}
        init = {"folder": params["submitit_folder"]}
        if "max_num_timeout" in params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{key if key in base else f"{self._EXECUTOR}_{key}": value
                                      for key, value in params.items() if key not in init_keys})
        return executor


class ResourceAwareSlurmLauncher(_PerJobResources, SlurmLauncher):
    """`hydra/launcher=slurm`: submitit_slurm, resources from each job's model config."""


PLUGIN_PREFIX = "hydra_plugins.qlora_lab."  # the `_target_` prefix in conf/hydra/launcher/*.yaml


def register() -> None:
    """Make `hydra/launcher=local|slurm` instantiable in this process (before Hydra runs)."""
    from hydra.core.plugins import Plugins

    from qlora_lab.launch.local import LocalPool

    registry = Plugins.instance().class_name_to_class
    for launcher in (ResourceAwareSlurmLauncher, LocalPool):
        registry[PLUGIN_PREFIX + launcher.__name__] = launcher
