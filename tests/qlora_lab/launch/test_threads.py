"""ThreadsPerJob holds a cluster job's torch to its cpus_per_task, and a rehearsal imports no torch."""

from __future__ import annotations

import subprocess
import sys


def test_a_job_gets_its_cpus_as_torch_threads_and_a_rehearsal_no_torch_import():
    code = (
        "import sys\n"
        "from omegaconf import OmegaConf\n"
        "from qlora_lab.launch.threads import ThreadsPerJob\n"
        "job = lambda cpus, rehearsal: OmegaConf.create({'hydra': {'launcher': {'cpus_per_task': cpus}},\n"
        "                                                'train': {'rehearsal': rehearsal}})\n"
        "ThreadsPerJob().on_job_start(job(3, True))\n"
        "print('torch' in sys.modules)\n"
        "ThreadsPerJob().on_job_start(job(1, False))\n"
        "import torch\n"
        "print(torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "1"]
