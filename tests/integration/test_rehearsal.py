"""A cluster rehearsal (`train.rehearsal=true`) on the simulated GPU node (8 GPUs, 64 CPUs,
512 GB, Slurm generic resources on device nodes made here), with a small MaxArraySize: a
study's real configs and resource requests through a real scheduler, no model work.

Checked: the GPUs, CPUs and memory each job saw against what its model asks for; a job given
fewer GPUs than it asks for fails, naming both; arrays split at MaxArraySize instead of being
refused by sbatch; a cancelled and a requeued job during the launch, the requeued one finishing
by itself, and a relaunch that redoes exactly the cancelled ones.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import records_under, run_cli

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import slurm_cluster  # noqa: E402

pytestmark = pytest.mark.slurm
MAX_ARRAY_SIZE = 3
REHEARSE = ["hydra/launcher=slurm", "train.rehearsal=true"]


@pytest.fixture(scope="module")
def cluster():
    if not slurm_cluster.installed():
        pytest.skip("SLURM is not installed here: `python tests/integration/slurm_cluster.py install` "
                    "(root; .ci/run does it) installs slurmctld, slurmd, slurmdbd, munge and MariaDB")
    slurm_cluster.up(slurm_cluster.Node(max_array_size=MAX_ARRAY_SIZE))
    yield
    slurm_cluster.down()


def _arrays(sweep: Path) -> dict[str, list[int]]:
    """Slurm job id -> its task indices, from submitit's folders (ID_INDEX in an array; a lone
    job, which submitit submits without --array, is ID: index 0)."""
    arrays: dict[str, list[int]] = {}
    names = [folder.name for folder in sweep.glob(".submitit/*")]
    for job, _, index in (name.partition("_") for name in names):
        if job.isdigit() and index.isdigit():
            arrays.setdefault(job, []).append(int(index))
    for name in names:  # an array has an ID folder too (its submission); a lone job only that one
        if name.isdigit() and name not in arrays:
            arrays[name] = [0]
    return arrays


def test_a_study_in_rehearsal_gets_its_gpus_cpus_and_memory_in_split_arrays(cluster, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "+sweep=zero_shot_bits", *REHEARSE, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = records_under(sweep)
    assert len(records) == 16 and all(r["status"] == "ok" and r["rehearsal"] for r in records.values())
    for record in records.values():
        asked, got = record["config"]["model"]["resources"], record["resources"]
        assert got["gpus_seen"] == asked["gpus"] == 1 and len(got["gpu_ids"].split(",")) == 1
        assert got["cpus_seen"] == asked["cpus"] and got["mem_gb_seen"] == asked["mem_gb"]
        assert record["metrics"] == {} and record["memory"]["estimate"]["total_mb"] > 0
    # 4 models, 4 jobs each, one resource set per model: arrays of at most MaxArraySize tasks
    arrays = _arrays(sweep)
    assert sum(map(len, arrays.values())) == 16 and len(arrays) == 8
    assert all(max(indices) < MAX_ARRAY_SIZE for indices in arrays.values())
    assert "16 runs: 16 ok" in proc.stdout + proc.stderr

    out = subprocess.run([sys.executable, "-m", "qlora_analysis", str(sweep), "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "0 runs, " in out.stdout and "16 runs left out" in out.stdout, out.stdout + out.stderr
    assert "rehearsal: a cluster rehearsal's record" in (tmp_path / "r" / "report.md").read_text()
    shown = subprocess.run([sys.executable, "-m", "qlora_analysis", str(sweep), "--rehearsal", "--out",
                            str(tmp_path / "r2")], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0 and "16 runs, " in shown.stdout, shown.stdout + shown.stderr
    assert "| llama_65b |      4 |" in (tmp_path / "r2" / "report.md").read_text()  # the rehearsal table


def test_jobs_asking_1_2_and_4_gpus_get_them_and_one_given_too_few_fails(cluster, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "model.resources.gpus=1,2,4", *REHEARSE, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = {r["config"]["model"]["resources"]["gpus"]: r["resources"] for r in records_under(sweep).values()}
    assert {asked: got["gpus_seen"] for asked, got in seen.items()} == {1: 1, 2: 2, 4: 4}
    assert all(len(set(got["gpu_ids"].split(","))) == got["gpus_seen"] for got in seen.values())

    short = tmp_path / "short"
    proc = run_cli("-m", "model.resources.gpus=2", "hydra.launcher.gpus_per_node=1", *REHEARSE,
                   f"hydra.sweep.dir={short}", cwd=tmp_path)
    assert records_under(short), proc.stdout[-2000:] + proc.stderr[-2000:]
    (record,) = records_under(short).values()
    assert proc.returncode != 0 and record["status"] == "failed"
    assert re.search(r"got 1 GPU\(s\) \(CUDA_VISIBLE_DEVICES=\d+\); model.resources.gpus asks for 2", record["error"])


def _job_ids(sweep: Path, timeout_s: float = 120) -> list[str]:
    """The sweep's Slurm job ids (ARRAY_INDEX, or ID of a lone job), once every job is submitted."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        arrays = _arrays(sweep)
        ids = sorted(f"{job}_{i}" if len(tasks) > 1 else job for job, tasks in arrays.items() for i in tasks)
        if len(ids) == 16:
            return ids
        time.sleep(0.5)
    raise AssertionError(f"only {len(ids)} jobs submitted")


