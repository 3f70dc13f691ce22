"""Output fidelity of quantized bases (eval.fidelity): KL to the unquantized base by data type
against pretraining progress (the base's checkpoints), and by data type x blocksize; and what
each checkpoint is (its held-out perplexity and weight kurtosis)."""

from __future__ import annotations

import pandas as pd

from qlora_analysis.collect import plain_lora
from qlora_analysis.tables import Table, table

KL_SCALE = 1e3  # cells in 10^-3 nats: the 4-bit types' KLs are a few thousandths


def ptq_fidelity(runs: pd.DataFrame) -> pd.DataFrame:
    """Eval-only runs that measured fidelity, with a readable checkpoint column."""
    if runs.empty or "kl_to_base" not in runs or "train.max_steps" not in runs:
        return runs.iloc[0:0]
    runs = plain_lora(runs)  # an adapter init's eval-only runs measure the init, not the storage
    have = runs[(runs["train.max_steps"] == 0) & runs["kl_to_base"].notna()].copy()
    steps = have["model.checkpoint"] if "model.checkpoint" in have else pd.Series(None, index=have.index)
    have["checkpoint"] = [checkpoint_name(s) for s in steps]
    return have


def checkpoint_name(step) -> str:
    return "final" if step is None or step != step else f"step {int(step)}"


def kl_cell(row) -> str:
    lo, hi = row.get("kl_to_base_lo"), row.get("kl_to_base_hi")
    interval = f" [{lo * KL_SCALE:.3f}, {hi * KL_SCALE:.3f}]" if lo is not None and lo == lo else ""
    return f"{row['kl_to_base'] * KL_SCALE:.3f}{interval}"


def checkpoint_order(name: str) -> tuple:
    """Sort key: step 200 < step 600 < final."""
    return (name == "final", int(name.split()[1]) if name != "final" else 0)


def checkpoints_in_order(names) -> list[str]:
    return sorted(set(names), key=checkpoint_order)


def _kl_table(have: pd.DataFrame, columns: str, column_order: list) -> tuple[pd.DataFrame, pd.DataFrame]:
    have = have.drop_duplicates(subset=["dtype_label", columns])  # the first of a cell's runs
    cells = have.assign(cell=[kl_cell(r) for _, r in have.iterrows()])
    frame = cells.pivot(index="dtype_label", columns=columns, values="cell")[column_order]
    final = cells.pivot(index="dtype_label", columns=columns, values="kl_to_base")[column_order[-1]]
    frame = frame.loc[final.sort_values().index]  # best (lowest KL) first, at the last column
    numbers = have.reindex(columns=["dtype_label", columns, "kl_to_base", "kl_to_base_lo", "kl_to_base_hi",
                                    "kl_to_base_p99", "top1_agree", "ppl_ratio", "bits_per_param", "weight_sqnr_db",
                                    "weight_sqnr_min_db"])  # a record without one of them: an empty column
    return frame, numbers


def orders(have: pd.DataFrame, columns: str, column_order: list) -> str:
    """Per column, the data types from closest to farthest (the 16-bit reference left out)."""
    said = []
    have = have.drop_duplicates(subset=["dtype_label", columns])
    for column in column_order:
        part = have[(have[columns] == column) & (have["bits_per_param"] < 16)].sort_values("kl_to_base")
        said.append(f"{column}: " + " < ".join(part["dtype_label"]))
    return "; ".join(said)


@table("fidelity_progress")
def fidelity_progress(runs, judgments):
    """KL to the unquantized base per data type at each pretraining checkpoint (blocksize 64)."""
    have = ptq_fidelity(runs)
    if "dtype.blocksize" in have:
        have = have[have["dtype.blocksize"].isna() | (have["dtype.blocksize"] == 64)]
    if have.empty or have["checkpoint"].nunique() < 2:
        return None
    have = have.sort_values("dtype.backend")  # a type on both backends (the blocksize sweep's): bitsandbytes' row
    order = checkpoints_in_order(have["checkpoint"])
    frame, numbers = _kl_table(have, "checkpoint", order)
    return Table("fidelity_progress", "Fidelity against pretraining progress: KL to the unquantized base",
                 frame, pd.DataFrame(), numbers,
                 note="Mean token KL divergence of the quantized base's next-token distribution from the "
                      "unquantized base's, in 10^-3 nats, with its 95% interval over text windows (eval-only "
                      "runs, blocksize 64, held-out library source). Lower is closer. Order, closest first: "
                      + orders(have, "checkpoint", order) + ".")


@table("fidelity_blocksize")
def fidelity_blocksize(runs, judgments):
    """KL per data type x blocksize at the final checkpoint, our codecs (no DQ)."""
    have = ptq_fidelity(runs)
    if have.empty or "dtype.blocksize" not in have:
        return None
    have = have[(have["checkpoint"] == "final") & (have["dtype.backend"] == "lab") & (have["dtype.double_quant"] == False)]  # noqa: E712
    have = have.dropna(subset=["dtype.blocksize"]).assign(blocksize=lambda f: f["dtype.blocksize"].astype(int))
    swept = have.groupby("dtype_label")["blocksize"].nunique()
    have = have[have["dtype_label"].isin(swept[swept > 1].index)]  # data types measured at one blocksize only: elsewhere
    if have.empty or have["blocksize"].nunique() < 2:
        return None
    order = sorted(have["blocksize"].unique())
    frame, numbers = _kl_table(have, "blocksize", order)
    bits = have.pivot_table(index="dtype_label", columns="blocksize", values="bits_per_param", aggfunc="first")
    frame = frame.combine(bits.loc[frame.index, order], lambda cells, b: cells + b.map(lambda v: f" · {v:.3g} bits"))
    frame.columns = [f"b{b}" for b in frame.columns]
    return Table("fidelity_blocksize", "Fidelity by blocksize: KL to the unquantized base", frame,
                 pd.DataFrame(), numbers,
                 note="Final checkpoint, backend lab, no double quantization; KL in 10^-3 nats [95% interval] · "
                      "bits per parameter (Int4-affine stores a zero point per block beside its scale). "
                      "Order, closest first: " + orders(have, "blocksize", order) + ".")


@table("checkpoints")
def checkpoints(runs, judgments):
    """What each pretraining checkpoint is: its held-out perplexity (the unquantized reference's,
    on the fidelity text) and its linear weights' kurtosis."""
    have = ptq_fidelity(runs)
    if have.empty or have["checkpoint"].nunique() < 2:
        return None
    order = checkpoints_in_order(have["checkpoint"])
    per = have.groupby("checkpoint").agg(held_out_ppl=("ref_ppl", "first"), weight_kurtosis=("weight_kurtosis", "first"),
                                         runs=("run_id", "size")).loc[order]
    frame = per[["held_out_ppl", "weight_kurtosis"]].round(3)
    frame.columns = ["held-out perplexity (16-bit)", "weight kurtosis (Gaussian: 3)"]
    return Table("checkpoints", "The base's pretraining checkpoints", frame, pd.DataFrame(),
                 per.reset_index(),
                 note="Perplexity of the unquantized checkpoint on the held-out text the fidelity runs score; "
                      "kurtosis of its linear layers' weights, mean over layers.")
