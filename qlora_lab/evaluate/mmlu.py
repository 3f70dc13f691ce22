"""MMLU the original benchmark's way: 0 or 5 shots from the subject's dev set, the answer is the
highest next-token logit among A, B, C, D; accuracy per subject and their unweighted mean.

The split is named and recorded (the paper's code logged validation MMLU while the paper
reported test). Each subject's header + shots are one prefix shared by all its questions: it
runs once, and its KV cache is repeated across a batch of questions.
"""

from __future__ import annotations

import copy
import csv
from dataclasses import dataclass
from pathlib import Path

from qlora_lab.evaluate.registry import EvalInputs, evaluation, no_grad


CHOICES = "ABCD"
SPLIT_FOLDERS = {"test": "test", "val": "val"}


@dataclass
class Question:
    text: str
    options: tuple[str, str, str, str]
    answer: str  # A, B, C or D


@dataclass
class MmluResult:
    accuracy: float  # unweighted mean over subjects
    by_subject: dict[str, float]
    split: str
    shots: int
    n_questions: int


def load(path: str, hub_id: str, split: str) -> dict[str, tuple[list[Question], list[Question]]]:
    """`eval.mmlu.path`'s benchmark: "hub" (hub_id), "stdlib" (generated here) or a local folder."""
    if path == "hub":
        return load_hub(hub_id, split)
    if path == "stdlib":
        from qlora_lab.data.stdlib_mc import stdlib_mmlu_dir

        return load_local(stdlib_mmlu_dir(), split)
    return load_local(Path(path), split)


def load_local(folder: Path, split: str) -> dict[str, tuple[list[Question], list[Question]]]:
    """subject -> (dev questions for the shots, questions of `split`), from the standard layout:
    dev/<subject>_dev.csv and test/<subject>_test.csv or val/<subject>_val.csv, no header."""
    found = {}
    for path in sorted((folder / SPLIT_FOLDERS[split]).glob(f"*_{split}.csv")):
        subject = path.name[: -len(f"_{split}.csv")]
        dev = folder / "dev" / f"{subject}_dev.csv"
        found[subject] = (_read_csv(dev) if dev.exists() else [], _read_csv(path))
    if not found:
        raise ValueError(f"eval.mmlu.path={folder}: no {SPLIT_FOLDERS[split]}/<subject>_{split}.csv files")
    return found


def load_hub(hub_id: str, split: str) -> dict[str, tuple[list[Question], list[Question]]]:
    """The hub's copy (cais/mmlu: question, subject, choices, answer index)."""
    import datasets

    rows = datasets.load_dataset(hub_id, "all")
    pick = lambda r: Question(r["question"], tuple(r["choices"]), CHOICES[r["answer"]])
    found: dict[str, tuple[list[Question], list[Question]]] = {}
    for r in rows["validation" if split == "val" else "test"]:
        found.setdefault(r["subject"], ([], []))[1].append(pick(r))
    for r in rows["dev"]:
        if r["subject"] in found:
            found[r["subject"]][0].append(pick(r))
    return found


