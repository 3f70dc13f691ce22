"""The micro-study's parts: its sweep file, the multiple-choice benchmark generated from the
standard library, and `python -m qlora_lab.micro_study` end to end in miniature (two runs on
the local launcher, judged, analysed, timed)."""

from __future__ import annotations

import csv
import importlib
import json
import subprocess
import sys

import yaml

from conftest import REPO, records_under
from qlora_lab.data.stdlib import stdlib_root
from qlora_lab.data.stdlib_mc import SUBJECTS, stdlib_mmlu_dir


def test_the_micro_sweep_is_seven_types_by_three_target_sets_by_three_seeds():
    proc = subprocess.run([sys.executable, "-m", "qlora_lab.plan", "+sweep=micro"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("63 runs")
    for sweep, count in (("micro_ptq", 24), ("micro_blocksize", 16)):
        planned = subprocess.run([sys.executable, "-m", "qlora_lab.plan", f"+sweep={sweep}"], cwd=REPO,
                                 capture_output=True, text=True, timeout=300)
        assert planned.returncode == 0 and planned.stdout.strip().splitlines()[-1].startswith(f"{count} runs"), \
            planned.stderr[-2000:]
    variants = {part for line in lines[:-1] for part in line.split() if part.startswith("+variant=")}
    assert variants == {f"+variant={v}" for v in ("lora_bf16", "qlora_nf4_dq", "qlora_nf4", "qlora_fp4", "qlora_int4",
                                                   "qlora_nf3", "qlora_fp4_e3m0")}


def test_the_stdlib_benchmark_is_in_mmlu_layout_and_its_answers_are_true():
    folder = stdlib_mmlu_dir()
    for subject in SUBJECTS:
        for split in ("dev", "val", "test"):
            rows = list(csv.reader((folder / split / f"{subject}_{split}.csv").open()))
            assert rows and all(len(row) == 6 and row[5] in "ABCD" for row in rows)
        dev = list(csv.reader((folder / "dev" / f"{subject}_dev.csv").open()))
        assert len(dev) == 5
        test = list(csv.reader((folder / "test" / f"{subject}_test.csv").open()))
        answers = [row[5] for row in test]
        assert len(set(answers)) == 4  # the right answer is not always in one place
        checked = 0
        for row in test[:15]:  # the answer's module really defines the function (imported, not parsed)
            name = row[0].split("`")[1]
            module = row[1 + "ABCD".index(row[5])]
            try:
                imported = importlib.import_module(module)
            except Exception:  # a platform module (winreg, ...) or one that needs a display
                continue
            if not str(getattr(imported, "__file__", "")).startswith(str(stdlib_root())):
                continue  # shadowed at run time (setuptools replaces distutils with its own copy)
            assert callable(getattr(imported, name)), (module, name)
            checked += 1
        assert checked >= 10


def test_the_next_line_task_asks_true_lines_among_four_from_the_same_file():
    from qlora_lab.data.stdlib import module_part, stdlib_files
    from qlora_lab.data.stdlib_next_line import TASK, questions, stdlib_tasks_dir

    asked = questions(60, seed=0)
    assert len(asked) == 60
    sources = {p: p.read_text(encoding="utf-8", errors="replace") for p in stdlib_files() if module_part(p) == "finetune"}
    for question in asked[:20]:
        choices, answer = question["choices"], question["choices"][question["label"]]
        assert len(set(choices)) == 4
        where = [text for text in sources.values() if question["context"] + answer + "\n" in text + "\n"]
        assert where, "the right answer follows its context in a held-out module"
        assert all(choice in where[0].splitlines() for choice in choices)  # distractors from the same file
    assert len({q["label"] for q in asked}) == 4  # the answer is not always in one place
    folder = stdlib_tasks_dir()
    assert (folder / f"{TASK}.yaml").exists() and len((folder / f"{TASK}.jsonl").read_text().splitlines()) > 500


def test_micro_study_in_miniature_runs_judges_analyses_and_times_itself(tmp_path):
    """Its sweeps in miniature on `tiny` (two runs each; the released-weights sweeps on the base's own
    GGUF and NVFP4 releases, made by the driver: three and six), judged, analysed, timed: the report
    opens with the claims table, a verdict in every row, has the released section with a verdict in
    each of its rows, and holds no absolute path."""
    sweep, out = tmp_path / "sweep", tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "qlora_lab.micro_study", "--sweep-dir", str(sweep), "--out", str(out),
         "model=tiny", "eval.fidelity_tokens=512", "eval.lm_eval.limit=12",
         "--finetune-args", "+variant=qlora_nf4_dq,lora_bf16 lora.targets=all train.seed=0,1 train.max_steps=2 "
                            "eval.n_generate=3 eval.max_new_tokens=8",
         "--ptq-args", "model.checkpoint=null +variant=qlora_nf4,qlora_fp4",
         "--blocksize-args", "dtype=int4_affine,nf4 dtype.blocksize=32",
         "--released-args", "train.seed=0,1 train.max_steps=2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = {f"{part}/{name}": r for part in ("finetune", "ptq", "blocksize", "released_init", "released")
               for name, r in records_under(sweep / part).items()}
    assert len(records) == 17 and all(r["status"] == "ok" for r in records.values()), \
        {k: r["error"] for k, r in records.items()}
    assert sorted(r["model"]["released"] or "here" for k, r in records.items() if k.startswith("released/")) == \
        ["gguf q4_k+q4_0"] * 2 + ["here"] * 2 + ["nvfp4"] * 2  # tiny's 704-wide MLP rows fall back to Q4_0
    for name, record in records.items():
        metrics = record["metrics"]
        assert metrics["kl_to_base"] >= 0 and 0 < metrics["top1_agree"] <= 1, name
        if not name.startswith(("blocksize", "released")):
            assert metrics["zero_shot_n"] == {"stdlib_next_line": 12} and 0 <= metrics["zero_shot_mean"] <= 1
    hydra_cfg = yaml.safe_load((sweep / "finetune" / "0" / ".hydra" / "hydra.yaml").read_text())
    assert hydra_cfg["hydra"]["launcher"]["_target_"] == "hydra_plugins.qlora_lab.LocalPool"  # the local pool ran them
    judged = [json.loads(line) for line in (sweep / "finetune" / "judgments.jsonl").read_text().splitlines()]
    assert len(judged) == 3 * 2 * 6  # 3 held-out answers, both orders, 6 pairs of the 4 runs
    report = (out / "report.md").read_text()
    first_table = report.split("### ")[1]
    assert first_table.startswith("The paper's claims at this scale")
    claim_rows = [line for line in first_table.splitlines() if line.startswith("| ") and "verdict" not in line]
    assert claim_rows and all(any(v in row for v in ("holds", "reversed", "below the noise floor", "does not hold"))
                              for row in claim_rows)
    assert "Beyond the paper: Int4-affine beats NF4 at blocksize 32" in first_table
    assert "Fidelity by blocksize" not in report  # one blocksize: no table of its own
    released = report.split("### Fine-tuning released weights")[1].split("###")[0]
    rows = [line for line in released.splitlines() if line.startswith("| ") and "(released)" in line]
    at_init = ("closer to the original than", "farther from the original than", "as close as NF4+DQ")
    assert len(rows) == 2 and all(any(v in row for v in at_init) and ("matches NF4+DQ" in row or "does not hold" in row)
                                  for row in rows), released
    assert "NF4+DQ · all · r64" in report and "('NF4'" not in report and str(tmp_path) not in report
    assert "## Time" in report and "pretraining" in report and "judging" in report
    timing = json.loads((out / "timing.json").read_text())
    assert timing["runs"] == 17 and timing["total_s"] >= sum(timing["phases_s"].values()) - 1e-6
    before = (out / "report.md").read_text()
    missing = subprocess.run([sys.executable, "-m", "qlora_lab.micro_study", "--report-only", "--sweep-dir",
                              str(tmp_path / "nowhere"), "--out", str(out)], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode == 2 and "no sweep folder" in missing.stderr and "nowhere" in missing.stderr
    assert (out / "report.md").read_text() == before and (out / "plots").is_dir()  # nothing removed
    again = subprocess.run([sys.executable, "-m", "qlora_lab.micro_study", "--report-only", "--sweep-dir", str(sweep),
                            "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / "report.md").read_text().split("## Time")[0] == before.split("## Time")[0]
    assert not any(p.name.startswith("report.") for p in tmp_path.iterdir())  # no .new / .old left beside it
    (out / "timing.json").unlink()
    no_timing = subprocess.run([sys.executable, "-m", "qlora_lab.micro_study", "--report-only", "--sweep-dir",
                                str(sweep), "--out", str(out)], cwd=tmp_path, capture_output=True, text=True,
                               timeout=300)
    assert no_timing.returncode == 2 and "timing.json" in no_timing.stderr
    assert (out / "report.md").exists()
