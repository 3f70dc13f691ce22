"""The record: stable run ids, atomic writes, and refusal of an unknown schema."""

from __future__ import annotations

import json
import threading

import pytest

from qlora_lab.records import SCHEMA, Record, RecordError, read_record, run_id, write_record


def test_run_id_is_stable_and_tells_configs_apart():
    a = {"lora": {"r": 8, "targets": "all"}, "dtype": {"name": "nf4"}}
    b = {"dtype": {"name": "nf4"}, "lora": {"targets": "all", "r": 8}}  # same config, other key order
    assert run_id(a) == run_id(b)
    assert run_id(a) != run_id({**a, "lora": {"r": 16, "targets": "all"}})


def test_write_then_read_round_trip(tmp_path):
    record = Record(run_id="abc", status="ok", metrics={"eval_loss": 1.5}, overrides=["dtype=nf4"])
    path = write_record(tmp_path, record)
    assert read_record(path) == record
    assert json.loads(path.read_text())["schema"] == SCHEMA
    assert not [p for p in tmp_path.iterdir() if p.name != "record.json"]  # no temp file left


def test_concurrent_writers_never_leave_half_a_record(tmp_path):
    big = {"blob": "x" * 200_000}

    def write(i):
        for _ in range(20):
            write_record(tmp_path, Record(run_id=str(i), config=big))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for _ in range(50):
        if (tmp_path / "record.json").exists():
            assert read_record(tmp_path / "record.json").config == big  # parses whole every time
    for t in threads:
        t.join()


def test_unknown_schema_is_refused_with_a_clear_message(tmp_path):
    (tmp_path / "record.json").write_text(json.dumps({"schema": 99, "run_id": "x"}))
    with pytest.raises(RecordError, match="record schema 99 is not 1"):
        read_record(tmp_path / "record.json")


def test_adapter_keys_at_their_defaults_keep_earlier_run_ids():
    """Records written before lora.init / dora / rslora existed keep their id (a relaunch reuses
    them); any other value of those keys is a different run."""
    earlier = {"lora": {"r": 8, "targets": "all"}, "dtype": {"name": "nf4"}}
    now = {**earlier, "lora": {**earlier["lora"], "init": "gaussian", "loftq_iter": 1, "pissa_niter": 0,
                               "dora": False, "rslora": False}}
    assert run_id(now) == run_id(earlier)
    variants = [{"init": "loftq"}, {"init": "pissa"}, {"dora": True}, {"rslora": True},
                {"init": "loftq", "loftq_iter": 2}, {"init": "pissa", "pissa_niter": 4}]
    ids = {run_id({**now, "lora": {**now["lora"], **change}}) for change in variants}
    assert len(ids) == len(variants) and run_id(now) not in ids


def test_a_record_never_holds_nan_or_infinity_and_says_which_value_was_not_finite(tmp_path):
    record = Record(run_id="x", status="ok", metrics={"eval_loss": float("nan"), "ppl": float("inf"), "rougeL": 0.25},
                    timing={"steps": [1.0, float("-inf")]})
    text = record.to_json()
    data = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in a record"))  # strict
    assert data["metrics"] == {"eval_loss": None, "ppl": None, "rougeL": 0.25}
    assert data["timing"]["steps"] == [1.0, None]
    assert data["not_finite"] == {"metrics.eval_loss": "NaN", "metrics.ppl": "Infinity", "timing.steps[1]": "-Infinity"}
    write_record(tmp_path, record)
    assert read_record(tmp_path / "record.json").not_finite["metrics.eval_loss"] == "NaN"


def test_dtype_scale_restating_double_quant_keeps_earlier_run_ids():
    """A record from before dtype.scale (double_quant only) and today's (scale resolved to dq8 or
    fp32) are the same run; a scale format of its own is another run."""
    from qlora_lab.records import run_id

    before = {"dtype": {"name": "nf4", "backend": "bnb", "double_quant": True, "blocksize": 64}, "lora": {"r": 64}}
    now = {"dtype": {"name": "nf4", "backend": "bnb", "scale": "dq8", "double_quant": True, "blocksize": 64},
           "lora": {"r": 64}}
    assert run_id(before) == run_id(now)
    plain = {"dtype": {**before["dtype"], "double_quant": False, "scale": "fp32"}, "lora": {"r": 64}}
    assert run_id(plain) == run_id({"dtype": {**before["dtype"], "double_quant": False}, "lora": {"r": 64}})
    other = {"dtype": {**before["dtype"], "double_quant": False, "scale": "e4m3", "backend": "lab"}, "lora": {"r": 64}}
    assert run_id(other) != run_id({"dtype": {**other["dtype"], "scale": None}, "lora": {"r": 64}})


def test_dtype_released_at_null_keeps_earlier_run_ids_and_a_release_is_its_own_run():
    """Records from before `dtype.released` keep their id; a run on a released GGUF base differs
    from the same data type quantized here, and its label says so."""
    from qlora_lab.records import dtype_label, run_id

    before = {"dtype": {"name": "q4_k", "backend": "lab", "scale": "q4_k", "double_quant": False, "blocksize": 32}}
    assert run_id({"dtype": {**before["dtype"], "released": None}}) == run_id(before)
    released = {"dtype": {**before["dtype"], "released": "gguf q4_k"}}
    assert run_id(released) != run_id(before)
    assert dtype_label(released["dtype"]) == "Q4_K (released)" and dtype_label(before["dtype"]) == "Q4_K"
    measured = {"eval": {"loss": True}}
    assert run_id({"eval": {"loss": True, "fidelity_reference": None}}) == run_id(measured)  # the same for this key
    assert run_id({"eval": {"loss": True, "fidelity_reference": "/original"}}) != run_id(measured)
