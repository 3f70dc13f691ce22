"""hydra-submitit-launcher's SLURM launcher, asking each job for what its own model needs.

The plugin resolves the launcher config once per sweep, so a sweep over model sizes would ask
every job for the first size's GPUs and time. These subclasses resolve the launcher config
per job (its `${model.resources.*}` interpolations see the job's own model; composed once per
distinct set of the overrides that can touch them, not once per job) and submit one job array
per distinct set of resources, split where the cluster's MaxArraySize or MaxJobCount would make
sbatch refuse it; submitting, checkpointing (requeue on preemption or timeout) and waiting stay
the plugin's and submitit's.

Hydra instantiates a launcher only from a class it registered under `hydra_plugins.*`, and its
scan cannot see a package an editable install maps there; `register()` adds ours to its
registry under PLUGIN_PREFIX (the classes keep this module's name, so jobs unpickle them).
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
from functools import lru_cache
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



# Config groups packaged under their own name: their overrides cannot reach `model.resources` or
# `hydra.launcher`, so jobs that differ only in them share one composition of the launcher config.
OWN_PACKAGE_GROUPS = ("dtype", "lora", "train", "eval", "dataset")


def resource_key(overrides: Sequence[str]) -> tuple[str, ...]:
    """The overrides that can change a job's launcher values (model, global groups, hydra.*)."""
    def group(override: str) -> str:
        return override.lstrip("+~").split("=", 1)[0].split(".", 1)[0].split("/", 1)[0]

    return tuple(o for o in overrides if group(o) not in OWN_PACKAGE_GROUPS)


