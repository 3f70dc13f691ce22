"""The 4-bit formats of 2026 (MXFP4, NVFP4, Q4_0, Q4_K, HQQ) against the paper's NF4 + DQ: one
table of verdicts and one of the formats' fidelity, each row with its verdict.

Evidence, as in the claims table (claims.py): after post-training quantization, the KL to the
unquantized base of the final checkpoint, a difference's interval from both runs' intervals over
text windows (also its floor); after fine-tuning, held-out loss paired over seeds, the floor the
spread between seeds. Codebook or scale format: over the cross (codebook x scale format x block
size), the share of the variance of log KL each main effect explains, per block size; the
difference of the shares, with a Student's t interval over the block sizes.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from qlora_analysis.intervals import t_975
from qlora_analysis.tables import Table, table
from qlora_analysis.tables.evidence import (Evidence, config_label, finetuned, flipped, paired_gap, ptq_gap,
                                            seed_floor, verdict)
from qlora_analysis.tables.fidelity import KL_SCALE, ptq_fidelity

TITLE = "The 4-bit formats of 2026"
NAMED = ("MXFP4", "NVFP4", "Q4_0", "Q4_K", "HQQ4")
CROSS_BOOKS, CROSS_SCALES = ("nf4", "e2m1", "int4"), ("fp32", "dq8", "e8m0", "e4m3")


def _final_ptq(runs: pd.DataFrame) -> pd.DataFrame:
    have = ptq_fidelity(runs)
    return have[have["checkpoint"] == "final"] if not have.empty else have


def _cell(have: pd.DataFrame, name: str, scale: str, blocksize: int) -> pd.DataFrame:
    return have[(have["dtype"] == name) & (have["dtype.scale"] == scale) & (have["dtype.blocksize"] == blocksize)]


def _by_label(have: pd.DataFrame, blocksize: int | None = None) -> pd.DataFrame:
    if blocksize is not None and "dtype.blocksize" in have:
        have = have[have["dtype.blocksize"] == blocksize]
    return have.sort_values("dtype.backend").drop_duplicates(subset=["dtype_label"]).set_index("dtype_label")


def _named_label(have: pd.DataFrame, dtype: str, scale: str, blocksize: int, label: str) -> pd.DataFrame:
    """One cell of the cross under a name of its own (`NF4, fp32, 64` -> `NF4 (4.5 bits)`)."""
    cell = _cell(have, dtype, scale, blocksize).head(1)
    return cell.assign(dtype_label=label) if not cell.empty else cell


def decomposition(have: pd.DataFrame) -> tuple[Evidence, pd.DataFrame] | None:
    """Per block size of the cross: the share of log KL's variance the codebook and the scale
    format explain (two-way main effects); the difference codebook - scale with its interval."""
    if have.empty or "dtype.scale" not in have:
        return None
    rows = []
    for blocksize, cells in have.groupby("dtype.blocksize"):
        grid = cells.drop_duplicates(["dtype", "dtype.scale"]).pivot(index="dtype", columns="dtype.scale",
                                                                       values="kl_to_base")
        grid = grid.reindex(index=list(CROSS_BOOKS), columns=list(CROSS_SCALES))
        if grid.isna().any().any():
            continue
        logs = np.log(grid.to_numpy())
        centred = logs - logs.mean()
        total = float((centred ** 2).sum())
        book = float(logs.shape[1] * ((logs.mean(axis=1) - logs.mean()) ** 2).sum()) / total
        scale = float(logs.shape[0] * ((logs.mean(axis=0) - logs.mean()) ** 2).sum()) / total
        rows.append({"blocksize": int(blocksize), "codebook share": book, "scale share": scale,
                     "interaction share": 1 - book - scale})
    if len(rows) < 2:
        return None
    shares = pd.DataFrame(rows)
    diffs = shares["codebook share"] - shares["scale share"]
    half = float(t_975(len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs)))
    ours = (f"codebook {shares['codebook share'].mean():.2f}, scale format {shares['scale share'].mean():.2f} of "
            f"log KL's variance (block sizes {', '.join(map(str, shares['blocksize']))}); difference "
            f"{diffs.mean():+.2f} ± {half:.2f}")
    return Evidence(float(diffs.mean()), half, half, ours, "share of variance"), shares


def evidence(runs: pd.DataFrame) -> list[tuple[str, str, Evidence, tuple[str, str] | None]]:
    """(claim, reference, evidence, equality) rows: what the formats' table and the claims table show."""
    rows: list[tuple[str, str, Evidence, tuple[str, str] | None]] = []
    have = _final_ptq(runs)
    if not have.empty and "dtype.scale" in have:
        at64 = _by_label(have, 64)
        nvfp4 = _by_label(have[have["dtype"] == "nvfp4"])
        both = pd.concat([nvfp4, at64[at64.index == "NF4+DQ"]])
        e = ptq_gap(both, "NVFP4", "NF4+DQ")
        if e is not None:
            rows.append(("NVFP4 is closer to 16-bit than NF4+DQ, at their own bits (4.50 vs 4.13)",
                         "NVIDIA: NVFP4 for 4-bit weights", e, None))
        equal = pd.concat([nvfp4, _named_label(have, "nf4", "fp32", 64, "NF4 (4.50 bits)").set_index("dtype_label")])
        e = ptq_gap(equal, "NVFP4", "NF4 (4.50 bits)")
        if e is not None:
            rows.append(("NVFP4 is closer to 16-bit than NF4 at equal bits (4.50: NF4 with an fp32 absmax per 64)",
                         "NVIDIA: NVFP4 for 4-bit weights", e, None))
        for book, shown in (("e2m1", "E2M1"), ("nf4", "NF4"), ("int4", "Int4")):
            fp32 = _named_label(have, book, "fp32", 32, f"{shown} + fp32")
            e8m0 = _named_label(have, book, "e8m0", 32, f"{shown} + e8m0")
            pair = pd.concat([fp32, e8m0]).set_index("dtype_label") if not fp32.empty and not e8m0.empty else None
            e = ptq_gap(pair, f"{shown} + fp32", f"{shown} + e8m0") if pair is not None else None
            if e is not None:
                rows.append((f"A power-of-two scale (MXFP4's e8m0) costs fidelity against an fp32 absmax ({shown}, "
                             f"blocks of 32)", "OCP MX v1.0: E8M0 scales", e, None))
        split = decomposition(have[have["dtype"].isin(CROSS_BOOKS) & have["dtype.scale"].isin(CROSS_SCALES)])
        if split is not None:
            rows.append(("The codebook explains more of the KL than the scale format (two-way, log KL)",
                         "the paper compared codebooks only", split[0], None))
    fine = finetuned(runs)
    if not fine.empty:
        floor = seed_floor(fine)
        bf16 = config_label(fine, "BF16", "all")
        for name in ("NF4+DQ",) + NAMED:
            other = config_label(fine, name, "all")
            e = paired_gap(fine, bf16, other, floor) if bf16 and other else None
            if e is not None:
                rows.append((f"{name} fine-tuned matches 16-bit LoRA (its gap within the seed floor)",
                             "Table 4's question for NF4+DQ", flipped(e), ("4-bit better", "4-bit worse")))
    return rows


