"""Multiruns through `hydra/launcher=slurm` on a real single-node SLURM cluster, one file so that
one pytest worker holds the cluster (two files on two workers would cancel each other's jobs
when one brings it up or down with its own settings).

The cluster (slurmctld, slurmd, munge, slurmdbd on MariaDB) is started from Debian's packages
for this module and torn down after it; `.ci/run` installs the packages. Its node is the
simulated GPU node (8 GPUs, 64 CPUs, 512 GB, Slurm generic resources on device nodes made here),
with a small MaxArraySize.

Real runs: a sweep whose jobs ask for different memory, and a preempted job that resumes.
A cluster rehearsal (`train.rehearsal=true`: a study's real configs and resource requests through
a real scheduler, no model work): the GPUs, CPUs and memory each job saw against what its model
asks for; a job given fewer GPUs than it asks for fails, naming both; arrays split at
MaxArraySize instead of being refused by sbatch; a cancelled and a requeued job during the
launch, the requeued one finishing by itself, and a relaunch that redoes exactly the cancelled ones.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import records_under, run_cli, tiny_base_dir

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import slurm_cluster  # noqa: E402

pytestmark = pytest.mark.slurm
FAST = ["train.max_steps=2", "eval.n_generate=1", "train.report_to=none", "hydra/launcher=slurm"]
MAX_ARRAY_SIZE = 3
REHEARSE = ["hydra/launcher=slurm", "train.rehearsal=true"]


@pytest.fixture(scope="module")
def cluster():
    if not slurm_cluster.installed():
        pytest.skip("SLURM is not installed here: `python tests/integration/slurm_cluster.py install` "
                    "(root; .ci/run does it) installs slurmctld, slurmd, slurmdbd, munge and MariaDB")
    tiny_base_dir()  # built once here, not inside a job's time limit
    slurm_cluster.up(slurm_cluster.Node(max_array_size=MAX_ARRAY_SIZE))
    yield
    slurm_cluster.down()


def _sbatch_lines(sweep_dir: Path) -> list[set[str]]:
    return [{line.strip() for line in script.read_text().splitlines() if line.startswith("#SBATCH")}
            for script in sorted(sweep_dir.glob(".submitit/*/*_submission.sh"))]


def _job_ids(sweep_dir: Path) -> set[str]:
    """SLURM job ids of a sweep, from submitit's folders (`ID` for a lone job, `ID_i` in an array)."""
    return {p.name.split("_")[0] for p in sweep_dir.glob(".submitit/*") if p.is_dir() and p.name[0].isdigit()}


def _accounting(job_ids: set[str], jobs: int) -> dict[str, str]:
    """job id -> its final state, from slurmdbd's accounting (sacct), which slurmctld fills
    a moment after a job ends."""
    deadline = time.monotonic() + 60
    while True:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State"], capture_output=True, text=True,
                             check=True).stdout
        states = dict(line.split("|", 1) for line in out.splitlines() if line)
        ours = {job: state for job, state in states.items() if job.split("_")[0] in job_ids}
        if (len(ours) >= jobs and "RUNNING" not in ours.values()) or time.monotonic() > deadline:
            return ours
        time.sleep(1)


def test_sweep_runs_on_slurm_asking_each_job_for_its_own_resources(cluster, tmp_path: Path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", *FAST, "model.resources.mem_gb=2,3", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = records_under(sweep)
    assert len(records) == 2 and all(r["status"] == "ok" for r in records.values())
    assert "2 runs: 2 ok" in proc.stdout + proc.stderr

    scripts = _sbatch_lines(sweep)
    assert len(scripts) == 2  # one job array per distinct resources
    assert {"#SBATCH --mem=2GB", "#SBATCH --mem=3GB"} == {line for s in scripts for line in s if "--mem=" in line}
    for script in scripts:  # the rest from the tiny model's hints
        assert "#SBATCH --cpus-per-task=2" in script and "#SBATCH --time=15" in script

    job_ids = _job_ids(sweep)
    states = _accounting(job_ids, jobs=2)
    assert states and set(states.values()) == {"COMPLETED"}, states

    again = run_cli("-m", *FAST, "model.resources.mem_gb=2,3", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert again.returncode == 0 and "2 runs: 2 ok (2 reused)" in again.stdout + again.stderr


def test_preempted_job_is_requeued_and_resumes_from_its_checkpoint(cluster, tmp_path: Path):
    sweep = tmp_path / "sweep"
    launch = subprocess.Popen([sys.executable, "-m", "qlora_lab.train", "-m", *FAST, "train.max_steps=12",
                               "train.save_steps=4", f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoint = sweep / "0" / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and launch.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert launch.poll() is None, "the run ended before it could be preempted"
    (job_id,) = _job_ids(sweep)  # one job: submitted on its own, not as an array
    # what SLURM sends a job it preempts or times out: submitit checkpoints and requeues it
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    # Slurm holds a requeued job about two minutes (its begin time); let it start now.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.strip()
        if state == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
            break
        time.sleep(0.2)
    output, _ = launch.communicate(timeout=900)
    assert launch.returncode == 0, output[-3000:]

    record = json.loads((sweep / "0" / "record.json").read_text())
    assert record["status"] == "ok" and record["metrics"]["train_steps"] == 12
    starts = [line for line in (sweep / "0" / ".launches").read_text().splitlines() if line.endswith("started")]
    assert len(starts) == 2  # the first attempt, and the requeued one that resumed
    log = "".join(p.read_text() for p in sweep.glob(f".submitit/{job_id}*/*_log.err"))
    assert "requeued" in log.lower() or "requeue" in log.lower(), log[-2000:]


# -- the cluster rehearsal --

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


def _queued_job_ids(sweep: Path, timeout_s: float = 120) -> list[str]:
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
        ids = _queued_job_ids(sweep)
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