def resources_per_job(launcher, job_overrides: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    """Each job's launcher values for PER_JOB_KEYS, resolved in that job's own config; composed
    once per distinct resource_key (a 320-job study over 8 models composes 8 times, not 320)."""
    resolved: dict[tuple[str, ...], dict[str, Any]] = {}
    wanted = []
    for overrides in job_overrides:
        key = resource_key(overrides)
        if key not in resolved:
            cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
            node = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
            resolved[key] = {k: node.get(k) for k in PER_JOB_KEYS if k in node}
        wanted.append(resolved[key])
    return wanted


LOST_AFTER_S = 60.0  # a job neither queued nor in the accounting for this long is taken as cancelled


class LostJobError(RuntimeError):
    """A job the scheduler no longer knows, with no result: cancelled before it ever started."""


def wait_for_jobs(jobs: dict[int, Any], queued, poll_s: float = 1.0,
                  lost_after_s: float = LOST_AFTER_S) -> dict[int, LostJobError]:
    """Until every job is done (submitit's states, polled in one batch) or lost. An array task
    cancelled while pending leaves no line in Slurm 22.05's accounting, so submitit would wait for
    it forever, reporting it UNKNOWN, or PENDING where its watcher saw it queued before (the last
    state it read stays); one in either state for `lost_after_s` and not in the queue is lost
    instead (what a relaunch redoes). The queue is asked again at most once per `lost_after_s` a job."""
    waiting, unknown_since, lost = dict(jobs), {}, {}
    while waiting:
        for idx, job in list(waiting.items()):
            if job.done():
                del waiting[idx]
            elif job.state not in ("UNKNOWN", "PENDING"):
                unknown_since.pop(idx, None)
            elif time.monotonic() - unknown_since.setdefault(idx, time.monotonic()) > lost_after_s:
                if queued(job.job_id):  # still queued: look again after another lost_after_s
                    unknown_since[idx] = time.monotonic()
                    continue
                lost[idx] = LostJobError(f"job {job.job_id} left the queue without a result or an accounting "
                                         f"record (cancelled before it started)")
                log.error("\t%s", lost[idx])
                del waiting[idx]
        if waiting:
            time.sleep(poll_s)
    return lost


@lru_cache(maxsize=1)
def cluster_limits() -> tuple[int, int]:
    """(MaxArraySize, MaxJobCount) of the cluster `scontrol show config` reports; Slurm's
    defaults (1001, 10000) where it cannot be asked."""
    try:
        shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        shown = ""
    value = lambda name, default: int(m.group(1)) if (m := re.search(rf"^{name}\s*=\s*(\d+)", shown, re.M)) else default
    return value("MaxArraySize", 1001), value("MaxJobCount", 10000)


def chunks(members: list[int], max_array_size: int, max_job_count: int) -> list[list[int]]:
    """Arrays sbatch accepts: indices 0..n-1 with n <= MaxArraySize (index < MaxArraySize) and no
    more jobs in one array than the cluster may hold at once."""
    size = max(1, min(max_array_size, max_job_count))
    return [members[i : i + size] for i in range(0, len(members), size)]


def queued_jobs() -> int:
    """Jobs (array tasks counted one by one) this user has pending or running."""
    out = subprocess.run(["squeue", "-h", "-r", "--me", "-o", "%i"], capture_output=True, text=True, timeout=60)
    return len(out.stdout.split()) if out.returncode == 0 else 0


def wait_for_room(jobs: int, max_job_count: int, poll_s: float = 5.0) -> None:
    """Before an array of `jobs`: wait until the cluster's MaxJobCount leaves room for it."""
    while queued_jobs() + jobs > max_job_count:
        log.info("\twaiting: %d job(s) queued, MaxJobCount %d", queued_jobs(), max_job_count)
        time.sleep(poll_s)


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
        arrays, started = 0, time.perf_counter()
        max_array, max_jobs = self._limits()
        state = Singleton.get_state()
        for key, members in groups.items():
            executor = self._executor(dict(key))
            parts = chunks(members, max_array, max_jobs)
            log.info("\tresources %s: %d job(s) in %d array(s)", dict(key), len(members), len(parts))
            for part in parts:
                job_params = []
                for idx in part:
                    num = initial_job_idx + idx
                    log.debug(f"\t#{num} : {' '.join(filter_overrides(job_overrides[idx]))}")
                    job_params.append((list(job_overrides[idx]), "hydra.sweep.dir", num, f"job_id_for_{num}", state))
                self._before_submit(len(part), max_jobs)
                for idx, job in zip(part, executor.map_array(self, *zip(*job_params))):
                    jobs[idx] = job
                arrays += 1
        log.info("submitted %d job(s) in %d array(s) in %.1f s; waiting for them", len(jobs), arrays,
                 time.perf_counter() - started)
        lost = wait_for_jobs(jobs, self._queued)
        returns, error = [], None
        for idx in range(len(per_job)):  # a job that broke (no result) does not stop the wait for the others
            if idx in lost:
                error = error or lost[idx]
                continue
            try:
                returns.append(jobs[idx].results()[0])
            except Exception as err:  # submitit's: the job died without a result
                error = error or err
        if error is not None:
            raise error
        return returns

    def _queued(self, job_id: str) -> bool:
        return True  # the local executor loses no job

    def _limits(self) -> tuple[int, int]:
        return 1 << 30, 1 << 30  # no scheduler limits (the local executor)

    def _before_submit(self, jobs: int, max_job_count: int) -> None:
        pass

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
    """`hydra/launcher=slurm`: submitit_slurm, resources from each job's model config, arrays
    within the cluster's MaxArraySize and MaxJobCount."""

    def _limits(self) -> tuple[int, int]:
        return cluster_limits()

    def _before_submit(self, jobs: int, max_job_count: int) -> None:
        wait_for_room(jobs, max_job_count)

    def _queued(self, job_id: str) -> bool:
        out = subprocess.run(["squeue", "-h", "-r", "-j", job_id, "-o", "%i"], capture_output=True, text=True,
                             timeout=60)
        return out.returncode == 0 and bool(out.stdout.strip())


PLUGIN_PREFIX = "hydra_plugins.qlora_lab."  # the `_target_` prefix in conf/hydra/launcher/*.yaml


def register() -> None:
    """Make `hydra/launcher=local|slurm` instantiable in this process (before Hydra runs)."""
    from hydra.core.plugins import Plugins

    from qlora_lab.launch.local import LocalPool

    registry = Plugins.instance().class_name_to_class
    for launcher in (ResourceAwareSlurmLauncher, LocalPool):
        registry[PLUGIN_PREFIX + launcher.__name__] = launcher