def formats_fidelity(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Per named format (and NF4+DQ): bits, KL by checkpoint, and its verdict against NF4+DQ at the
    final checkpoint ("closer to 16-bit than NF4+DQ")."""
    have = ptq_fidelity(runs)
    if have.empty or "dtype.scale" not in have:
        return None
    mine = have[have["dtype_label"].isin(("NF4+DQ",) + NAMED)]
    mine = mine[(mine["dtype_label"] != "NF4+DQ") | (mine["dtype.blocksize"] == 64)]
    if mine["dtype_label"].nunique() < 2:
        return None
    final = _by_label(mine[mine["checkpoint"] == "final"])
    rows, numbers = [], []
    for label, group in mine.groupby("dtype_label"):
        row = {"bits/param": f"{group['bits_per_param'].iloc[0]:.3f}"}
        for name, cell in group.drop_duplicates("checkpoint").set_index("checkpoint").iterrows():
            row[f"KL {name}"] = f"{cell['kl_to_base'] * KL_SCALE:.3f}"
            numbers.append({"format": label, "checkpoint": name, "bits_per_param": cell["bits_per_param"],
                            "kl_to_base": cell["kl_to_base"], "kl_to_base_lo": cell["kl_to_base_lo"],
                            "kl_to_base_hi": cell["kl_to_base_hi"]})
        e = ptq_gap(final, label, "NF4+DQ") if label != "NF4+DQ" else None
        row["vs NF4+DQ (final)"] = "the reference" if label == "NF4+DQ" else (verdict(e) if e else "no final run")
        rows.append(pd.Series(row, name=label))
    frame = pd.DataFrame(rows)
    frame = frame[sorted(frame.columns, key=lambda c: (c != "bits/param", c.startswith("vs"), c))]
    return frame, pd.DataFrame(numbers)


@table("formats_2026")
def formats_2026(runs, judgments):
    if runs.empty or "dtype" not in runs or "dtype.scale" not in runs:
        return None
    rows = evidence(runs)
    if not rows:
        return None
    frame = pd.DataFrame([{"claim": claim, "reference": reference, "ours (95% interval)": e.ours,
                           "noise floor": f"{e.floor:.4f} {e.unit}", "verdict": verdict(e, equality)}
                          for claim, reference, e, equality in rows]).set_index("claim")
    note = ("Verdicts: holds / reversed / below the noise floor (ordering claims); holds / does not hold (\"matches\" "
            "claims). PTQ rows: KL to the unquantized final checkpoint in 10^-3 nats, floor = the difference's 95% "
            "interval over text windows. Codebook or scale format: over codebook (NF4, E2M1, Int4) x scale format "
            "(fp32, dq8, e8m0, e4m3) per block size (16, 32, 64), the main effects' shares of log KL's variance; "
            "interval over the block sizes. Fine-tuning rows: held-out loss, paired over seeds, floor = the spread "
            "between seeds.")
    fidelity = formats_fidelity(runs)
    if fidelity is not None:
        shown = fidelity[0].to_markdown()
        note += f"\n\nThe formats' fidelity (KL in 10^-3 nats; verdict: closer to 16-bit than NF4+DQ?):\n\n{shown}"
    return Table("formats_2026", TITLE, frame, pd.DataFrame(), frame.reset_index(), note=note)
