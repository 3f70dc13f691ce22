"""A zero-shot task a micro base can do, as an lm-eval task of our own (`stdlib_next_line`):
given eight lines of held-out standard-library source, which of four lines from the same file
comes next? Scored by log-likelihood of each line (lm-eval's multiple_choice), so accuracy
moves with the model's distributions, not with whether it can write a letter. Chance: 25%.

The lines come from the modules no built base was pretrained on (the stdlib instruction pairs
come from the same modules, so fine-tuning may teach some of it: the PTQ sweep measures the
bases themselves). Written once per Python version into the cache, with its task YAML, so
`eval.lm_eval.include_path=stdlib eval.lm_eval.tasks=[stdlib_next_line]` is the whole setup.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

from qlora_lab.cache import atomic_write_text, build_lock, cache_dir
from qlora_lab.data.stdlib import module_part, stdlib_files, stdlib_root

TASK = "stdlib_next_line"
TASK_VERSION = 1  # bump when the questions change
N_QUESTIONS = 600
CONTEXT_LINES = 8
MIN_LINE_CHARS = 16  # answers and distractors: lines with something to tell apart

TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_target: label
doc_to_choice: choices
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: {version}
"""


def stdlib_tasks_dir() -> Path:
    """The folder of our lm-eval tasks (eval.lm_eval.include_path=stdlib), written on first use."""
    key = hashlib.sha256(f"{sys.version}|{stdlib_root()}|{TASK_VERSION}".encode()).hexdigest()[:12]
    target = cache_dir() / "lm_eval_tasks" / key
    if (target / f"{TASK}.yaml").exists():
        return target
    with build_lock(f"lm_eval_tasks-{key}"):
        if not (target / f"{TASK}.yaml").exists():
            data = target / f"{TASK}.jsonl"
            atomic_write_text(data, "".join(json.dumps(q) + "\n" for q in questions(N_QUESTIONS, seed=0)))
            atomic_write_text(target / f"{TASK}.yaml", TASK_YAML.format(task=TASK, data=data, version=TASK_VERSION))
    return target


def questions(n: int, seed: int) -> list[dict]:
    """{context, choices (4 lines), label}: spread over the held-out modules, drawn with a fixed seed."""
    rng = random.Random(seed)
    files = [p for p in stdlib_files() if module_part(p) == "finetune"]
    rng.shuffle(files)
    found: list[dict] = []
    for path in files:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        candidates = [i for i in range(CONTEXT_LINES, len(lines)) if _askable(lines[i])]
        if len(candidates) < 8:
            continue
        for i in rng.sample(candidates, min(2, len(candidates) // 8)):  # a few per file: many files
            others = sorted({lines[j] for j in candidates if lines[j].strip() != lines[i].strip()})
            if len(others) < 3:
                continue
            choices = rng.sample(others, 3) + [lines[i]]
            rng.shuffle(choices)
            found.append({"context": "\n".join(lines[i - CONTEXT_LINES : i]) + "\n", "choices": choices,
                          "label": choices.index(lines[i])})
        if len(found) >= n:
            break
    return found[:n]


def _askable(line: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= MIN_LINE_CHARS and not stripped.startswith("#")
