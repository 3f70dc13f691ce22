"""The whole study through a real scheduler, at full count: every study of `plan --studies`
launched in rehearsal (`train.rehearsal=true`: real configs, real resource requests, no model
work) on the simulated GPU cluster (tests/integration/slurm_cluster.py: 8 GPUs, 64 CPUs), one
`-m +sweep=NAME hydra/launcher=slurm` per study, as a user would launch it.

Per study: jobs, arrays, the launcher's time to compose and submit them (from its process start
to its "submitted" line), the time to drain the queue (to the launch's end), the launcher's peak
RSS. During one study of at least 300 jobs (lora_targets): 5% of its jobs cancelled and 5% sent
a preemption (`scontrol requeue`) once submitted; then the same command again, which must redo
exactly the cancelled ones and reuse the rest. Then `plan --studies` and the analysis over every
rehearsal folder, timed. Root, with Slurm installed (`python tests/integration/slurm_cluster.py
install`); about 40 minutes on a 2-core machine, most of it the jobs' own Python start-up.

    python benchmarks/cluster_rehearsal.py                         # every study
    python benchmarks/cluster_rehearsal.py --studies glue_roberta  # one
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
import slurm_cluster  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
FAULT_STUDY = "lora_targets"
SUBMITTED = re.compile(r"submitted (\d+) job\(s\) in (\d+) array\(s\)")


def launch(study: str, sweep_dir: Path, on_submitted=None) -> dict:
    """One rehearsal launch of a study: its output read as it comes, its rusage at the end."""
    command = [sys.executable, "-m", "qlora_lab.train", "-m", f"+sweep={study}", "hydra/launcher=slurm",
               "train.rehearsal=true", f"hydra.sweep.dir={sweep_dir}"]
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: dict = {}
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            match = SUBMITTED.search(line)
            if match and "submit_s" not in seen:
                seen.update(submit_s=time.perf_counter() - start, jobs=int(match[1]), arrays=int(match[2]))
                if on_submitted is not None:
                    threading.Thread(target=on_submitted, args=(sweep_dir,), daemon=True).start()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=30)
    summary = next((line.strip() for line in reversed(lines) if re.match(r"\d+ runs: ", line.strip())), "")
    return {"study": study, **seen, "drain_s": round(time.perf_counter() - start, 1),
            "launcher_rss_mb": round(usage.ru_maxrss / 1024, 1), "returncode": proc.returncode, "summary": summary,
            "tail": "".join(lines[-5:])}


def job_ids(sweep_dir: Path) -> list[str]:
    """ARRAY_INDEX ids in the order Slurm runs them (array by array, index by index)."""
    ids = [p.name for p in sweep_dir.glob(".submitit/*_*") if p.name.split("_")[1].isdigit()]
    return sorted(ids, key=lambda i: tuple(map(int, i.split("_"))))


def faults(sweep_dir: Path, picked: dict) -> None:
    """Once the jobs are in: scancel 5%, and requeue 5% as each starts running (a preemption)."""
    ids = job_ids(sweep_dir)
    count = max(1, len(ids) // 20)
    third = len(ids) // 3  # still pending when the faults begin: the last ones cancelled, a third in requeued
    picked["cancelled"], picked["requeued"] = ids[-count:], ids[third:third + count]
    for job in picked["cancelled"]:
        subprocess.run(["scancel", job], capture_output=True)
    waiting, deadline = set(picked["requeued"]), time.monotonic() + 1800
    picked["requeue_done"] = []
    while waiting and time.monotonic() < deadline:
        states = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True).stdout
        running = {line.split()[0] for line in states.splitlines() if line.endswith("RUNNING")}
        for job in sorted(waiting & running):
            if subprocess.run(["scontrol", "requeue", job], capture_output=True).returncode == 0:
                picked["requeue_done"].append(job)
            waiting.discard(job)
        time.sleep(0.2)


def records(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/record.json")}


def main() -> None:
    from qlora_lab.sweep.files import paper_studies

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", help="comma-separated study names (default: every study of plan --studies)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="rehearsal-")))
    args = parser.parse_args()
    studies = args.studies.split(",") if args.studies else paper_studies()
    slurm_cluster.install()
    slurm_cluster.up(slurm_cluster.Node())

    start = time.perf_counter()
    plan = subprocess.run([sys.executable, "-m", "qlora_lab.plan", "--studies"], cwd=REPO, capture_output=True,
                          text=True)
    plan_s = time.perf_counter() - start
    print(f"plan --studies: {plan_s:.1f} s; {plan.stdout.strip().splitlines()[-1]}", flush=True)

    rows, fault = [], {}
    for study in studies:
        sweep_dir = args.out / study
        picked: dict = {}
        row = launch(study, sweep_dir, (lambda d, p=picked: faults(d, p)) if study == FAULT_STUDY else None)
        row["ok_records"] = sum(r["status"] == "ok" for r in records(sweep_dir).values())
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "tail"}), flush=True)
        if study == FAULT_STUDY:
            before = records(sweep_dir)
            again = launch(study, sweep_dir)
            last = {f.name: (f / ".launches").read_text().splitlines()[-1] for f in sweep_dir.iterdir()
                    if f.name.isdigit() and (f / ".launches").exists()}
            fault = {"jobs": row.get("jobs"), "cancelled": len(picked.get("cancelled", [])),
                     "requeued": len(picked.get("requeue_done", [])),
                     "records_after_faults": len(before), "ok_after_faults": sum(r["status"] == "ok" for r in before.values()),
                     "relaunch_summary": again["summary"], "relaunch_s": again["drain_s"],
                     "redone": sum(line.endswith("started") for line in last.values()),
                     "half_written": sum(1 for _ in sweep_dir.glob("*/.record.json.*.tmp"))}
            print(json.dumps({"faults": fault}), flush=True)

    start = time.perf_counter()
    analysis = subprocess.run([sys.executable, "-m", "qlora_analysis", *[str(args.out / s) for s in studies],
                               "--rehearsal", "--out", str(args.out / "report")], cwd=REPO, capture_output=True,
                              text=True)
    analysis_s = time.perf_counter() - start
    folders = sum(1 for s in studies for f in (args.out / s).iterdir() if f.name.isdigit())
    print(f"analysis over {folders} folders: {analysis_s:.1f} s; {analysis.stdout.strip()}", flush=True)

    print("\n| study | jobs | arrays | submit (s) | drain (s) | launcher RSS (MB) | ok records |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['study']} | {row.get('jobs')} | {row.get('arrays')} | {row.get('submit_s', float('nan')):.1f} | "
              f"{row['drain_s']:.0f} | {row['launcher_rss_mb']:.0f} | {row['ok_records']} |")
    result = {"plan_studies_s": round(plan_s, 1), "studies": rows, "faults": fault,
              "analysis_s": round(analysis_s, 1), "analysis": analysis.stdout.strip(), "folders": folders}
    (args.out / "cluster_rehearsal.json").write_text(json.dumps(result, indent=2))
    print(f"\nfigures: {args.out / 'cluster_rehearsal.json'}")


if __name__ == "__main__":
    main()
