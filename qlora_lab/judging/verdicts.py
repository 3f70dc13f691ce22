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
# FastChat's MT-Bench pairwise judge ("pair-v2"): the verdict comes last, as [[A]], [[B]] or [[C]]
MTBENCH_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to "
    "the user question displayed below. You should choose the assistant that follows the user's instructions and "
    "answers the user's question better. Your evaluation should consider factors such as the helpfulness, "
    "relevance, accuracy, depth, creativity, and level of detail of their responses. Begin your evaluation by "
    "comparing the two responses and provide a short explanation. Avoid any position biases and ensure that the "
    "order in which the responses were presented does not influence your decision. Do not allow the length of the "
    "responses to influence your evaluation. Do not favor certain names of the assistants. Be as objective as "
    "possible. After providing your explanation, output your final verdict by strictly following this format: "
    "\"[[A]]\" if assistant A is better, \"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie.")
PROMPTS = ("vicuna", "mtbench")  # --prompt: the judge prompt's layout


def judge_messages(task: PairTask, mode: str, prompt: str = "vicuna") -> list[dict]:
    """The review prompt: the Vicuna / QLoRA evaluations' layout, or MT-Bench's pairwise one."""
    if prompt == "mtbench":
        user = (f"[User Question]\n{task.question}\n\n[The Start of Assistant A's Answer]\n{task.answer_a}\n"
                f"[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{task.answer_b}\n"
                f"[The End of Assistant B's Answer]")
        return [{"role": "system", "content": MTBENCH_SYSTEM}, {"role": "user", "content": user}]
    user = (f"[Question]\n{task.question}\n\n[The Start of Assistant 1's Answer]\n{task.answer_a}\n\n"
            f"[The End of Assistant 1's Answer]\n\n[The Start of Assistant 2's Answer]\n{task.answer_b}\n\n"
            f"[The End of Assistant 2's Answer]\n\n[System]\n{ASK[mode]}\n\n")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


class Unparseable(ValueError):
    """The judge's text holds no verdict, or two that disagree (ambiguous): judged as null, with
    the reason, and not asked again (a deterministic judge would answer the same)."""


_MARKER = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_MARKERS = {"A": "a", "B": "b", "C": "tie"}
_VERDICT_LINE = re.compile(r"^\W*(?:(?:final\s+)?(?:verdict|answer|winner)\s*[:=-]?\s*)?"
                           r"(?:assistant\s+)?(1|2|a|b|tie)\b\W*(.*)$", re.IGNORECASE)
_THREECLASS = {"1": "a", "2": "b", "a": "a", "b": "b", "tie": "tie"}


def parse_verdict(text: str, mode: str) -> tuple[str, float | None, float | None]:
    """(winner, score_a, score_b) from where real judges put it: an explicit marker
    ([[A]] / [[B]] / [[C]], FastChat's), else the first line, else the last line. Two different
    verdicts are ambiguous: Unparseable, with the reason."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    ends = lines[:1] + lines[-1:] if len(lines) > 1 else lines
    if mode == "score":
        for line in ends:
            numbers = re.findall(r"\d+(?:\.\d+)?", line)
            if len(numbers) >= 2 and all(1 <= float(n) <= 10 for n in numbers[:2]):
                score_a, score_b = float(numbers[0]), float(numbers[1])
                return ("a" if score_a > score_b else "b" if score_b > score_a else "tie"), score_a, score_b
        raise Unparseable(f"no two scores from 1 to 10 on the first or last line: {_short(text)}")
    marked = {_MARKERS[m] for m in _MARKER.findall(text)}
    if len(marked) > 1:
        raise Unparseable(f"ambiguous: markers for {', '.join(sorted(marked))}: {_short(text)}")
    if marked:
        return marked.pop(), None, None
    found = {_line_verdict(line) for line in ends} - {None}
    if len(found) > 1:
        raise Unparseable(f"ambiguous: the first line says {_line_verdict(ends[0])}, the last "
                          f"{_line_verdict(ends[-1])}: {_short(text)}")
    if not found:
        raise Unparseable(f"no verdict (1, 2, tie or [[A]]/[[B]]/[[C]]) on the first or last line: {_short(text)}")
    return found.pop(), None, None


def _line_verdict(line: str) -> str | None:
    """A line that opens with a verdict ("2", "Tie.", "Verdict: 1", "Assistant 2 is better")."""
    match = _VERDICT_LINE.match(line)
    if match is None:
        return None
    token = match.group(1).lower()
    if token in ("a", "b") and not re.match(r"^\W*(?:verdict|answer|winner|assistant)", line, re.IGNORECASE):
        return None  # a bare "A" opening a sentence ("A good answer...") is no verdict
    return _THREECLASS[token]


def _short(text: str) -> str:
    return repr(" ".join(text.split())[:80])


JUDGES: dict[str, Callable[..., Callable[[PairTask], Judgment]]] = {
    "reference": lambda **_: reference_judge,
}
