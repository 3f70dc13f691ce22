"""A sweep folder's runs as judging sees them: a name per run and its answers by prompt id."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qlora_lab.records import RECORD_NAME, read_record


@dataclass
class JudgedRun:
    name: str  # the user's label, else the run's overrides joined by commas
    answers: dict[str, dict]  # prompt id -> generations.jsonl row


@dataclass(frozen=True)
class PairTask:
    """One judgment to make: prompt, the answer shown first (a) and second (b)."""

    prompt_id: str
    question: str
    reference: str | None
    model_a: str
    answer_a: str
    model_b: str
    answer_b: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.prompt_id, self.model_a, self.model_b)


def read_runs(sweep_dir: Path, labels: dict[str, str], answer_set: str) -> list[JudgedRun]:
    """Every run folder under sweep_dir with a generations.jsonl (and an ok record)."""
    runs = []
    for gen in sorted(sweep_dir.glob("**/generations.jsonl")):
        run_dir = gen.parent
        record_path = run_dir / RECORD_NAME
        record = read_record(record_path) if record_path.exists() else None
        if record is not None and record.status != "ok":
            continue
        overrides = record.overrides if record is not None else []
        name = labels.get(run_dir.name) or ",".join(overrides) or run_dir.name
        rows = [json.loads(line) for line in gen.read_text(encoding="utf-8").splitlines() if line.strip()]
        answers = {str(r["id"]): r for r in rows if answer_set == "all" or r.get("set", "heldout") == answer_set}
        runs.append(JudgedRun(name=name, answers=answers))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"two runs under {sweep_dir} share a name; give labels with --label FOLDER=NAME")
    return runs


def pair_tasks(runs: list[JudgedRun]) -> list[PairTask]:
    """Both orders of every pair of runs, on every prompt both answered (the paper's way of
    cancelling position bias)."""
    tasks = []
    for i, first in enumerate(runs):
        for second in runs[i + 1 :]:
            for prompt_id in sorted(set(first.answers) & set(second.answers)):
                a, b = first.answers[prompt_id], second.answers[prompt_id]
                for (na, ra), (nb, rb) in (((first.name, a), (second.name, b)), ((second.name, b), (first.name, a))):
                    tasks.append(PairTask(prompt_id, a["prompt"], a.get("reference"), na, ra["generation"], nb,
                                          rb["generation"]))
    return tasks
