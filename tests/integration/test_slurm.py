"""Multiruns through `hydra/launcher=slurm` on a real single-node SLURM cluster.

The cluster (slurmctld, slurmd, munge, slurmdbd on MariaDB) is started from Debian's packages
for this module and torn down after it; `.ci/run` installs the packages.
"""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def cluster():
    if not slurm_cluster.installed():
        pytest.skip("SLURM is not installed here: `python tests/integration/slurm_cluster.py install` "
                    "(root; .ci/run does it) installs slurmctld, slurmd, slurmdbd, munge and MariaDB")
    tiny_base_dir()  # built once here, not inside a job's time limit
    slurm_cluster.up()
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
