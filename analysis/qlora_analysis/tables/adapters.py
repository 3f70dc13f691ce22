"""Adapter variants (LoftQ, PiSSA, DoRA, rsLoRA) against plain LoRA on each data type: how much of
the quantization error each wins back at init (KL of quantized base + initialized adapter to the
16-bit base, eval-only runs), and what is left after fine-tuning (held-out loss paired over seeds
with plain LoRA of the same data type), with what each costs (trainable parameters, tokens/s).

Only runs of a sweep that varies the adapter (`lora.init`, `lora.dora` or `lora.rslora` on the
command line) are read, so the data-type study's own LoRA runs never stand in for its baseline.
"""

from __future__ import annotations

import math

import pandas as pd

from qlora_analysis.intervals import mean_interval, shown
from qlora_analysis.tables import Table, table
from qlora_analysis.tables.evidence import Evidence, paired_gap, seed_floor, verdict
from qlora_analysis.tables.fidelity import KL_SCALE

BASELINE = "LoRA"


def _study(runs: pd.DataFrame) -> pd.DataFrame:
    if runs.empty or "adapter_axis" not in runs or "train.max_steps" not in runs:
        return runs.iloc[0:0]
    return runs[runs["adapter_axis"].fillna(False).astype(bool)]


def _init_name(adapter: str) -> str:
    """DoRA and rsLoRA start from their init unchanged (DoRA's magnitude is the weight's own norm):
    their KL at init is the init's."""
    return adapter.split("+")[0]


def init_kl(study: pd.DataFrame) -> pd.DataFrame:
    """Eval-only runs: KL at init by data type, init and rank (the first run of each cell)."""
    have = study[(study["train.max_steps"] == 0) & study["kl_to_base"].notna()] if "kl_to_base" in study else study.iloc[0:0]
    have = have.assign(init=[_init_name(a) for a in have["adapter"]])
    return have.drop_duplicates(subset=["dtype_label", "init", "lora.r"])


def init_gain(kl: pd.DataFrame, dtype: str, init: str, rank) -> Evidence | None:
    """KL(LoRA) - KL(init) at one rank, 10^-3 nats, its interval from both runs' window intervals."""
    cell = lambda name: kl[(kl["dtype_label"] == dtype) & (kl["init"] == name) & (kl["lora.r"] == rank)]
    base, ours = cell(BASELINE), cell(init)
    if base.empty or ours.empty:
        return None
    a, b = base.iloc[0], ours.iloc[0]
    half = math.hypot((a["kl_to_base_hi"] - a["kl_to_base_lo"]) / 2, (b["kl_to_base_hi"] - b["kl_to_base_lo"]) / 2)
    diff = (a["kl_to_base"] - b["kl_to_base"]) * KL_SCALE
    return Evidence(diff, half * KL_SCALE, half * KL_SCALE, f"{b['kl_to_base'] * KL_SCALE:.3f}", "10^-3 nats")


@table("adapters")
def adapters(runs, judgments):
    study = _study(runs)
    if study.empty or study["adapter"].nunique() < 2:
        return None
    kl = init_kl(study)
    fine = study[(study["train.max_steps"] > 0) & study["eval_loss"].notna()]
    floor = seed_floor(fine) if not fine.empty else math.nan
    ranks = sorted(kl["lora.r"].dropna().unique()) if not kl.empty else []
    rows, numbers = [], []
    cells = sorted({(d, a) for d, a in zip(study["dtype_label"], study["adapter"])},
                   key=lambda c: (c[0], c[1] != BASELINE, c[1]))
    for dtype, adapter in cells:
        row = {"data type": dtype, "adapter": adapter}
        number = dict(row)
        for rank in ranks:
            gain = init_gain(kl, dtype, _init_name(adapter), rank)
            base = kl[(kl["dtype_label"] == dtype) & (kl["init"] == BASELINE) & (kl["lora.r"] == rank)]
            if gain is None:
                continue
            won = gain.difference / (base.iloc[0]["kl_to_base"] * KL_SCALE) if not base.empty else math.nan
            row[f"KL at init, r{int(rank)} (won back)"] = (
                f"{gain.ours} ({won:+.0%}, {verdict(gain)})" if _init_name(adapter) != BASELINE else gain.ours)
            number.update({f"kl_init_r{int(rank)}": float(gain.ours), f"kl_init_won_back_r{int(rank)}": won})
        mine = fine[(fine["dtype_label"] == dtype) & (fine["adapter"] == adapter)]
        if not mine.empty:
            mean, half, seeds = mean_interval(mine["eval_loss"])
            row["eval loss after fine-tuning"] = shown(mean, half, 4) + f" ({seeds} seeds)"
            baseline = fine[(fine["dtype_label"] == dtype) & (fine["adapter"] == BASELINE)]
            if adapter != BASELINE and not baseline.empty:
                gap = paired_gap(fine, mine["config"].iloc[0], baseline["config"].iloc[0], floor)
                if gap is not None:
                    row["vs LoRA (loss gap, paired)"] = f"{gap.difference:+.4f} ± {gap.half:.4f} ({verdict(gap)})"
                    number.update(loss_gap=gap.difference, loss_gap_half=gap.half, verdict=verdict(gap))
            row["trainable"] = f"{int(mine['n_trainable'].iloc[0]):,}" if mine["n_trainable"].notna().any() else ""
            row["tokens/s"] = f"{mine['tokens_per_s'].mean():.0f}" if mine["tokens_per_s"].notna().any() else ""
            number.update(eval_loss=mean, eval_loss_half=half, seeds=seeds, n_trainable=mine["n_trainable"].iloc[0],
                          tokens_per_s=mine["tokens_per_s"].mean())
        rows.append(row)
        numbers.append(number)
    frame = pd.DataFrame(rows).set_index(["data type", "adapter"]).fillna("")
    after = ["eval loss after fine-tuning", "vs LoRA (loss gap, paired)", "trainable", "tokens/s"]
    frame = frame[[c for c in frame.columns if c.startswith("KL")] + [c for c in after if c in frame.columns]]
    return Table("adapters", "Adapter variants: quantization error won back at init, loss after fine-tuning",
                 frame, pd.DataFrame(), pd.DataFrame(numbers),
                 note="KL at init: mean token KL (10^-3 nats) of the quantized base + the initialized adapter to "
                      "the unquantized base on held-out text (eval-only runs; DoRA and rsLoRA start as their "
                      "init does), with the share of plain LoRA's KL it removes and a verdict on that gain "
                      "(holds: lower KL beyond both runs' 95% intervals over text windows). Eval loss: mean and "
                      "95% interval over seeds. Loss gap: LoRA's loss minus the variant's, paired over seeds "
                      "(positive: the variant is better); verdict against the spread between seeds "
                      f"(pooled sd {floor:.4f} nats). Trainable: adapter parameters (DoRA adds a magnitude per "
                      "output). tokens/s: training throughput on this machine.")
