"""The report's section "The 4-bit formats of 2026" on synthetic records in the real schema: a
verdict in every row, each from its rule; the codebook-or-scale decomposition; the claims
table's rows beyond the paper; the KL-vs-bits plot with every format labelled."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qlora_analysis.collect import collect
from qlora_analysis.tables.claims import claims
from qlora_analysis.tables.formats_2026 import TITLE, decomposition, formats_2026
from synthetic_runs import write_run

BOOKS = {"nf4": 1.0, "e2m1": 1.6, "int4": 3.0}  # the codebook moves KL most
SCALES = {"fp32": 1.0, "dq8": 1.02, "e8m0": 1.3, "e4m3": 1.08}
BITS = {"fp32": 32, "dq8": 8.125, "e8m0": 8, "e4m3": 8}


def ptq(path, dtype: str, scale: str, blocksize: int, kl: float, bits: float, checkpoint=None):
    overrides = {"dtype": dtype, "dtype.backend": "lab", "dtype.scale": scale, "dtype.double_quant": scale == "dq8",
                 "dtype.blocksize": blocksize, "train.max_steps": 0}
    if checkpoint is not None:
        overrides["model.checkpoint"] = checkpoint
    write_run(path, overrides,
              {"kl_to_base": kl / 1e3, "kl_to_base_ci": [kl * 0.98 / 1e3, kl * 1.02 / 1e3], "kl_to_base_p99": kl / 1e2,
               "top1_agree": 0.99, "ppl_ratio": 1.0 + kl / 1e3, "ref_ppl": 30.0}, bits=bits)


@pytest.fixture
def study(tmp_path):
    i = 0
    for book, book_kl in BOOKS.items():
        for scale, scale_kl in SCALES.items():
            for blocksize in (16, 32, 64):
                ptq(tmp_path / "cross" / str(i), book, scale, blocksize, book_kl * scale_kl * (blocksize / 32) ** 0.3,
                    4 + BITS[scale] / blocksize)
                i += 1
    named = {"mxfp4": ("e8m0", 32, 1.6 * 1.3, 4.25), "nvfp4": ("e4m3", 16, 0.6, 4.5), "q4_0": ("fp16", 32, 1.2, 4.5),
             "q4_k": ("q4_k", 32, 0.9, 4.5), "hqq4": ("hqq", 64, 1.4, 4.5)}
    for checkpoint in (200, None):
        for name, (scale, blocksize, kl, bits) in named.items():
            ptq(tmp_path / "named" / f"{name}-{checkpoint}", name, scale, blocksize, kl, bits, checkpoint)
            i += 1
    gaps = {"bf16": 0.0, "nf4": 0.001, "mxfp4": 0.002, "nvfp4": 0.0, "q4_0": 0.2, "q4_k": 0.001, "hqq4": 0.003}
    for dtype, gap in gaps.items():
        for seed in range(3):
            write_run(tmp_path / "ft" / f"{dtype}-{seed}", {"dtype": dtype, "train.seed": seed, "lora.targets": "all",
                                                             "dtype.backend": "none" if dtype == "bf16" else "lab",
                                                             "dtype.double_quant": {"bf16": None, "nf4": True}.get(dtype, False)},
                      {"eval_loss": 2.0 + gap + 0.01 * seed})
    return tmp_path


def test_a_verdict_in_every_row_each_from_its_rule(study):
    made = formats_2026(collect(study), None)
    assert made.title == TITLE
    verdicts = made.frame["verdict"].to_dict()
    assert all(verdicts.values()) and len(verdicts) >= 10
    assert verdicts["NVFP4 is closer to 16-bit than NF4+DQ, at their own bits (4.50 vs 4.13)"] == "holds"
    assert verdicts["NVFP4 is closer to 16-bit than NF4 at equal bits (4.50: NF4 with an fp32 absmax per 64)"] == "holds"
    for shown in ("E2M1", "NF4", "Int4"):
        assert verdicts[f"A power-of-two scale (MXFP4's e8m0) costs fidelity against an fp32 absmax ({shown}, "
                        f"blocks of 32)"] == "holds"
    assert verdicts["The codebook explains more of the KL than the scale format (two-way, log KL)"] == "holds"
    assert verdicts["NVFP4 fine-tuned matches 16-bit LoRA (its gap within the seed floor)"] == "holds"
    assert verdicts["Q4_0 fine-tuned matches 16-bit LoRA (its gap within the seed floor)"] == \
        "does not hold (4-bit worse)"
    # the formats' own table: each row its verdict against NF4+DQ
    assert "vs NF4+DQ (final)" in made.note and "the reference" in made.note


def test_the_decomposition_tells_which_factor_moves_kl(study):
    runs = collect(study)
    cross = runs[runs["dtype"].isin(list(BOOKS)) & runs["dtype.scale"].isin(list(SCALES))]
    evidence, shares = decomposition(cross[cross["model.checkpoint"].isna()].drop_duplicates("run_id"))
    assert list(shares["blocksize"]) == [16, 32, 64]
    assert (shares["codebook share"] > 0.8).all() and (shares["scale share"] < 0.2).all()
    assert evidence.difference > 0.6 and evidence.half < 1e-6  # the same split at every block size


def test_the_claims_table_carries_the_new_verdicts(study):
    made = claims(collect(study), None)
    beyond = [claim for claim in made.frame.index if claim.startswith("Beyond the paper: NVFP4")]
    assert beyond and all(made.frame.loc[claim, "verdict"] for claim in beyond)


def test_the_report_opens_the_section_and_labels_every_format(study, tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "qlora_analysis", str(study), "--out", str(out)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (out / "report.md").read_text()
    assert f"### {TITLE}" in report
    assert (out / "plots" / "formats_kl_vs_bits.png").stat().st_size > 10_000
