"""What a run measures about itself, in one place: peak RSS, GPU peak, the CPU tensor peak and
the first step's timing, also when several runs share one process (basic launcher, a reused
local worker). Measuring must not change what is measured: the costly CPU tensor profile is
opt-in (`train.cpu_tensor_peak`), the rest costs a few reads."""

from __future__ import annotations

import resource
import time
from pathlib import Path

_STATUS = Path("/proc/self/status")


def reset_peak_rss() -> None:
    """Restart the kernel's high-water mark (VmHWM), so the next reading is this run's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux, or not allowed: the reading then covers the whole process


def peak_rss_mb() -> float:
    if _STATUS.exists():
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gpu_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def live_tensor_bytes(device_type: str = "cpu") -> int:
    """Bytes of the distinct tensor storages alive on a device (parameters, their quantization
    constants, optimizer state): what a peak of tensor allocations builds on."""
    import gc
    import warnings

    import torch

    seen: set[int] = set()
    total = 0
    with warnings.catch_warnings():  # isinstance() on some lazily deprecated objects warns
        warnings.simplefilter("ignore")
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in tensors:
        if obj.device.type == device_type:
            try:
                storage = obj.untyped_storage()
            except (RuntimeError, NotImplementedError):
                continue
            if storage.data_ptr() and storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


class CpuTensorPeak:
    """Peak bytes of torch's CPU tensor allocations over a window: what was alive when it
    opened plus the highest running sum of the allocations and frees torch's profiler saw.
    (On a GPU, CUDA's own peak statistic does this.)"""

    def __init__(self) -> None:
        self._profiler = None
        self._baseline = 0
        self.peak_bytes: int | None = None

    def start(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        self._baseline = live_tensor_bytes("cpu")
        self._profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._profiler.__enter__()

    def stop(self) -> None:
        if self._profiler is None:  # stopped already: nothing to read (and no time spent)
            return
        profiler, self._profiler = self._profiler, None
        profiler.__exit__(None, None, None)
        events = sorted((e.start_ns(), e.nbytes()) for e in profiler.profiler.kineto_results.events()
                        if e.name() == "[memory]" and e.device_type().name == "CPU")
        running = highest = 0
        for _, nbytes in events:
            running += nbytes
            highest = max(highest, running)
        self.peak_bytes = self._baseline + highest


PEAK_WINDOW_STEPS = 5  # CPU: torch's profiler watches the first steps (optimizer state included)


def process_start_time() -> float:
    """Unix time this process started (for start-up cost: imports, compose, load, first step)."""
    import psutil

    return psutil.Process().create_time()


def training_callbacks(cpu_tensor_peak: bool):
    """(first-step timer, tensor-peak meter): Trainer callbacks, as plain as transformers
    allows. The meter reads CUDA's free peak statistic on a GPU; on the CPU it runs torch's
    profiler over the first PEAK_WINDOW_STEPS steps only when asked (it costs throughput and
    memory while it runs), and reports None otherwise."""
    import torch
    from transformers import TrainerCallback

    class FirstStep(TrainerCallback):
        """Seconds from the callback's creation (the fit call) and from the process start to the
        end of the first optimizer step."""

        def __init__(self) -> None:
            self.start = time.perf_counter()
            self.since_call: float | None = None
            self.since_process: float | None = None

        def on_step_end(self, args, state, control, **kwargs):
            if self.since_call is None:
                self.since_call = time.perf_counter() - self.start
                self.since_process = time.time() - process_start_time()

    class TensorPeak(TrainerCallback):
        def __init__(self) -> None:
            self.cpu = CpuTensorPeak() if cpu_tensor_peak and not torch.cuda.is_available() else None
            self.steps = 0
            self.measure_s = 0.0  # the profiler's set-up and read-out: measuring, not training

        def on_train_begin(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            elif self.cpu is not None:
                self._timed(self.cpu.start)

        def on_step_end(self, args, state, control, **kwargs):
            self.steps += 1
            if self.cpu is not None and self.steps >= PEAK_WINDOW_STEPS:
                self._timed(self.cpu.stop)

        def close(self) -> None:
            if self.cpu is not None:
                self._timed(self.cpu.stop)

        def _timed(self, action) -> None:
            begin = time.perf_counter()
            action()
            self.measure_s += time.perf_counter() - begin

        def peak_mb(self) -> float | None:
            if torch.cuda.is_available():
                return round(torch.cuda.max_memory_allocated() / 2**20, 1)
            if self.cpu is None or self.cpu.peak_bytes is None:
                return None
            return round(self.cpu.peak_bytes / 2**20, 1)

    return FirstStep(), TensorPeak()
