"""Table 7: Elo ratings from pairwise judgments (K=32, initial 1000, 10,000 orderings)."""

from __future__ import annotations

import pandas as pd

from qlora_analysis.elo import elo_ratings
from qlora_analysis.tables import Table, table


@table("elo")
def elo(runs, judgments):
    if judgments.empty or judgments["winner"].dropna().empty:
        return None
    numbers = elo_ratings(judgments)
    frame = numbers.set_index("model").apply(
        lambda r: pd.Series({"Elo": f"{r['elo']:.0f} [{r['lower']:.0f}, {r['upper']:.0f}]"}), axis=1)
    support = numbers.set_index("model")[["matches"]]
    return Table("elo", "Table 7: Elo ratings with 95% intervals", frame, support, numbers,
                 note="K=32, initial 1000; mean over 10,000 random orderings of the matches (seed 0), "
                      "2.5th-97.5th percentiles.")
