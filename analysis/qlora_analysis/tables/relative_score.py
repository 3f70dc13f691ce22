"""Table 6: the Vicuna relative score against a reference system, with 95% intervals."""

from __future__ import annotations

import pandas as pd

from qlora_analysis.tables import Table, table


@table("relative_score")
def relative_score(runs, judgments):
    """A judge's 1-10 scores only (`--mode score`; the offline reference judge's RougeL against
    reference answers is not such a score); the reference is the model judged most often."""
    from qlora_analysis.relative_score import relative_scores

    if judgments.empty or "score_a" not in judgments:
        return None
    scored = judgments.dropna(subset=["score_a", "score_b"])
    scored = scored[scored["judge"] != "reference"] if "judge" in scored else scored
    if scored.empty:
        return None
    reference = pd.concat([scored["model_a"], scored["model_b"]]).value_counts().index[0]
    results = relative_scores(scored.to_dict("records"), reference)
    if not results:
        return None
    numbers = pd.DataFrame([vars(r) for r in results]).sort_values("percent", ascending=False)
    frame = numbers.set_index("model").apply(
        lambda r: pd.Series({"relative score %": f"{r['percent']:.1f} [{r['lower']:.1f}, {r['upper']:.1f}]"}), axis=1)
    support = numbers.set_index("model")[["n_prompts"]]
    return Table("relative_score", "Table 6: relative score with 95% intervals", frame, support, numbers,
                 note=f"Judge's total score as a percentage of {reference}'s, both orders averaged; "
                      "95% bootstrap interval over prompts.")
