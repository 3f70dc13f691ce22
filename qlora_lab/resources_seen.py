"""What this process was given to run on: GPUs, CPUs and memory, as the job sees them.

A rehearsal run (`train.rehearsal=true`) records these and checks them against what its model
config asks for, so a sweep's resource requests are proved against the real scheduler before any
GPU-hour is spent. Each figure comes from what enforces it where something does (the device list
in CUDA_VISIBLE_DEVICES, the CPU affinity mask, the cgroup memory limit), else from the
scheduler's own statement of the allocation (SLURM_CPUS_PER_TASK, SLURM_MEM_PER_NODE): a cluster
without cgroups (this project's test cluster) enforces neither. The one module of the run side
that reads a scheduler's variables; torch-free, so a rehearsal loads no framework.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ResourcesSeen:
    """The record's `resources` section."""

    gpus_seen: int
    cpus_seen: int
    mem_gb_seen: float | None  # None: no limit anywhere (all of the machine)
    gpu_ids: str | None  # CUDA_VISIBLE_DEVICES as given
    cpus_from: str  # slurm (the allocation) | affinity (the mask)
    mem_from: str | None  # cgroup | slurm | None


def seen(environ: dict | None = None) -> ResourcesSeen:
    env = os.environ if environ is None else environ
    ids = env.get("CUDA_VISIBLE_DEVICES")
    gpus = len([i for i in ids.split(",") if i.strip()]) if ids is not None else _nvidia_devices()
    slurm_cpus = env.get("SLURM_CPUS_PER_TASK")
    cpus, cpus_from = (int(slurm_cpus), "slurm") if slurm_cpus else (len(os.sched_getaffinity(0)), "affinity")
    mem, mem_from = _cgroup_memory_gb(), "cgroup"
    if mem is None:
        mem, mem_from = _slurm_memory_gb(env, cpus), "slurm"
    return ResourcesSeen(gpus_seen=gpus, cpus_seen=cpus, mem_gb_seen=None if mem is None else round(mem, 3),
                         gpu_ids=ids, cpus_from=cpus_from, mem_from=mem_from if mem is not None else None)


def _nvidia_devices() -> int:
    return len([p for p in Path("/dev").glob("nvidia[0-9]*")])


def _cgroup_memory_gb() -> float | None:
    """cgroup v2's memory.max of this process's group (v1's limit_in_bytes), if it is a limit."""
    try:
        group = Path("/proc/self/cgroup").read_text().splitlines()[0].split(":", 2)[2]
    except (OSError, IndexError):
        return None
    for path in (Path("/sys/fs/cgroup") / group.lstrip("/") / "memory.max",
                 Path("/sys/fs/cgroup/memory") / group.lstrip("/") / "memory.limit_in_bytes"):
        try:
            value = path.read_text().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < 1 << 60:
            return int(value) / 2**30
    return None


def _slurm_memory_gb(env, cpus: int) -> float | None:
    """--mem (per node, in MB) or --mem-per-cpu times the CPUs."""
    if env.get("SLURM_MEM_PER_NODE"):
        return int(env["SLURM_MEM_PER_NODE"]) / 1024
    if env.get("SLURM_MEM_PER_CPU"):
        return int(env["SLURM_MEM_PER_CPU"]) * cpus / 1024
    return None
