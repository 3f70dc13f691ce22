"""The judges: each turns a PairTask into a Judgment. A registry: adding one is one entry."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Callable

from qlora_lab.judging.runs import PairTask


@dataclass
class Judgment:
    """One line of judgments.jsonl."""

    prompt_id: str
    model_a: str
    model_b: str
    winner: str | None  # a | b | tie | None (could not be judged: see reason)
    judge: str
    score_a: float | None = None
    score_b: float | None = None
    reason: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def reference_judge(task: PairTask) -> Judgment:
    """Offline: the answer closer to the prompt's reference by RougeL wins; equal is a tie."""
    from rouge_score import rouge_scorer

    if not task.reference:
        return Judgment(task.prompt_id, task.model_a, task.model_b, None, "reference", reason="no reference answer")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    score_a = scorer.score(task.reference, task.answer_a)["rougeL"].fmeasure
    score_b = scorer.score(task.reference, task.answer_b)["rougeL"].fmeasure
    winner = "a" if score_a > score_b else "b" if score_b > score_a else "tie"
    return Judgment(task.prompt_id, task.model_a, task.model_b, winner, "reference", score_a, score_b)


SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
ASK = {
    "threeclass": ("We would like to request your feedback on the performance of two AI assistants in response to "
                   "the user question displayed above. Consider helpfulness, relevance, accuracy and level of detail. "
                   "Output your verdict on the first line: 1 if assistant 1 is better, 2 if assistant 2 is better, "
                   "or tie. Then explain briefly."),
    "score": ("We would like to request your feedback on the performance of two AI assistants in response to the "
              "user question displayed above. Rate each on a scale of 1 to 10, higher is better. Output two numbers "
              "on the first line, the scores of assistant 1 and 2 separated by a space. Then explain briefly."),
}


def judge_messages(task: PairTask, mode: str) -> list[dict]:
    """The review prompt of the Vicuna / QLoRA evaluations, in its layout."""
    user = (f"[Question]\n{task.question}\n\n[The Start of Assistant 1's Answer]\n{task.answer_a}\n\n"
            f"[The End of Assistant 1's Answer]\n\n[The Start of Assistant 2's Answer]\n{task.answer_b}\n\n"
            f"[The End of Assistant 2's Answer]\n\n[System]\n{ASK[mode]}\n\n")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


class Unparseable(ValueError):
    """The judge's text holds no verdict in the asked form."""


def parse_verdict(text: str, mode: str) -> tuple[str, float | None, float | None]:
    """(winner, score_a, score_b) from the first non-empty line of the judge's answer."""
    line = next((l.strip() for l in text.splitlines() if l.strip()), "")
    if mode == "threeclass":
        token = re.sub(r"[^a-z0-9]", "", line.lower().split()[0]) if line else ""
        verdicts = {"1": "a", "2": "b", "tie": "tie"}
        if token not in verdicts:
            raise Unparseable(f"no verdict (1, 2 or tie) on the first line: {line[:80]!r}")
        return verdicts[token], None, None
    numbers = re.findall(r"\d+(?:\.\d+)?", line)
    if len(numbers) < 2 or not all(1 <= float(n) <= 10 for n in numbers[:2]):
        raise Unparseable(f"no two scores from 1 to 10 on the first line: {line[:80]!r}")
    score_a, score_b = float(numbers[0]), float(numbers[1])
    return ("a" if score_a > score_b else "b" if score_b > score_a else "tie"), score_a, score_b


JUDGES: dict[str, Callable[..., Callable[[PairTask], Judgment]]] = {
    "reference": lambda **_: reference_judge,
}
