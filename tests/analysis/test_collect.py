"""collect(): one row per run, swept axes and metrics as columns, nothing dropped silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlora_analysis import RecordSchemaError, collect, left_out
from synthetic_runs import write_run


def test_one_row_per_ok_run_with_swept_axes_and_metrics(tmp_path: Path):
    write_run(tmp_path / "s" / "0", {"dtype": "nf4", "lora.targets": "all"}, {"eval_loss": 2.0, "rougeL": 0.3})
    write_run(tmp_path / "s" / "1", {"dtype": "fp4", "lora.targets": "qv"}, {"eval_loss": 2.5, "rougeL": 0.2})
    write_run(tmp_path / "s" / "2", {"dtype": "fp4", "train.learning_rate": 1e-3}, {"eval_loss": 2.2})
    runs = collect(tmp_path / "s")
    assert len(runs) == 3
    assert sorted(runs["dtype"]) == ["fp4", "fp4", "nf4"]
    assert set(runs["lora.targets"]) == {"all", "qv"}
    assert sorted(runs["train.learning_rate"]) == [2e-4, 2e-4, 1e-3]  # a swept axis beyond the standard ones
    assert runs.set_index("dtype").loc["nf4", "eval_loss"] == 2.0
    assert runs.set_index("dtype").loc["nf4", "dtype_label"] == "NF4+DQ"
    assert runs["total_bits"].iloc[0] == int(4_000_000 * 4.127)  # the record's model.total_bits
    assert left_out(runs).empty


def test_failed_unfinished_and_duplicate_runs_are_reported_not_dropped(tmp_path: Path):
    write_run(tmp_path / "a" / "0", {"dtype": "nf4"}, {"eval_loss": 2.0})
    write_run(tmp_path / "b" / "0", {"dtype": "nf4"}, {"eval_loss": 2.0})  # the same run_id in another folder
    write_run(tmp_path / "a" / "1", {"dtype": "fp4"}, {}, status="failed")
    unfinished = tmp_path / "a" / "2"
    (unfinished / ".hydra").mkdir(parents=True)
    (unfinished / ".launches").write_text(" started\n")
    runs = collect(tmp_path / "a", tmp_path / "b")
    assert len(runs) == 1  # counted once
    reasons = dict(zip(left_out(runs)["run_dir"], left_out(runs)["reason"]))
    assert reasons[str(tmp_path / "b" / "0")] == f"duplicate of {tmp_path / 'a' / '0'} (same run_id)"
    assert reasons[str(tmp_path / "a" / "1")] == "failed: ValueError: boom"
    assert reasons[str(unfinished)].startswith("unfinished")
    assert len(reasons) == 3


def test_a_record_of_another_schema_is_refused_clearly(tmp_path: Path):
    write_run(tmp_path / "0", {"dtype": "nf4"}, {"eval_loss": 2.0}, schema=2)
    with pytest.raises(RecordSchemaError, match=r"record schema 2; this qlora_analysis reads schema 1"):
        collect(tmp_path)


def test_a_corrupt_record_is_left_out_with_its_reason_and_the_rest_counted(tmp_path: Path):
    write_run(tmp_path / "s" / "0", {"dtype": "nf4"}, {"eval_loss": 2.0})
    write_run(tmp_path / "s" / "1", {"dtype": "fp4"}, {"eval_loss": 2.1})
    record = tmp_path / "s" / "1" / "record.json"
    record.write_text(record.read_text()[:40])  # truncated, as a full disk or a killed copy leaves it
    runs = collect(tmp_path / "s")
    assert list(runs["dtype"]) == ["nf4"]
    [reason] = left_out(runs).itertuples()
    assert reason.run_dir == str(tmp_path / "s" / "1") and reason.reason.startswith("corrupt record: not JSON")
    with pytest.raises(RecordSchemaError, match=r"record.json: not JSON"):
        collect(tmp_path / "s", strict=True)


def test_a_report_that_mixes_versions_names_each_with_its_runs(tmp_path: Path):
    """Records made with other library versions or another commit of ours: the report says which
    differ and how many runs each, as the records hold the versions."""
    import json

    from qlora_analysis.collect import version_mix
    from qlora_analysis.report import build_report

    for i, (dtype, transformers) in enumerate([("nf4", "5.25.0"), ("fp4", "5.25.0"), ("int4", "4.57.3")]):
        write_run(tmp_path / "s" / str(i), {"dtype": dtype}, {"eval_loss": 2.0 + i})
        path = tmp_path / "s" / str(i) / "record.json"
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "env": {"torch": "2.13.0+cpu", "transformers": transformers,
                                                      "peft": "0.21.2", "git_sha": f"{i % 2}" * 40}}))
    runs = collect(tmp_path / "s")
    assert version_mix(runs) == ["transformers 4.57.3 (1 run), transformers 5.25.0 (2 runs)",
                                 f"qlora-lab commit {'0' * 12} (2 runs), qlora-lab commit {'1' * 12} (1 run)"]
    report = (build_report([tmp_path / "s"], tmp_path / "report") and tmp_path / "report" / "report.md").read_text()
    assert "different versions" in report and "transformers 4.57.3 (1 run)" in report
    assert "torch" not in report.split("different versions")[1].split("\n\n")[1]  # the same everywhere: not named
    assert version_mix(collect(tmp_path / "s" / "0")) == []


def test_a_duplicate_names_its_first_run_without_this_machine_s_path(tmp_path):
    """`duplicate of <folder>` in Runs left out shows that folder as the report shows folders."""
    from qlora_analysis.report import build_report
    from synthetic_runs import write_run

    write_run(tmp_path / "s" / "0", {"dtype": "nf4"}, {"eval_loss": 2.0})
    write_run(tmp_path / "s" / "1", {"dtype": "nf4"}, {"eval_loss": 2.0})
    report = build_report([tmp_path / "s"], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert len(report.left_out) == 1 and "duplicate of" in text and str(tmp_path) not in text
