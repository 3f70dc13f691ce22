"""The warm server for local sweeps: a job's run forks from one process that imported the
libraries, with the job's folder, environment and output, and never outlives the job."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from qlora_lab import warm_start


@pytest.fixture(scope="module")
def server_socket():
    """One real server for the module (it imports torch, transformers, peft, bitsandbytes): the
    process's shared one, as a launch's batches use it."""
    warm = warm_start.shared_server()
    assert warm.ready() and warm_start.shared_server() is warm and warm.ready()
    yield warm.path
    warm.stop()


def job(code: str, cwd: Path, socket_path: str | None) -> subprocess.Popen:
    """A job's process: a fresh interpreter that hands `code`'s call to the server."""
    env = {**os.environ, warm_start.SOCKET_ENV: socket_path} if socket_path else \
        {k: v for k, v in os.environ.items() if k != warm_start.SOCKET_ENV}
    script = "import os, sys\nfrom qlora_lab.warm_start import call\n" + textwrap.dedent(code)
    return subprocess.Popen([sys.executable, "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)


def test_the_run_takes_the_jobs_folder_environment_and_output(server_socket, tmp_path):
    proc = job("""
        import logging
        logging.basicConfig(filename="job.log", format="job format: %(message)s", level=logging.INFO)
        os.environ["JOB_ONLY"] = "seen"
        call(logging.info, "logged by the child")
        pid, cwd, value = call(os.getpid), call(os.getcwd), call(os.getenv, "JOB_ONLY")
        call(os.system, "echo child-out; echo child-err >&2")
        print(pid != os.getpid(), cwd, value)
    """, tmp_path, server_socket)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "child-out" in out and "child-err" in err  # the child wrote to the job's own stdout and stderr
    assert "logged by the child" not in out + err  # the job logs to its file only: so does the child
    assert out.strip().splitlines()[-1] == f"True {tmp_path} seen"
    assert (tmp_path / "job.log").read_text() == "job format: logged by the child\n"  # the job's log set-up


def test_an_error_in_the_run_is_raised_in_the_job(server_socket, tmp_path):
    proc = job("""
        try:
            call(int, "not a number")
        except ValueError as err:
            print("raised:", err)
    """, tmp_path, server_socket)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "raised: invalid literal for int() with base 10: 'not a number'" in out


def test_a_job_killed_with_sigkill_takes_its_run_with_it(server_socket, tmp_path):
    pid_file = tmp_path / "child.pid"
    proc = job(f"call(os.system, 'echo $PPID > {pid_file}; sleep 120')", tmp_path, server_socket)
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
    child = int(pid_file.read_text())
    assert psutil.pid_exists(child) and child != proc.pid
    proc.kill()
    proc.wait()
    wait_for(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE, 10)


def test_a_signalled_job_stops_its_run_before_it_exits(server_socket, tmp_path):
    pid_file = tmp_path / "child.pid"
    proc = job(f"call(os.system, 'echo $PPID > {pid_file}; sleep 120')", tmp_path, server_socket)
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
    child = int(pid_file.read_text())
    proc.send_signal(signal.SIGINT)  # submitit's cancel; its timeout and preemption handlers raise likewise
    proc.wait(timeout=30)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_a_run_whose_process_dies_fails_and_is_not_run_again(server_socket, tmp_path):
    marker = tmp_path / "runs"
    proc = job(f"call(os.system, 'echo ran >> {marker}; kill -9 $PPID')", tmp_path, server_socket)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "RuntimeError: the run's process (pid" in err and "ended without a result" in err
    assert marker.read_text() == "ran\n"


def test_without_a_server_the_job_runs_its_own_run(tmp_path):
    proc = job("print(call(os.getpid) == os.getpid())", tmp_path, str(tmp_path / "no-server"))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert out.strip() == "True"
    assert "warm start not used (FileNotFoundError" in err


def test_the_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv(warm_start.SWITCH_ENV, "0")
    monkeypatch.delenv(warm_start.SOCKET_ENV, raising=False)
    assert warm_start.shared_server() is None and warm_start.SOCKET_ENV not in os.environ


def test_a_server_that_cannot_serve_says_why_and_jobs_start_cold(monkeypatch, caplog, tmp_path):
    monkeypatch.delenv(warm_start.SOCKET_ENV, raising=False)
    (tmp_path / "bitsandbytes.py").write_text("raise ImportError('a broken bitsandbytes')\n")  # before the real one
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    warm = warm_start.WarmServer()
    try:
        assert not warm.ready()
    finally:
        warm.stop()
    assert warm_start.SOCKET_ENV not in os.environ
    assert "warm start not used (ImportError: a broken bitsandbytes): each job imports its own libraries" in caplog.text


def test_a_run_that_cannot_be_sent_runs_in_the_job(tmp_path):
    proc = job("print(call(lambda: os.getpid()) == os.getpid())", tmp_path, str(tmp_path / "no-server"))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert out.strip() == "True" and "warm start not used (the run cannot be sent" in err


def test_local_launch_forks_its_runs_in_waves_and_a_preempted_one_resumes(tmp_path):
    """The real command on the local launcher: each job in a wave of its own (it asks for every
    core), both runs forked from the warm server; submitit's preemption signal (USR2) reaches the
    first job while its run trains in the server's child: the child is stopped, the job requeued,
    and the run resumes from its checkpoint. Then the second job's numbers against a cold job's."""
    from conftest import records_under, run_cli

    cores = len(os.sched_getaffinity(0))
    args = ("hydra/launcher=local", f"hydra.launcher.cpus_per_task={cores}", "train.max_steps=6",
             "train.save_steps=2", "eval.n_generate=0", "train.report_to=none")
    sweep = tmp_path / "sweep"
    launch = subprocess.Popen([sys.executable, "-m", "qlora_lab.train", "-m", "dtype=nf4,fp32", *args,
                               f"hydra.sweep.dir={sweep}"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    checkpoint = sweep / "0" / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    wait_for(lambda: checkpoint.exists() or launch.poll() is not None, timeout=600)
    assert launch.poll() is None, "the run ended before it could be preempted"
    jobs = [p for p in psutil.Process(launch.pid).children(recursive=True)
            if "submitit.core._submit" in " ".join(p.cmdline())]
    assert len(jobs) == 1  # the second wave waits for the first
    jobs[0].send_signal(signal.SIGUSR2)
    output, _ = launch.communicate(timeout=600)
    assert launch.returncode == 0, output[-3000:]

    records = records_under(sweep)
    assert [r["status"] for r in records.values()] == ["ok", "ok"]
    assert all(r["env"]["warm_start"] and r["metrics"]["train_steps"] == 6 for r in records.values())
    assert records["1"]["started_at"] >= records["0"]["finished_at"]  # the second wave after the first
    assert list((sweep / "0").glob("*.log")) and list((sweep / ".submitit").iterdir())
    starts = [line for line in (sweep / "0" / ".launches").read_text().splitlines() if line.endswith("started")]
    assert len(starts) == 2  # the first attempt, and the requeued one that resumed
    requeued = [p for p in sweep.glob(".submitit/*/*_log.out") if "Requeued job" in p.read_text()]
    assert len(requeued) == 1
    # The requeued attempt's progress bar starts past the checkpoint's 2 steps: it resumed.
    bars = "".join(p.read_text() for p in requeued[0].parent.glob("*_log.err"))
    steps = [int(n) for n in re.findall(r"(\d+)/6 \[", bars)]
    steps = [n for i, n in enumerate(steps) if i == 0 or n != steps[i - 1]]
    assert steps[steps.index(0, 1) + 1] == 3, steps

    # The same job imported in its own process gives the same numbers to the last bit.
    proc = run_cli("-m", "dtype=fp32", *args, f"hydra.sweep.dir={tmp_path / 'cold'}", cwd=tmp_path,
                   env={warm_start.SWITCH_ENV: "0"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    cold, warm = records_under(tmp_path / "cold")["0"], records["1"]
    assert not cold["env"]["warm_start"] and cold["run_id"] == warm["run_id"]
    for key in ("train_loss_first", "train_loss_last", "eval_loss"):
        assert cold["metrics"][key] == warm["metrics"][key], key
