"""The lock: the venv holds exactly its pins, the CUDA swap changes torch and nothing the CPU lock
already pins, and the Makefile installs the lock without resolving."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("lockfile", REPO / "install" / "lockfile.py")
lockfile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lockfile)

FROM_THE_LOCK = (Path(sys.prefix) / ".installed").exists()  # `make install`'s stamp; `make test-newest` has none


@pytest.mark.skipif(not FROM_THE_LOCK, reason="this venv was not made by `make install` (make test-newest's is "
                                              "made from the newest versions, not the lock)")
def test_the_venv_holds_exactly_the_lock():
    proc = subprocess.run([sys.executable, str(REPO / "install" / "lockfile.py"), "check", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "holds exactly the lock" in proc.stdout


def test_every_dependency_is_pinned_and_torch_is_the_cpu_build():
    pins = lockfile.pins(REPO / "requirements-lock.txt")
    assert pins["torch"].endswith("+cpu")
    for direct in ("transformers", "peft", "bitsandbytes", "hydra-core", "kernels", "pytest", "triton"):
        assert direct in pins, direct  # direct and transitive (kernels comes with transformers)
    lines = [line for line in (REPO / "requirements-lock.txt").read_text().splitlines()
             if line and not line.startswith(" ") and not line.startswith("#")]
    assert all("==" in line for line in lines), [line for line in lines if "==" not in line]


def test_the_cuda_install_swaps_torch_for_the_same_version_and_adds_only_what_it_needs():
    cpu, cuda = lockfile.requirements("cpu"), lockfile.requirements("cuda")
    assert cuda["torch"] == cpu["torch"].removesuffix("+cpu")
    changed = {name for name in cuda if cpu.get(name) != cuda[name]}
    assert "torch" in changed and all(name in ("torch", "triton") or name not in cpu for name in changed), changed
    assert any(name.startswith("nvidia-") for name in changed)
    with pytest.raises(SystemExit, match="must be cpu or cuda"):
        lockfile.requirements("rocm")


def test_a_venv_that_differs_from_the_lock_is_named_package_by_package():
    wrong = lockfile.differences({"torch": "2.13.0+cpu", "peft": "0.21.2"},
                                 {"torch": "2.13.0+cpu", "peft": "0.22.0", "black": "25.1"})
    assert wrong == ["peft: locked 0.21.2, installed 0.22.0", "black: installed 25.1, not in the lock"]


def test_make_install_resolves_nothing():
    """`uv pip install --no-deps` of the lock's pins: nothing chosen at install time."""
    recipe = subprocess.run(["make", "-n", "-B", "install", "VENV=/nonexistent-venv", "TORCH=cpu"], cwd=REPO,
                            capture_output=True, text=True, timeout=60).stdout
    installs = [line for line in recipe.splitlines() if " install " in line and "pip" in line and "uv==" not in line]
    assert installs and all("--no-deps" in line for line in installs), installs
