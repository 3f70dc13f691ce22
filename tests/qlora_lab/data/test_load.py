"""Rows -> (source, target) pairs: exact text, seeded split, and bad data named precisely."""

from __future__ import annotations

import json

import pytest

from conftest import FIXTURES
from qlora_lab.config import DatasetConfig
from qlora_lab.data.formats import stdlib_pair
from qlora_lab.data.load import DataError, load_splits
from qlora_lab.data.stdlib import instruction_rows, module_part, stdlib_files

ALPACA = FIXTURES / "datasets" / "alpaca.jsonl"


def alpaca(path, **kw) -> DatasetConfig:
    return DatasetConfig(name="alpaca", format="alpaca", path=str(path), n_eval=kw.pop("n_eval", 8), **kw)


def test_alpaca_pairs_are_the_papers_prompt_exactly():
    splits = load_splits(alpaca(ALPACA, n_eval=1))
    pairs = dict(splits.train + splits.eval)
    with_input = ("Below is an instruction that describes a task, paired with an input that provides further "
                  "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                  "Add the two numbers.\n\n### Input:\n43 and 21\n\n### Response: ")
    no_input = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                "request.\n\n### Instruction:\nSpell the word 'river' backwards.\n\n### Response: ")
    assert pairs[with_input] == "43 + 21 = 64"
    assert pairs[no_input] == "revir"
    assert len(pairs) == len(ALPACA.read_text().splitlines())


def test_split_is_seeded_and_disjoint():
    a, b = load_splits(alpaca(ALPACA, split_seed=42)), load_splits(alpaca(ALPACA, split_seed=42))
    c = load_splits(alpaca(ALPACA, split_seed=7))
    assert a.eval == b.eval and a.train == b.train
    assert a.eval != c.eval
    assert not set(a.eval) & set(a.train)
    assert a.fingerprint == c.fingerprint and a.fingerprint.startswith("sha256:")


def test_caps_apply_after_the_split():
    splits = load_splits(alpaca(ALPACA, max_train_samples=5, max_eval_samples=3))
    assert (len(splits.train), len(splits.eval)) == (5, 3)


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = ALPACA.read_text().splitlines()
    lines[6] = '{"instruction": "broken", "output": '
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"^{bad}:7: not valid JSON"):
        load_splits(alpaca(bad))


@pytest.mark.parametrize("name", ["data.jsonl", "data.json", "data.csv"])
def test_a_binary_file_is_named_and_said_not_to_be_text(tmp_path, name):
    """It used to fail with a bare `UnicodeDecodeError ... position 0` naming no file."""
    import gzip

    binary = tmp_path / name
    binary.write_bytes(gzip.compress(ALPACA.read_bytes()))
    with pytest.raises(DataError, match=rf"^{binary}: not a text file \(byte 1 is 0x8b, not UTF-8\)"):
        load_splits(alpaca(binary))


def test_row_missing_a_field_names_the_expected_fields(tmp_path):
    bad = tmp_path / "missing.jsonl"
    bad.write_text(json.dumps({"instruction": "x", "input": ""}) + "\n")
    with pytest.raises(DataError, match=r"row 1 lacks output; expected fields: instruction, output, input \(optional\)"):
        load_splits(alpaca(bad))


def test_empty_dataset_is_an_error_not_a_zero_step_run(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="holds no rows"):
        load_splits(alpaca(empty))


def test_eval_split_larger_than_the_data_is_refused_with_a_value_that_works():
    with pytest.raises(DataError, match=r"dataset.n_eval=100 leaves no training rows: dataset=alpaca has 48; "
                                        r"use dataset.n_eval=4 \(at most 47\)"):
        load_splits(alpaca(ALPACA, n_eval=100))


@pytest.mark.parametrize("rows, n_eval", [(48, 4), (41, 4), (24, 2), (9, 1), (2, 1), (20_000, 1024)])
def test_the_default_eval_split_suits_the_data(tmp_path, rows, n_eval):
    """n_eval=null (the paper datasets' configs): a tenth of the rows, at most 1024, at least one;
    a 41-row file trains instead of failing on the paper's 1024."""
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Say {i}.", "output": str(i)}) + "\n" for i in range(rows)))
    splits = load_splits(DatasetConfig(name="alpaca", format="alpaca", path=str(path), n_eval=None))
    assert (len(splits.eval), len(splits.train)) == (n_eval, rows - n_eval)


def test_a_hub_dataset_that_cannot_be_reached_fails_in_one_line_naming_the_way_round(tmp_path, monkeypatch):
    """Not offline by flag, but the hub does not answer (a closed port on 127.0.0.1 as its
    endpoint): one quick look, then the local cache alone, then one line."""
    import socket

    import datasets
    from huggingface_hub import constants

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError) as caught:
        load_splits(DatasetConfig(name="alpaca", format="alpaca", hub_id="tatsu-lab/alpaca"))
    said = str(caught.value)
    assert "tatsu-lab/alpaca" in said and "dataset.path=FILE" in said and "not reachable" in said
    assert "\n" not in said
    assert constants.HF_HUB_OFFLINE is False  # offline for that one call only


def test_stdlib_pairs_are_real_functions_from_the_finetune_half():
    rows = instruction_rows()
    assert len(rows) > 1000
    assert all(module_part_of(r["module"]) == "finetune" for r in rows[:200])
    source, target = stdlib_pair(rows[0])
    assert source.startswith(f"Complete this function from the Python standard library module `{rows[0]['module']}`.")
    assert '"""' in source or "'''" in source or "'" in source
    assert target.strip() and not target.startswith("def ")


def test_stdlib_halves_are_disjoint_and_both_large():
    parts = [module_part(p) for p in stdlib_files()]
    assert parts.count("pretrain") > 100 and parts.count("finetune") > 100


def module_part_of(module: str) -> str:
    from qlora_lab.data.stdlib import stdlib_root

    path = stdlib_root() / (module.replace(".", "/") + ".py")
    return module_part(path)


def test_stdlib_dataset_splits_deterministically():
    cfg = DatasetConfig(n_eval=64)  # as conf/dataset/stdlib.yaml sets it
    a, b = load_splits(cfg), load_splits(cfg)
    assert a.eval == b.eval and a.fingerprint == b.fingerprint and len(a.eval) == cfg.n_eval
