"""`hydra/launcher=local`: hydra-joblib-launcher's pool of loky worker processes, with Ctrl-C.

loky reuses its workers, so each imports torch, transformers, peft and bitsandbytes once for
all the runs it takes, and limits each worker's threads to its share of the cores (`n_jobs`
workers on `n` cores: n // n_jobs threads each). The whole Hydra job runs in the worker; the
run never sees the pool.

One thing the plugin does not do: on Ctrl-C joblib kills its workers at once, so runs in
flight could not record where they stopped. Here the launching process notes the interrupt,
sends out no further job, and waits for the running ones (each got the same SIGINT from the
terminal, writes its `failed` record and ends); then the launch stops with KeyboardInterrupt.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_joblib_launcher._core import execute_job, process_joblib_cfg
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

log = logging.getLogger(__name__)


class Interrupted:
    """What a worker's job returns instead of raising KeyboardInterrupt (which would make joblib
    kill the other workers before they record their runs)."""


def _job(*args: Any) -> JobReturn | Interrupted:
    try:
        return execute_job(*args)
    except KeyboardInterrupt:
        return Interrupted()
    finally:  # a reused worker lives on: its output must reach the terminal before the launch's summary
        sys.stdout.flush()
        sys.stderr.flush()


class LocalPool(JoblibLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from joblib import Parallel, delayed

        assert self.config is not None and self.task_function is not None and self.hydra_context is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        joblib_cfg = {**self.joblib, "backend": "loky"}  # Hydra's jobs cannot share one process's threads
        process_joblib_cfg(joblib_cfg)
        log.info(f"Local pool ({', '.join(f'{k}={v}' for k, v in joblib_cfg.items())}): {len(job_overrides)} jobs, "
                 f"sweep output dir {sweep_dir}")
        for idx, overrides in enumerate(job_overrides):
            log.info(f"\t#{initial_job_idx + idx} : {' '.join(filter_overrides(overrides))}")
        interrupted = threading.Event()
        state = Singleton.get_state()

        def jobs():
            for idx, overrides in enumerate(job_overrides):
                if interrupted.is_set():
                    return  # no job starts after Ctrl-C
                yield delayed(_job)(initial_job_idx + idx, overrides, self.hydra_context, self.config,
                                    self.task_function, state)

        previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
        try:
            results = Parallel(**joblib_cfg)(jobs())
        finally:
            signal.signal(signal.SIGINT, previous)
        if interrupted.is_set() or any(isinstance(r, Interrupted) for r in results):
            raise KeyboardInterrupt
        return results
