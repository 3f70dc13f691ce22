"""The Vicuna relative score (the paper's Table 6): a model's judge score as a percentage of a
reference system's, over the prompts both answered, averaged over both orders, with a 95%
bootstrap interval over prompts (seeded)."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class RelativeScore:
    model: str
    reference: str
    percent: float
    lower: float
    upper: float
    n_prompts: int


def relative_scores(judgments: list[dict], reference: str, n_boot: int = 1000, seed: int = 0) -> list[RelativeScore]:
    """Per model judged against `reference` with scores: 100 * sum(model) / sum(reference)."""
    per_model: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for j in judgments:
        if j.get("score_a") is None or j.get("score_b") is None or reference not in (j["model_a"], j["model_b"]):
            continue
        if j["model_a"] == reference:
            model, mine, theirs = j["model_b"], j["score_b"], j["score_a"]
        else:
            model, mine, theirs = j["model_a"], j["score_a"], j["score_b"]
        per_model.setdefault(model, {}).setdefault(j["prompt_id"], []).append((mine, theirs))
    results = []
    rng = random.Random(seed)
    for model, by_prompt in sorted(per_model.items()):
        prompts = sorted(by_prompt)
        means = [(sum(m for m, _ in by_prompt[p]) / len(by_prompt[p]), sum(t for _, t in by_prompt[p]) / len(by_prompt[p]))
                 for p in prompts]
        ratio = lambda rows: 100 * sum(m for m, _ in rows) / sum(t for _, t in rows) if sum(t for _, t in rows) \
            else float("nan")  # the reference scored nothing: no ratio
        if ratio(means) != ratio(means):
            continue
        boots = sorted(ratio([means[rng.randrange(len(means))] for _ in means]) for _ in range(n_boot))
        results.append(RelativeScore(model, reference, ratio(means), boots[int(0.025 * n_boot)],
                                     boots[int(0.975 * n_boot) - 1], len(prompts)))
    return results
