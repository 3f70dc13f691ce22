"""The claims table: a verdict in every row, each verdict from its rule (holds, reversed, below
the noise floor; "matches" claims holds / does not hold), on synthetic records in the real
schema: PTQ fidelity runs and fine-tuning runs paired over seeds."""

from __future__ import annotations

import pytest

from qlora_analysis.collect import collect
from qlora_analysis.tables.claims import claims
from qlora_analysis.tables.evidence import Evidence, verdict
from synthetic_runs import write_run


@pytest.mark.parametrize("difference,half,floor,expected", [
    (0.3, 0.1, 0.05, "holds"), (-0.3, 0.1, 0.05, "reversed"), (0.05, 0.1, 0.05, "below the noise floor"),
    (0.3, 0.1, 0.5, "below the noise floor"),  # outside zero, but within the spread between seeds
])
def test_ordering_verdicts(difference, half, floor, expected):
    assert verdict(Evidence(difference, half, floor, "", "")) == expected


def test_matches_verdicts_name_the_side():
    sides = ("4-bit better", "4-bit worse")
    assert verdict(Evidence(0.001, 0.0005, 0.002, "", ""), sides) == "holds"
    assert verdict(Evidence(0.01, 0.02, 0.002, "", ""), sides) == "holds"  # interval holds 0
    assert verdict(Evidence(-0.01, 0.002, 0.002, "", ""), sides) == "does not hold (4-bit worse)"


def test_the_table_from_records(tmp_path):
    ptq = {"NF4": (0.5, 4.5), "FP4": (0.9, 4.5), "Int4": (0.85, 4.5), "NF4+DQ": (0.51, 4.127), "FP4-E3M0": (2.0, 4.5)}
    for i, (label, (kl, bits)) in enumerate(ptq.items()):
        dtype = {"NF4": "nf4", "NF4+DQ": "nf4", "FP4": "fp4", "Int4": "int4", "FP4-E3M0": "fp4_e3m0"}[label]
        write_run(tmp_path / "ptq" / str(i), {"dtype": dtype, "dtype.double_quant": label == "NF4+DQ",
                                              "train.max_steps": 0},
                  {"kl_to_base": kl / 1e3, "kl_to_base_ci": [(kl - 0.02) / 1e3, (kl + 0.02) / 1e3]}, bits=bits)
    losses = {("bf16", None, "all"): 2.00, ("nf4", True, "all"): 2.001, ("nf4", False, "all"): 2.002,
              ("nf4", True, "attn"): 2.10, ("nf4", True, "qv"): 2.003}
    for i, ((dtype, dq, targets), loss) in enumerate(losses.items()):
        for seed in range(3):
            write_run(tmp_path / "fine" / f"{i}-{seed}", {"dtype": dtype, "dtype.double_quant": dq,
                                                           "lora.targets": targets, "train.seed": seed},
                      {"eval_loss": loss + 0.01 * seed + 0.0001 * i * seed})
    made = claims(collect(tmp_path), None)
    verdicts = made.frame["verdict"].to_dict()
    assert all(verdicts.values())
    assert verdicts["After PTQ, NF4 is closer to 16-bit than FP4"] == "holds"
    assert verdicts["After PTQ, FP4 is closer to 16-bit than Int4"] == "reversed"
    assert verdicts["FP4-E3M0 beats FP4-E2M1 after PTQ"] == "reversed"
    assert verdicts["Double quantization costs nothing after PTQ"] == "holds"
    assert verdicts["Double quantization saves 0.373 bits per parameter"] == "holds"
    assert verdicts["LoRA on all linear layers beats LoRA on attn only (NF4+DQ)"] == "holds"
    assert verdicts["LoRA on all linear layers beats LoRA on qv only (NF4+DQ)"] == "below the noise floor"
    assert verdicts["4-bit fine-tuning matches 16-bit (NF4+DQ vs BF16, LoRA on all layers)"] == "holds"
    assert "3 seeds, paired" in made.frame.loc["LoRA on all linear layers beats LoRA on attn only (NF4+DQ)",
                                               "ours (95% interval)"]
