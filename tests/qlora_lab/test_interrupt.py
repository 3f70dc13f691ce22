"""Ctrl-C: the summary, a failed record saying where the run stopped, exit 130, and no
traceback on the terminal; in process and on the local launcher (SIGINT to the whole
foreground process group, as a terminal sends it). SIGTERM alike, with exit 143."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import tiny_base_dir

LONG = ["train.max_steps=400", "train.save_steps=2", "train.report_to=none", "eval.n_generate=1"]


def _sigint_as_in_a_terminal() -> None:
    """SIGINT at its default, as a terminal's foreground command has it. A test suite started in the
    background (`make test &`, a CI runner's `nohup`) has SIGINT ignored, every process it starts
    inherits that, and a command started with SIGINT ignored rightly keeps ignoring it: the run
    then trained on after its Ctrl-C until the test timed out (seen twice)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_after_checkpoints(args: list[str], folders: list[Path], cwd: Path,
                                sig: int = signal.SIGINT) -> subprocess.CompletedProcess:
    """Start the command in its own process group, wait until every folder has a checkpoint,
    then send SIGINT to the group (as a terminal does), or SIGTERM to the command alone (as
    `kill`, `timeout` or a scheduler does)."""
    proc = subprocess.Popen([sys.executable, "-m", "qlora_lab.train", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=os.environ.copy(),
                            preexec_fn=_sigint_as_in_a_terminal)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and \
            not all(list(f.glob("checkpoints/checkpoint-*/trainer_state.json")) for f in folders):
        time.sleep(0.2)
    assert proc.poll() is None, "the launch ended before it could be interrupted"
    if sig == signal.SIGINT:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_interrupted(proc: subprocess.CompletedProcess, folders: list[Path], said: str = "interrupted (SIGINT)",
                       status: int = 130) -> None:
    assert proc.returncode == status, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    for folder in folders:
        record = json.loads((folder / "record.json").read_text())
        assert record["status"] == "failed"
        step = int(record["error"].removeprefix(f"{said} at step "))
        assert step >= 2  # past the first checkpoint
        assert f"FAILED {folder}: {said} at step {step}" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == f"{len(folders)} runs: 0 ok, {len(folders)} failed"


def test_ctrl_c_in_process(tmp_path: Path):
    tiny_base_dir()
    run_dir = tmp_path / "run"
    proc = interrupt_after_checkpoints([*LONG, f"hydra.run.dir={run_dir}"], [run_dir], tmp_path)
    assert_interrupted(proc, [run_dir])


def test_sigterm_in_process_is_recorded_like_ctrl_c(tmp_path: Path):
    """`kill`, `timeout` and a scheduler send SIGTERM: a failed record saying the step, the
    summary, exit 143 (it used to leave train.log and nothing else)."""
    tiny_base_dir()
    run_dir = tmp_path / "run"
    proc = interrupt_after_checkpoints([*LONG, f"hydra.run.dir={run_dir}"], [run_dir], tmp_path, sig=signal.SIGTERM)
    assert_interrupted(proc, [run_dir], said="terminated (SIGTERM)", status=143)
    assert "terminated (SIGTERM): the runs so far" in proc.stderr


def test_ctrl_c_on_the_local_launcher_stops_each_job_with_one_line(tmp_path: Path):
    tiny_base_dir()
    sweep = tmp_path / "sweep"
    proc = interrupt_after_checkpoints(["-m", "dtype=nf4,fp4", "hydra/launcher=local", "hydra.launcher.n_jobs=2",
                                        *LONG, f"hydra.sweep.dir={sweep}"], [sweep / "0", sweep / "1"], tmp_path)
    assert_interrupted(proc, [sweep / "0", sweep / "1"])
