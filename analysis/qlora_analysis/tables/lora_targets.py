"""Figure 2's data: RougeL by LoRA targets and rank, every seed shown."""

from __future__ import annotations

from qlora_analysis.tables import Table, table


@table("lora_targets")
def lora_targets(runs, judgments):
    if runs.empty or runs["rougeL"].dropna().empty:
        return None
    have = runs.dropna(subset=["rougeL"]).astype({"lora.targets": str, "lora.r": str, "train.seed": str})
    if have[["lora.targets", "lora.r"]].drop_duplicates().shape[0] < 2:
        return None
    keys = ["dtype_label", "lora.targets", "lora.r"]
    per_seed = have.pivot_table(index=keys, columns="train.seed", values="rougeL", aggfunc="mean")
    per_seed.columns = [f"seed {c}" for c in per_seed.columns]
    stats = have.groupby(keys)["rougeL"].agg(["mean", "std", "size"])
    frame = per_seed.map(lambda v: "" if v != v else f"{v:.3f}")
    frame["mean ± sd"] = [f"{m:.3f}" + (f" ± {s:.3f}" if n > 1 else "") for m, s, n in
                          zip(stats["mean"], stats["std"], stats["size"])]
    numbers = have[keys + ["train.seed", "rougeL", "run_id"]].sort_values(keys + ["train.seed"])
    support = stats[["size"]].rename(columns={"size": "runs"})
    return Table("lora_targets", "Figure 2 data: RougeL by LoRA targets and r, every seed", frame, support, numbers,
                 note="RougeL of greedy answers to held-out sources; one column per seed.")
