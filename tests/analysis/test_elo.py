"""elo_ratings(): the paper's Elo (K=32, initial 1000, mean over random orderings)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qlora_analysis import elo_ratings


def judgments_from_strengths(strengths: dict[str, float], n: int, seed: int) -> pd.DataFrame:
    """Bradley-Terry matches: a beats b with probability s_a / (s_a + s_b); a tenth are ties."""
    rng = np.random.default_rng(seed)
    names = list(strengths)
    rows = []
    for _ in range(n):
        a, b = rng.choice(names, size=2, replace=False)
        if rng.random() < 0.1:
            winner = "tie"
        else:
            winner = "a" if rng.random() < strengths[a] / (strengths[a] + strengths[b]) else "b"
        rows.append({"model_a": a, "model_b": b, "winner": winner})
    return pd.DataFrame(rows)


def test_order_of_known_strengths_is_recovered():
    strengths = {"m0": 1.0, "m1": 2.0, "m2": 4.0, "m3": 8.0, "m4": 16.0}
    table = elo_ratings(judgments_from_strengths(strengths, 1000, seed=1), n_orderings=2000)
    assert list(table.columns) == ["model", "elo", "lower", "upper", "matches"]
    assert list(table["model"]) == ["m4", "m3", "m2", "m1", "m0"]
    assert (table["lower"] <= table["elo"]).all() and (table["elo"] <= table["upper"]).all()
    assert table["elo"].mean() == pytest.approx(1000, abs=1e-6)  # Elo conserves the total
    assert table["matches"].sum() == 2000


def test_seeded_and_ties_move_nothing_between_equals():
    ties = pd.DataFrame([{"model_a": "x", "model_b": "y", "winner": "tie"}] * 20)
    table = elo_ratings(ties, n_orderings=100)
    assert table["elo"].tolist() == [1000.0, 1000.0]
    games = judgments_from_strengths({"p": 1.0, "q": 3.0, "r": 9.0}, 300, seed=2)
    assert elo_ratings(games, n_orderings=500, seed=7).equals(elo_ratings(games, n_orderings=500, seed=7))


def test_a_single_match_moves_ratings_by_k_over_two():
    one = pd.DataFrame([{"model_a": "w", "model_b": "l", "winner": "a"}])
    table = elo_ratings(one, k=32, initial=1000, n_orderings=10).set_index("model")
    assert table.loc["w", "elo"] == pytest.approx(1016) and table.loc["l", "elo"] == pytest.approx(984)


def test_bad_judgments_are_refused():
    with pytest.raises(ValueError, match="missing columns winner"):
        elo_ratings(pd.DataFrame([{"model_a": "x", "model_b": "y"}]))
