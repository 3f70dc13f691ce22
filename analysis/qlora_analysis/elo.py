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
    ratings = play_orderings(a, b, score_a, len(models), rng, k, initial, n_orderings)
    matches = pd.concat([games["model_a"], games["model_b"]]).value_counts()
    table = pd.DataFrame({"model": models, "elo": ratings.mean(axis=0),
                          "lower": np.percentile(ratings, 2.5, axis=0), "upper": np.percentile(ratings, 97.5, axis=0),
                          "matches": [int(matches[m]) for m in models]})
    return table.sort_values("elo", ascending=False, ignore_index=True)


def play_orderings(a: np.ndarray, b: np.ndarray, score_a: np.ndarray, n_models: int, rng: np.random.Generator,
                   k: float, initial: float, n_orderings: int) -> np.ndarray:
    """Ratings after every ordering, one row per ordering: the orderings are played in lockstep,
    one match of each per step (the steps of one ordering depend on each other, the orderings
    do not). Each ordering is shuffled in place (an argsort of random keys took 1 s per 10 million
    matches) and ratings are read and written through flat indices."""
    # step-major (one contiguous row per step), each column an ordering shuffled in place: the same
    # permutations as shuffling each ordering's row, without transposing 10 million indices after
    orders = np.repeat(np.arange(len(a), dtype=np.int32)[:, None], n_orderings, axis=1)
    rng.permuted(orders, axis=0, out=orders)
    ratings = np.full(n_orderings * n_models, float(initial))
    first = np.arange(n_orderings) * n_models  # where each ordering's ratings start
    per_point = np.log(10.0) / 400  # 10 ** (d / 400) as exp(d * per_point): a power took 4x an exp
    for played in orders:
        at_a, at_b = first + a[played], first + b[played]
        rating_a, rating_b = ratings[at_a], ratings[at_b]
        expected_a = 1.0 / (1.0 + np.exp((rating_b - rating_a) * per_point))
        change = k * (score_a[played] - expected_a)
        ratings[at_a] = rating_a + change
        ratings[at_b] = rating_b - change
    return ratings.reshape(n_orderings, n_models)
