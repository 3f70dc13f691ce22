"""Elo ratings from pairwise judgments, as the QLoRA paper computed them (Table 7)."""

from __future__ import annotations

import numpy as np
import pandas as pd

SCORES = {"a": 1.0, "b": 0.0, "tie": 0.5}


def elo_ratings(judgments: pd.DataFrame, k: float = 32, initial: float = 1000, n_orderings: int = 10000,
                seed: int = 0) -> pd.DataFrame:
    """Elo (K=k, all start at `initial`) after playing the matches in `n_orderings` random
    orders: the mean rating with a 95% interval (2.5th and 97.5th percentiles) over orders.

    `judgments`: columns model_a, model_b, winner (a, b, tie); rows without a winner are
    skipped. Returns columns model, elo, lower, upper, matches, sorted best first."""
    missing = {"model_a", "model_b", "winner"} - set(judgments.columns)
    if missing:
        raise ValueError(f"judgments: missing columns {', '.join(sorted(missing))}; expected model_a, model_b, winner")
    games = judgments[judgments["winner"].isin(list(SCORES))]
    if games.empty:
        raise ValueError("judgments: no match with a winner of a, b or tie")
    models = sorted(set(games["model_a"]) | set(games["model_b"]))
    index = {m: i for i, m in enumerate(models)}
    a = games["model_a"].map(index).to_numpy()
    b = games["model_b"].map(index).to_numpy()
    score_a = games["winner"].map(SCORES).to_numpy()
    rng = np.random.default_rng(seed)
    # all orderings at once: one rating row per ordering, the matches played in lockstep
    ratings = np.full((n_orderings, len(models)), float(initial))
    orders = np.argsort(rng.random((n_orderings, len(games))), axis=1)
    rows = np.arange(n_orderings)
    for step in range(len(games)):
        match = orders[:, step]
        ia, ib, sa = a[match], b[match], score_a[match]
        ra, rb = ratings[rows, ia], ratings[rows, ib]
        expected_a = 1.0 / (1.0 + 10 ** ((rb - ra) / 400))
        ratings[rows, ia] = ra + k * (sa - expected_a)
        ratings[rows, ib] = rb + k * ((1 - sa) - (1 - expected_a))
    matches = pd.concat([games["model_a"], games["model_b"]]).value_counts()
    table = pd.DataFrame({"model": models, "elo": ratings.mean(axis=0),
                          "lower": np.percentile(ratings, 2.5, axis=0), "upper": np.percentile(ratings, 97.5, axis=0),
                          "matches": [int(matches[m]) for m in models]})
    return table.sort_values("elo", ascending=False, ignore_index=True)
