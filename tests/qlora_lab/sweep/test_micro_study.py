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


def test_micro_study_in_miniature_runs_judges_analyses_and_times_itself(tmp_path):
    sweep, out = tmp_path / "sweep", tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "qlora_lab.micro_study", "--sweep-dir", str(sweep), "--out", str(out),
         "model=tiny", "+variant=qlora_nf4_dq,qlora_int4", "lora.targets=all", "train.seed=0", "train.max_steps=2",
         "eval.n_generate=3", "eval.max_new_tokens=8", "eval.ppl.max_tokens=2048"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = records_under(sweep)
    assert len(records) == 2 and all(r["status"] == "ok" for r in records.values())
    for record in records.values():
        metrics = record["metrics"]
        assert metrics["base_ppl"] > 1 and metrics["base_ppl_tokens"] > 1000 and "ppl_on" in metrics
        assert metrics["mmlu_n_questions"] == 120 and 0 <= metrics["mmlu_acc"] <= 1 and "rougeL" in metrics
    hydra_cfg = yaml.safe_load((sweep / "0" / ".hydra" / "hydra.yaml").read_text())
    assert hydra_cfg["hydra"]["launcher"]["_target_"] == "hydra_plugins.qlora_lab.LocalPool"  # the local pool ran them
    judged = [json.loads(line) for line in (sweep / "judgments.jsonl").read_text().splitlines()]
    assert len(judged) == 3 * 2  # 3 held-out answers, one pair, both orders
    report = (out / "report.md").read_text()
    assert "Table 2: post-training quantization perplexity" in report and "Elo" in report
    assert "## Time" in report and "pretraining" in report and "judging" in report
    timing = json.loads((out / "timing.json").read_text())
    assert timing["runs"] == 2 and timing["total_s"] >= sum(timing["phases_s"].values()) - 1e-6
