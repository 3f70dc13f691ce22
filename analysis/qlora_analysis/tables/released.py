"""Fine-tuning a base as it was released quantized (a GGUF Q4_K file, an NVFP4 folder) against the
16-bit original quantized here to NF4+DQ: one row per release, each with its verdicts.

The study's runs (sweeps/micro_released*.yaml) measure fidelity against the 16-bit original the
releases were made from (`eval.fidelity_reference`): that is how they are told apart from every
other sweep's, and why the other tables leave them out (collect.plain_lora). Evidence as in the
claims table: at init, the KL to the original (eval-only runs), a difference's interval from both
runs' intervals over text windows; after fine-tuning, held-out loss paired over seeds, the floor
the spread between seeds.
"""

from __future__ import annotations

import pandas as pd

from qlora_analysis.tables import Table, table
from qlora_analysis.tables.evidence import config_label, paired_gap, ptq_gap, seed_floor, verdict
from qlora_analysis.tables.fidelity import KL_SCALE

TITLE = "Fine-tuning released weights: a GGUF and an NVFP4 release against NF4+DQ quantized here"
REFERENCE = "NF4+DQ"
REFERENCE_KEY = "eval.fidelity_reference"


def study_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The released study's runs: those measured against an original named by hand."""
    if runs.empty or REFERENCE_KEY not in runs or "train.max_steps" not in runs:
        return runs.iloc[0:0]
    return runs[runs[REFERENCE_KEY].notna()]


def _init_words(e) -> str:
    return {"holds": "closer to the original than NF4+DQ", "reversed": "farther from the original than NF4+DQ",
            "below the noise floor": "as close as NF4+DQ (below the noise floor)"}[verdict(e)]


@table("released")
def released(runs, judgments):
    mine = study_runs(runs)
    if mine.empty:
        return None
    ptq = mine[(mine["train.max_steps"] == 0) & mine["kl_to_base"].notna()] if "kl_to_base" in mine else mine.iloc[0:0]
    ptq = ptq.drop_duplicates(subset=["dtype_label"]).set_index("dtype_label")
    fine = mine[(mine["train.max_steps"] > 0) & mine["eval_loss"].notna()] if "eval_loss" in mine else mine.iloc[0:0]
    floor = seed_floor(fine) if not fine.empty else float("nan")
    reference = config_label(fine, REFERENCE, "all") if not fine.empty else None
    labels = sorted(set(ptq.index) | set(fine["dtype_label"]))
    rows, numbers = [], []
    for label in [label for label in labels if label.endswith("(released)")]:
        row = {"bits/param": f"{mine[mine['dtype_label'] == label]['bits_per_param'].iloc[0]:.3f}"}
        init = ptq_gap(ptq, label, REFERENCE)  # KL(NF4+DQ) - KL(release): positive, the release is closer
        row["KL at init (10^-3 nats, to the 16-bit original)"] = init.ours if init else "no eval-only runs"
        row["verdict at init"] = _init_words(init) if init else "no verdict (a run missing)"
        other = config_label(fine, label, "all") if not fine.empty else None
        tuned = paired_gap(fine, reference, other, floor) if reference and other else None  # positive: the release worse
        row["held-out loss after fine-tuning"] = tuned.ours if tuned else "fewer than 2 shared seeds"
        row["seed floor"] = f"{floor:.4f}" if floor == floor else "n/a"
        said = verdict(tuned, ("the release worse", "the release better")) if tuned else None
        row["verdict after fine-tuning"] = ("matches NF4+DQ" if said == "holds" else said) if said else \
            "no verdict (fewer than 2 shared seeds)"
        rows.append(pd.Series(row, name=label))
        numbers.append({"release": label, "kl_nf4dq_minus_release": init.difference / KL_SCALE if init else None,
                        "kl_gap_half": init.half / KL_SCALE if init else None,
                        "loss_release_minus_nf4dq": tuned.difference if tuned else None,
                        "loss_gap_half": tuned.half if tuned else None, "seed_floor": floor})
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    frame.index.name = "base"
    nf4 = ptq.loc[REFERENCE] if REFERENCE in ptq.index else None
    note = ("Each release was made from the same 16-bit original (`python -m qlora_lab.release`: Q4_K by the gguf "
            "package's writer, NVFP4 in compressed-tensors' layout) and fine-tuned as stored; NF4+DQ is the original "
            "quantized here (bitsandbytes). At init: KL to the 16-bit original on held-out text, eval-only; the "
            "gap's interval from both runs' intervals over text windows"
            + (f" (NF4+DQ: {nf4['kl_to_base'] * KL_SCALE:.3f}, {nf4['bits_per_param']:.3f} bits/param)" if nf4 is not None
               else "") + ". After fine-tuning: held-out loss paired over seeds (the gap: the release's loss minus NF4+DQ's); "
            "\"matches\" when the gap is within the seed floor or its interval holds 0.")
    return Table("released", TITLE, frame, pd.DataFrame(), pd.DataFrame(numbers), note=note)