def test_cancelled_and_requeued_jobs_and_a_relaunch_that_redoes_only_the_cancelled(cluster, tmp_path):
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "qlora_lab.train", "-m", "+sweep=zero_shot_bits", *REHEARSE,
               f"hydra.sweep.dir={sweep}"]
    subprocess.run(["scontrol", "update", "PartitionName=debug", "State=DOWN"], check=True)  # hold them queued
    launch = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ids = _job_ids(sweep)
        cancelled, requeued = ids[:2], ids[-2:]
        for job in cancelled:
            subprocess.run(["scancel", job], check=True)
    finally:
        subprocess.run(["scontrol", "update", "PartitionName=debug", "State=UP"], check=True)
    deadline = time.monotonic() + 300
    running = set()
    while len(running) < 2 and time.monotonic() < deadline:  # preempt them once they run: requeue
        for job in requeued:
            state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout
            if job not in running and state.strip() in ("RUNNING", "COMPLETING"):
                if subprocess.run(["scontrol", "requeue", job], capture_output=True).returncode == 0:
                    running.add(job)
        time.sleep(0.05)
    output, _ = launch.communicate(timeout=600)
    assert running == set(requeued), "the jobs to preempt were never seen running"
    records = records_under(sweep)
    assert launch.returncode != 0 and len(records) == 14, output[-3000:]  # the cancelled ones have none
    assert all(r["status"] == "ok" for r in records.values())
    first = {line.split()[0] for f in sweep.glob("*/.launches") for line in f.read_text().splitlines()}
    assert len(first) == 1
    for job in requeued:  # preempted, then started again by themselves and finished (sacct -D: every attempt)
        attempts = subprocess.run(["sacct", "-n", "-D", "-X", "-j", job, "-o", "State"], capture_output=True,
                                  text=True).stdout.split()
        assert "REQUEUED" in attempts and attempts[-1] == "COMPLETED", (job, attempts)
    assert "left the queue without a result" in output
    for folder in sweep.iterdir():  # nothing half-written: every record parses, no temp file left
        assert not list(folder.glob(".record.json.*.tmp")) if folder.is_dir() else True

    again = run_cli(*command[3:], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "16 runs: 16 ok (14 reused)" in again.stdout + again.stderr
    assert len(records_under(sweep)) == 16
    # the relaunch stamped each folder "started", then "reused" where it kept the ok record
    last = {f.name: (f / ".launches").read_text().splitlines()[-1] for f in sweep.iterdir() if f.name.isdigit()}
    redone = sorted(name for name, line in last.items() if line.endswith("started"))
    assert len(redone) == 2 and len(last) == 16
