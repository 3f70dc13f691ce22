"""hydra-submitit-launcher's launchers, asking each job for what its own model needs.

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
import os
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
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


def core_waves(cpus_per_job: list[int], cores: int) -> list[list[int]]:
    """Consecutive jobs packed into waves whose cores add up to at most `cores` (a job that
    asks for more goes alone)."""
    waves: list[list[int]] = []
    used = cores
    for idx, cpus in enumerate(cpus_per_job):
        if used + cpus > cores:
            waves.append([])
            used = 0
        waves[-1].append(idx)
        used += cpus
    return waves


class _PerJobResources:
    """`launch` of BaseSubmititLauncher, with one executor per distinct job resources."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and len(job_overrides) > 0
        per_job = resources_per_job(self, job_overrides)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")

        self._before_submit()
        results: list[JobReturn] = []
        broken: Exception | None = None
        for wave in self._waves(per_job):  # a job that broke (no result) does not stop the next waves
            returns, error = self._submit_and_wait(job_overrides, per_job, wave, initial_job_idx)
            results += returns
            broken = broken or error
        if broken is not None:
            raise broken
        return results

    def _waves(self, per_job: list[dict[str, Any]]) -> list[list[int]]:
        """Which jobs go out together: a cluster's scheduler queues them all at once."""
        return [list(range(len(per_job)))]

    def _submit_and_wait(self, job_overrides: Sequence[Sequence[str]], per_job: list[dict[str, Any]],
                         wave: list[int], initial_job_idx: int) -> tuple[list[JobReturn], Exception | None]:
        groups: dict[tuple, list[int]] = {}
        for idx in wave:
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
        for idx in wave:  # every job of the wave ends before the next wave starts
            try:
                returns.append(jobs[idx].results()[0])
            except Exception as err:  # submitit's: the job died without a result
                error = error or err
        return returns, error

    def _before_submit(self) -> None:
        """Called once the jobs' resources are known, just before they are submitted."""

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


class ResourceAwareLocalLauncher(_PerJobResources, LocalLauncher):
    """`hydra/launcher=local`: submitit_local, resources from each job's model config; the
    jobs' runs fork from one warm server that imported the libraries once (qlora_lab.warm_start)."""

    _warm = None

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from qlora_lab.warm_start import shared_server

        self._warm = shared_server()  # its imports overlap the composing of each job's resources
        return super().launch(job_overrides, initial_job_idx)

    def _before_submit(self) -> None:
        if self._warm is not None:
            self._warm.ready()  # no job waits on the imports inside its own time limit

    def _waves(self, per_job: list[dict[str, Any]]) -> list[list[int]]:
        """submitit's local executor starts whatever it is given at once: give it as many jobs as
        the machine's cores hold (each asks for `cpus_per_task`), and the next ones when they end."""
        return core_waves([int(r.get("cpus_per_task") or 1) for r in per_job], len(os.sched_getaffinity(0)))

    def _executor(self, resources: dict[str, Any]):
        """submitit's local controller (one per job) shares the launch's terminal: on Ctrl-C it
        prints a traceback of its own wait loop, one per job, interleaved. Its stderr goes to a
        file in the submitit folder instead (the jobs' own output is in their log files anyway)."""
        import shlex

        executor = super()._executor(resources)
        folder = Path(str(self.params["submitit_folder"]).replace("%j", "job")).parent
        folder.mkdir(parents=True, exist_ok=True)
        executor.update_parameters(local_setup=[f"exec 2>>{shlex.quote(str(folder / 'controllers.err'))}"])
        return executor

    def __getstate__(self) -> dict:
        """Each job gets this launcher pickled: without the launch's server process."""
        return {key: value for key, value in self.__dict__.items() if key != "_warm"}


PLUGIN_PREFIX = "hydra_plugins.qlora_lab."  # the `_target_` prefix in conf/hydra/launcher/*.yaml


def register() -> None:
    """Make `hydra/launcher=local|slurm` instantiable in this process (before Hydra runs)."""
    from hydra.core.plugins import Plugins

    registry = Plugins.instance().class_name_to_class
    for launcher in (ResourceAwareSlurmLauncher, ResourceAwareLocalLauncher):
        registry[PLUGIN_PREFIX + launcher.__name__] = launcher
