"""The console scripts beside the `python -m` forms, the README's completion line, and a quiet
console from the repository root."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("script, expected", [("qlora-train", "== Configuration groups =="),
                                              ("qlora-plan", "usage: qlora-plan"), ("qlora-judge", "usage:"),
                                              ("qlora-analysis", "usage:")])
def test_console_scripts_answer_help(script, expected):
    proc = subprocess.run([str(BIN / script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert expected in proc.stdout


def test_the_readme_completion_line_completes_overrides():
    """`eval "$(qlora-train -sc install=bash)"` registers Hydra's completion for qlora-train; asked
    the way bash asks, it offers the dtype group's options."""
    readme = (REPO / "README.md").read_text()
    assert 'eval "$(qlora-train -sc install=bash)"' in readme
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    installed = subprocess.run(["bash", "-c", 'eval "$(qlora-train -sc install=bash)" && complete -p qlora-train'],
                               capture_output=True, text=True, env=env, timeout=120)
    assert installed.returncode == 0 and "hydra_bash_completion" in installed.stdout, installed.stderr[-1000:]
    asked = subprocess.run([str(BIN / "qlora-train"), "-sc", "query=bash"], capture_output=True, text=True,
                           env={**env, "COMP_LINE": "qlora-train dtype=n", "COMP_POINT": "19"}, timeout=120)
    assert set(asked.stdout.split()) >= {"dtype=nf4", "dtype=nf3"}, asked.stderr[-1000:]


def test_no_warning_about_the_hub_kernel_from_the_repository_root():
    """bitsandbytes fetches a hub kernel through `import kernels` on AVX512-BF16 CPUs. Nothing is
    said when the package is absent or the hub offline; a real failure of a fetched one still is."""
    proc = subprocess.run([sys.executable, "-c", "import qlora_lab, bitsandbytes, bitsandbytes.backends.cpu.ops"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert "Failed to load CPU gemm_4bit_forward" not in proc.stderr
    import qlora_lab  # noqa: F401  (installs the filter)

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    record = lambda err: logger.makeRecord(logger.name, logging.WARNING, __file__, 1,
                                           "Failed to load CPU gemm_4bit_forward from kernels-community: %s.",
                                           (err,), None)
    assert not all(f.filter(record(ImportError("cannot import name 'get_kernel' from 'kernels'")))
                   for f in logger.filters)
    offline = ValueError("Version 1 of 'kernels-community/quantization-bitsandbytes' is not available in the local "
                         "cache and Hugging Face Hub is in offline mode.")
    assert not all(f.filter(record(offline)) for f in logger.filters)
    assert all(f.filter(record(RuntimeError("kernel build failed"))) for f in logger.filters)


def test_from_the_repository_root_no_folder_of_ours_shadows_an_installed_package(tmp_path):
    """`python -m` puts the working folder first on sys.path: from the repository root,
    `import kernels` is the hub package transformers imports (not our kernels/ folder), a model
    loads, and a run trains. Our packages import by their own names."""
    import importlib.metadata

    script = ("import importlib.util, kernels, transformers.modeling_utils, qlora_kernels, qlora_analysis\n"
        "print(kernels.__file__); print(qlora_kernels.__file__); print(getattr(importlib.util.find_spec('analysis'), 'origin', None))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    hub, ours, analysis = proc.stdout.splitlines()[-3:]
    assert "site-packages" in hub and importlib.metadata.version("kernels")  # the hub package, installed
    assert Path(ours).is_relative_to(REPO / "kernels" / "qlora_kernels")
    assert analysis == "None" or "site-packages" in analysis  # at most a namespace: no package of ours is `analysis`
    run = subprocess.run([sys.executable, "-m", "qlora_lab.train", "train.max_steps=1", "eval.n_generate=0",
                          "train.report_to=none", f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "1 runs: 1 ok, 0 failed"
