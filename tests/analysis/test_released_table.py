"""The report's section on fine-tuning released weights, on synthetic records in the real schema:
one row per release, each with a verdict at init and after fine-tuning, each from its rule; the
study's runs (fidelity against a named original) stay out of every other table."""

from __future__ import annotations

from pathlib import Path

from qlora_analysis.collect import collect
from qlora_analysis.report import build_report
from qlora_analysis.tables.fidelity import ptq_fidelity
from qlora_analysis.tables.released import TITLE, released
from synthetic_runs import write_run

BASES = {"nf4": (None, True, 2.0, 0.0), "q4_k": ("gguf q4_k", False, 1.5, 0.0001),
         "nvfp4": ("nvfp4", False, 2.01, 0.2)}  # released as, double quant, KL at init (10^-3), loss gap


def study(root, reference: str = "/original"):
    for name, (released_as, dq, kl, gap) in BASES.items():
        common = {"dtype": name, "dtype.backend": "bnb" if name == "nf4" else "lab", "dtype.double_quant": dq,
                  "eval.fidelity_reference": reference, "lora.targets": "all"}
        if released_as:
            common["dtype.released"] = released_as
        write_run(root / "released_init" / name, {**common, "train.max_steps": 0},
                  {"kl_to_base": kl / 1e3, "kl_to_base_ci": [(kl - 0.05) / 1e3, (kl + 0.05) / 1e3]}, bits=4.5)
        for seed in range(3):
            write_run(root / "released" / f"{name}-{seed}", {**common, "train.seed": seed},
                      {"eval_loss": 2.0 + gap + 0.01 * seed}, bits=4.5)


def test_one_row_per_release_with_a_verdict_at_init_and_after_fine_tuning(tmp_path):
    study(tmp_path)
    made = released(collect(tmp_path), None)
    assert made.title == TITLE and "released" in made.title.lower()
    rows = made.frame.to_dict("index")
    assert set(rows) == {"Q4_K (released)", "NVFP4 (released)"}
    assert rows["Q4_K (released)"]["verdict at init"] == "closer to the original than NF4+DQ"
    assert rows["NVFP4 (released)"]["verdict at init"] == "as close as NF4+DQ (below the noise floor)"
    assert rows["Q4_K (released)"]["verdict after fine-tuning"] == "matches NF4+DQ"
    assert rows["NVFP4 (released)"]["verdict after fine-tuning"] == "does not hold (the release worse)"
    assert rows["NVFP4 (released)"]["held-out loss after fine-tuning"].startswith("loss NF4+DQ · all · r64 2.0100 vs")
    numbers = made.numbers.set_index("release")
    assert abs(numbers.loc["NVFP4 (released)", "loss_release_minus_nf4dq"] - 0.2) < 1e-9
    assert numbers.loc["Q4_K (released)", "kl_nf4dq_minus_release"] > 0  # the release closer


def test_the_study_runs_stay_out_of_the_other_tables_and_the_report_has_the_section(tmp_path):
    study(tmp_path / "sweeps", reference=str(Path.home() / ".cache" / "original"))
    write_run(tmp_path / "sweeps" / "ptq" / "nf4", {"dtype": "nf4", "train.max_steps": 0},
              {"kl_to_base": 2.5e-3, "kl_to_base_ci": [2.4e-3, 2.6e-3]})
    runs = collect(tmp_path / "sweeps")
    ptq = ptq_fidelity(runs)
    assert list(ptq["kl_to_base"]) == [2.5e-3]  # the plain PTQ run only
    build_report([tmp_path / "sweeps"], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert f"### {TITLE}" in text and "Q4_K (released)" in text
    shown = (tmp_path / "report" / "runs.csv").read_text()  # paths in config values: never this machine's
    assert "~/.cache/original" in shown and str(Path.home()) + "/" not in shown and str(tmp_path) not in shown