def _read_csv(path: Path) -> list[Question]:
    questions = []
    with open(path, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if len(row) != 6 or row[5].strip() not in CHOICES:
                raise ValueError(f"{path}:{number}: expected question,A,B,C,D,answer with answer in A-D")
            questions.append(Question(row[0], (row[1], row[2], row[3], row[4]), row[5].strip()))
    return questions


def subject_header(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {' '.join(subject.split('_'))}.\n\n"


def format_question(q: Question, with_answer: bool) -> str:
    text = q.text + "".join(f"\n{c}. {o}" for c, o in zip(CHOICES, q.options)) + "\nAnswer:"
    return text + (f" {q.answer}\n\n" if with_answer else "")


def prompt_parts(subject: str, dev: list[Question], shots: int) -> str:
    """The shared prefix: header and `shots` answered dev questions."""
    return subject_header(subject) + "".join(format_question(q, True) for q in dev[:shots])


def choice_token_ids(tokenizer) -> list[int]:
    """Token ids of the answer letters as they follow "Answer:" (" A" where that is one token)."""
    ids = [tokenizer(f" {c}", add_special_tokens=False)["input_ids"] for c in CHOICES]
    if all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == 4:
        return [i[0] for i in ids]
    return [tokenizer(c, add_special_tokens=False)["input_ids"][-1] for c in CHOICES]


@no_grad
def choice_logits_batched(model, prefix: list[int], suffixes: list[list[int]], choice_ids: list[int],
                          batch_size: int, pad_id: int) -> torch.Tensor:
    """[n, 4] logits of A-D after prefix + each suffix; the prefix runs once."""
    import torch

    device = next(model.parameters()).device
    out = model(input_ids=torch.tensor([prefix], device=device), use_cache=True)
    rows = []
    for start in range(0, len(suffixes), batch_size):
        chunk = suffixes[start : start + batch_size]
        lengths = torch.tensor([len(s) for s in chunk], device=device)
        ids = torch.full((len(chunk), int(lengths.max())), pad_id, dtype=torch.long, device=device)
        for i, s in enumerate(chunk):
            ids[i, : len(s)] = torch.tensor(s, device=device)
        cache = copy.deepcopy(out.past_key_values)
        cache.batch_repeat_interleave(len(chunk))
        mask = torch.cat([torch.ones(len(chunk), len(prefix), dtype=torch.long, device=device),
                          (torch.arange(ids.shape[1], device=device) < lengths[:, None]).long()], dim=1)
        positions = len(prefix) + torch.arange(ids.shape[1], device=device).expand(len(chunk), -1)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache).logits
        rows.append(logits[torch.arange(len(chunk), device=device), lengths - 1][:, choice_ids].float())
    return torch.cat(rows)


@no_grad
def choice_logits_one_by_one(model, prefix: list[int], suffixes: list[list[int]], choice_ids: list[int]) -> torch.Tensor:
    """The plain loop: each full prompt on its own (the reference for tests and the benchmark)."""
    import torch

    device = next(model.parameters()).device
    rows = [model(input_ids=torch.tensor([prefix + s], device=device)).logits[0, -1, choice_ids].float()
            for s in suffixes]
    return torch.stack(rows)


def evaluate_mmlu(model, tokenizer, subjects: dict, split: str, shots: int, batch_size: int) -> MmluResult:
    was_training = model.training
    model.eval()
    choice_ids = choice_token_ids(tokenizer)
    by_subject, total = {}, 0
    for subject, (dev, questions) in sorted(subjects.items()):
        prefix = tokenizer(tokenizer.bos_token + prompt_parts(subject, dev, shots), add_special_tokens=False)["input_ids"]
        suffixes = [tokenizer(format_question(q, False), add_special_tokens=False)["input_ids"] for q in questions]
        logits = choice_logits_batched(model, prefix, suffixes, choice_ids, batch_size, tokenizer.pad_token_id)
        by_subject[subject] = accuracy(logits, [q.answer for q in questions])
        total += len(questions)
    model.train(was_training)
    mean = sum(by_subject.values()) / len(by_subject)
    return MmluResult(accuracy=mean, by_subject=by_subject, split=split, shots=shots, n_questions=total)


def accuracy(choice_logits: torch.Tensor, answers: list[str]) -> float:
    """Share of rows whose highest logit is the answer letter (ties: the first letter)."""
    picked = [CHOICES[i] for i in choice_logits.argmax(dim=1).tolist()]
    return sum(p == a for p, a in zip(picked, answers)) / len(answers)


@evaluation("mmlu", order=40, enabled=lambda c: bool(c.eval.mmlu.path), metrics=("mmlu_acc",))
def measure(inputs: EvalInputs) -> dict:
    """MMLU (or a benchmark in its layout): accuracy, per subject, on the named split."""
    cfg = inputs.config.eval.mmlu
    result = evaluate_mmlu(inputs.model, inputs.tokenizer, load(cfg.path, cfg.hub_id, cfg.split), cfg.split,
                           cfg.shots, cfg.batch_size)
    return {"mmlu_acc": result.accuracy, "mmlu_acc_by_subject": result.by_subject, "mmlu_split": result.split,
            "mmlu_shots": result.shots, "mmlu_n_questions": result.n_questions}
