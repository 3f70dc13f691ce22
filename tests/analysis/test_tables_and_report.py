"""The paper's tables from records, each only where the runs support it, and the report CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from qlora_analysis import collect, read_judgments
from qlora_analysis.tables import all_tables
from synthetic_runs import write_judgments, write_run


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """A slice of the study: PTQ perplexity, MMLU by dtype x dataset, LoRA targets x 3 seeds,
    judgments with winners and scores."""
    i = 0

    def run(overrides, metrics, **kw):
        nonlocal i
        write_run(tmp_path / "sweep" / str(i), overrides, metrics, **kw)
        i += 1

    for dtype, ppl in (("nf4", 30.0), ("fp4", 32.0), ("int4", 35.0)):
        run({"dtype": dtype, "train.max_steps": 0}, {"ppl": ppl, "eval_loss": 3.4})
    for dataset in ("alpaca", "flan_v2"):
        for dtype, acc in (("nf4", 0.40), ("fp4", 0.38)):
            run({"dataset": dataset, "dtype": dtype}, {"mmlu_acc": acc + (0.02 if dataset == "flan_v2" else 0.0)})
    for targets, base in (("all", 0.30), ("qv", 0.25)):
        for seed in (0, 1, 2):
            run({"lora.targets": targets, "train.seed": seed}, {"rougeL": base + 0.01 * seed})
    rows = [{"model_a": "guanaco", "model_b": "alpaca", "winner": "a", "score_a": 8.0, "score_b": 6.0, "judge": "openai"}] * 6 + \
           [{"model_a": "alpaca", "model_b": "guanaco", "winner": "b", "score_a": 5.0, "score_b": 8.0, "judge": "openai"}] * 6
    write_judgments(tmp_path / "sweep", rows)
    run({"dtype": "nf4", "lora.r": 8}, {}, status="failed")
    return tmp_path / "sweep"


def test_each_table_appears_with_its_cells_and_support(study: Path, tmp_path: Path):
    runs, judgments = collect(study), read_judgments(study)
    tables = {t.name: t for t in all_tables(runs, judgments)}
    assert set(tables) == {"ptq_perplexity", "mmlu_by_dtype", "mmlu_by_dataset", "relative_score", "elo",
                           "lora_targets", "sweep_axes"}  # no T5/RoBERTa runs: no Table 3
    ptq = tables["ptq_perplexity"].numbers.set_index("dtype_label")
    assert ptq.loc["NF4+DQ", "mean"] == 30.0 and ptq.loc["Int4+DQ", "runs"] == 1
    mmlu = tables["mmlu_by_dtype"].numbers.set_index(["dataset", "dtype_label"])
    assert mmlu.loc[("flan_v2", "NF4+DQ"), "mean"] == pytest.approx(0.42)
    by_dataset = tables["mmlu_by_dataset"].numbers.set_index("dataset")
    assert by_dataset.loc["alpaca", "mean"] == pytest.approx(0.39) and by_dataset.loc["alpaca", "runs"] == 2
    targets = tables["lora_targets"]
    assert list(targets.frame.columns) == ["seed 0", "seed 1", "seed 2", "mean ± sd"]
    assert targets.frame.loc[("NF4+DQ", "all", "64"), "mean ± sd"] == "0.310 ± 0.010"
    assert targets.support.loc[("NF4+DQ", "qv", "64"), "runs"] == 3
    assert tables["elo"].numbers["model"].tolist() == ["guanaco", "alpaca"]
    relative = tables["relative_score"].numbers
    assert relative["reference"].iloc[0] in ("guanaco", "alpaca")
    for name, made in tables.items():
        paths = made.write(tmp_path / "out")
        assert [p.suffix for p in paths] == [".md", ".csv", ".tex"] and all(p.stat().st_size > 0 for p in paths)
        assert "\\begin{tabular}" in paths[2].read_text() and not pd.read_csv(paths[1]).empty


def test_no_support_no_table(tmp_path: Path):
    write_run(tmp_path / "0", {"dtype": "nf4"}, {"mmlu_acc": 0.4})  # one data type, one dataset
    assert all_tables(collect(tmp_path), read_judgments(tmp_path)) == []


def test_report_command_writes_tables_plots_and_the_runs_left_out(study: Path, tmp_path: Path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "qlora_analysis", str(study), "--out", str(out)],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = (out / "report.md").read_text()
    for title in ("Table 2", "Table 4", "Table 5", "Table 6", "Table 7", "Figure 2 data"):
        assert title in text
    assert "failed: ValueError: boom" in text  # the failed run, left out with its reason
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert {"elo.png", "rouge_by_targets.png", "metric_vs_bits.png", "pareto_peak_memory_mb.png"} <= set(plots)
    assert all((out / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    assert len(pd.read_csv(out / "runs.csv")) == 13  # 3 PTQ + 4 MMLU + 6 LoRA-target runs; the failed one left out


def test_report_command_refuses_an_unknown_schema_in_one_line(tmp_path: Path):
    write_run(tmp_path / "runs" / "0", {"dtype": "nf4"}, {"eval_loss": 2.0}, schema=99)
    proc = subprocess.run([sys.executable, "-m", "qlora_analysis", str(tmp_path / "runs"), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "record schema 99" in proc.stderr


def test_table_3_from_seq2seq_and_classifier_runs(tmp_path: Path):
    """RougeL for seq2seq (T5) runs and accuracy for classifier (RoBERTa) runs, by data type."""
    for i, (kind, dtype, metrics) in enumerate([("seq2seq", "nf4", {"rougeL": 0.40}), ("seq2seq", "int8", {"rougeL": 0.38}),
                                                ("classifier", "nf4", {"accuracy": 0.90}),
                                                ("classifier", "fp4", {"accuracy": 0.88})]):
        dq = {"dtype.double_quant": None} if dtype == "int8" else {}  # LLM.int8() has no blocks to quantize
        write_run(tmp_path / str(i), {"model.kind": kind, "dtype": dtype, **dq}, metrics)
    tables = {t.name: t for t in all_tables(collect(tmp_path), read_judgments(tmp_path))}
    made = tables["kinds_by_dtype"]
    numbers = made.numbers.set_index(["kind", "dtype_label"])
    assert numbers.loc[("seq2seq", "Int8"), "mean"] == pytest.approx(0.38)
    assert numbers.loc[("classifier", "FP4+DQ"), "mean"] == pytest.approx(0.88)
    assert set(made.frame.index.get_level_values(0)) == {"seq2seq (rougeL)", "classifier (accuracy)"}


def test_a_sweep_gets_its_own_table_with_intervals_and_readable_labels(tmp_path: Path):
    """The design card's sweep (`dtype=nf4,fp4,int4 lora.targets=all,qv`, 3 seeds): a data type x
    targets table and a per-configuration one, mean ± 95% interval with n; no tuples anywhere."""
    from qlora_analysis.intervals import mean_interval

    i = 0
    for dtype, base in (("nf4", 4.9), ("fp4", 5.0), ("int4", 5.1)):
        for targets in ("all", "qv"):
            for seed in (0, 1, 2):
                write_run(tmp_path / "sweep" / str(i), {"dtype": dtype, "lora.targets": targets, "train.seed": seed},
                          {"eval_loss": base + (0.1 if targets == "qv" else 0.0) + 0.02 * seed})
                i += 1
    tables = {t.name: t for t in all_tables(collect(tmp_path / "sweep"), read_judgments(tmp_path / "sweep"))}
    grid = tables["sweep_grid"]
    assert list(grid.frame.index) == ["FP4+DQ", "Int4+DQ", "NF4+DQ"] and list(grid.frame.columns) == ["all", "qv"]
    mean, half, n = mean_interval(pd.Series([4.9, 4.92, 4.94]))
    assert grid.frame.loc["NF4+DQ", "all"] == f"{mean:.3f} ± {half:.3f} (n=3)" and n == 3
    assert half == pytest.approx(4.302653 * 0.02 / 3**0.5, rel=1e-5)  # t(0.975, 2) x sd / sqrt(n), by hand
    rows = tables["sweep_axes"].frame
    assert "NF4+DQ · all" in rows.index and list(rows.columns) == ["eval loss"]  # the only metric that varies
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "qlora_analysis", str(tmp_path / "sweep"), "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = (out / "report.md").read_text()
    assert "data type × LoRA targets" in text and "('" not in text  # no Python tuples as labels
    assert str(tmp_path) not in text  # no absolute path of this machine
    assert str(tmp_path) not in (out / "runs.csv").read_text() and "sweep/0" in (out / "runs.csv").read_text()


def test_report_lists_a_corrupt_record_under_runs_left_out(tmp_path: Path):
    write_run(tmp_path / "sweep" / "0", {"dtype": "nf4"}, {"eval_loss": 2.0})
    write_run(tmp_path / "sweep" / "1", {"dtype": "fp4"}, {"eval_loss": 2.1})
    (tmp_path / "sweep" / "1" / "record.json").write_text('{"schema": 1, "run_id": "ab')
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "qlora_analysis", str(tmp_path / "sweep"), "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = (out / "report.md").read_text()
    left = text[text.index("## Runs left out"):]
    assert "sweep/1" in left and "corrupt record" in left
    strict = subprocess.run([sys.executable, "-m", "qlora_analysis", str(tmp_path / "sweep"), "--out", str(out),
                             "--strict"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert strict.returncode == 2 and "not JSON" in strict.stderr


def test_metric_vs_bits_never_pools_configurations_into_one_error_bar(tmp_path: Path):
    """NF4 with LoRA on all layers and on q/v stores the same bits: two lines, each with the
    interval of its own seeds (pooled, the bar would span the gap between settings)."""
    from qlora_analysis.plots import series_by_config

    i = 0
    for targets, loss in (("all", 2.0), ("qv", 3.0)):
        for seed in (0, 1):
            write_run(tmp_path / str(i), {"lora.targets": targets, "train.seed": seed}, {"eval_loss": loss + 0.01 * seed})
            i += 1
    series = series_by_config(collect(tmp_path), "eval_loss")
    assert set(series) == {"NF4+DQ · all · r64", "NF4+DQ · qv · r64"}
    [(bits, mean, half, n)] = series["NF4+DQ · all · r64"]
    assert mean == pytest.approx(2.005) and n == 2 and half < 0.1


def _design_card_sweep(folder: Path, rouge: float = 0.0) -> None:
    """`-m dtype=nf4,fp4,int4 lora.targets=all,qv`, 2 seeds: Int4 runs on the lab backend."""
    i = 0
    for dtype, loss in (("nf4", 2.0), ("fp4", 2.2), ("int4", 2.5)):
        for targets in ("all", "qv"):
            for seed in (0, 1):
                write_run(folder / str(i), {"dtype": dtype, "dtype.backend": "lab" if dtype == "int4" else "bnb",
                                            "lora.targets": targets, "train.seed": seed},
                          {"eval_loss": loss + (0.1 if targets == "qv" else 0.0) + 0.01 * seed, "rougeL": rouge},
                          bits=4.127 if dtype == "nf4" else 4.5)
                i += 1


def test_the_design_card_sweep_opens_with_its_grid_and_empty_tables_say_why(tmp_path: Path):
    """The backend follows the data type, so it is folded into it: two axes, the grid of data
    type x targets first; RougeL 0 everywhere after a few steps goes last, saying why."""
    from qlora_analysis.tables.sweep_axes import swept_axes

    _design_card_sweep(tmp_path / "s")
    runs = collect(tmp_path / "s")
    assert swept_axes(runs) == ["dtype_label", "lora.targets"]
    tables = all_tables(runs, read_judgments(tmp_path / "s"))
    assert tables[0].name == "sweep_grid"
    assert list(tables[0].frame.columns) == ["all", "qv"] and len(tables[0].frame) == 3
    silent = [t for t in tables if t.silent]
    assert silent and all(t.silent for t in tables[len(tables) - len(silent):])  # the silent ones last
    assert any("every cell is 0" in t.silent for t in silent)
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "qlora_analysis", str(tmp_path / "s"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (out / "report.md").read_text()
    first = report.split("### ")[1]
    assert first.startswith("This sweep: eval loss by data type × LoRA targets")
    header = next(line for line in first.splitlines() if line.startswith("|")).split("|")
    assert [cell.strip() for cell in header[2:4]] == ["all", "qv"]  # the grid's columns are the targets
    assert "Nothing to tell apart here:** every cell is 0" in report


def test_bit_tick_labels_tell_different_bit_counts_apart():
    from qlora_analysis.plots import bits_labels

    assert bits_labels([30_067_712, 46_900_000]) == ["30.1 Mbit", "46.9 Mbit"]
    labels = bits_labels([46_910_000, 46_940_000, 46_940_000])
    assert labels[0] != labels[1] and labels == ["46.91 Mbit", "46.94 Mbit", "46.94 Mbit"]


def test_plots_say_what_their_tables_say(tmp_path: Path, monkeypatch):
    """The Pareto plots colour runs that differ in targets apart; an Elo plot of ties says so."""
    import qlora_analysis.plots as plots

    shown = {}

    def keep(fig, path):
        ax = fig.axes[0]
        legend = ax.get_legend()
        shown[path.name] = (ax.get_title(), [t.get_text() for t in legend.get_texts()] if legend else [])
        import matplotlib.pyplot as plt

        plt.close(fig)
        return path

    monkeypatch.setattr(plots, "_save", keep)
    _design_card_sweep(tmp_path / "s", rouge=0.1)
    runs = collect(tmp_path / "s")
    plots.pareto(runs, "peak_memory_mb", tmp_path)
    labels = shown["pareto_peak_memory_mb.png"][1]
    assert "NF4+DQ · all · r64" in labels and "NF4+DQ · qv · r64" in labels
    ties = pd.DataFrame({"model": ["a", "b"], "elo": [1000.0, 1000.0], "lower": [1000.0, 1000.0],
                         "upper": [1000.0, 1000.0], "matches": [4, 4]})
    plots.elo_intervals(ties, tmp_path)
    assert "every verdict was a tie" in shown["elo.png"][0]


# what the report's worker did, in order: written by the stand-ins below in the forked worker
WORKER_LOG: dict[str, str] = {}


def _log_import_matplotlib() -> None:
    with open(WORKER_LOG["path"], "a", encoding="utf-8") as log:
        log.write(f"{os.getpid()} import matplotlib\n")


def _logged_examine(paths, rehearsal):
    from qlora_analysis.collect import _examine_records

    with open(WORKER_LOG["path"], "a", encoding="utf-8") as log:
        log.write(f"{os.getpid()} {len(paths)} records\n")
    return _examine_records(paths, rehearsal)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: the report runs in process, with no worker")
@pytest.mark.parametrize("rehearsal", [False, True])
def test_the_worker_reads_its_records_before_importing_matplotlib_and_never_imports_it_for_a_rehearsal(
        tmp_path, monkeypatch, rehearsal):
    """This process waits for the worker's third of the records: matplotlib's import (0.7 s) came
    first and kept a 1,092-record rehearsal's analysis waiting, for figures it never draws."""
    import importlib

    collect_module = importlib.import_module("qlora_analysis.collect")  # the package's `collect` is the function
    report = importlib.import_module("qlora_analysis.report")

    for i in range(6):
        write_run(tmp_path / "sweep" / str(i), {"dtype": "nf4", "train.seed": i},
                  {} if rehearsal else {"eval_loss": 1.0 + i / 10}, rehearsal=rehearsal)
    WORKER_LOG["path"] = str(tmp_path / "worker.log")
    monkeypatch.setattr(collect_module, "ASIDE_MIN", 3)  # 6 records: the worker gets 2
    monkeypatch.setattr(report, "ASIDE_MIN", 3)
    monkeypatch.setattr(report, "_import_for_figures", _log_import_matplotlib)
    monkeypatch.setattr(collect_module, "_examine_records", collect_module.examine, raising=False)
    monkeypatch.setattr(collect_module, "examine", _logged_examine)
    built = report.build_report([tmp_path / "sweep"], tmp_path / "report", rehearsal=rehearsal)
    assert len(built.runs) == 6
    lines = [line.split(" ", 1) for line in (tmp_path / "worker.log").read_text(encoding="utf-8").splitlines()]
    assert [what for pid, what in lines if int(pid) == os.getpid()] == ["4 records"]  # this process: the rest
    in_worker = [what for pid, what in lines if int(pid) != os.getpid()]
    assert in_worker == (["2 records"] if rehearsal else ["2 records", "import matplotlib"])
