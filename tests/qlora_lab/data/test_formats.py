"""Every dataset config of the paper's study: its fixture (in the hub's field layout) gives
exactly the source/target text the paper's code (or the dataset's own layout) gives."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from conftest import FIXTURES
from qlora_lab.config import run_config
from qlora_lab.data.load import DataError, load_splits
from qlora_lab.sweep import CONF_DIR

DATA = FIXTURES / "datasets"
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.\n\n### Instruction:\nSpell the word 'river' backwards.\n\n### Response: ")

EXPECTED = {  # dataset -> (fixture, one (source, target) it must produce, number of pairs)
    "alpaca": ("alpaca", (ALPACA_NO_INPUT, "revir"), 48),
    "alpaca_clean": ("alpaca", (ALPACA_NO_INPUT, "revir"), 48),
    "self_instruct": ("self_instruct", ("Make a list of three primary colors.\n\nOutput:", " Red, yellow and blue."), 3),
    "unnatural": ("unnatural", ("Sort the given numbers in increasing order.\n9, 7", "7, 9"), 3),
    "flan_v2": ("flan_v2", ("What is the boiling point of water in Celsius?", "100"), 3),
    "longform": ("longform", ("Explain what a compiler does.", "A compiler translates source code into machine code."), 3),
    "chip2": ("chip2", ("What is the tallest mountain on Earth?", "Mount Everest, at 8,849 metres."), 3),
    "hh_rlhf": ("hh_rlhf", ("", "\n\nHuman: How do I boil an egg?\n\nAssistant: Place it in boiling water for about "
                               "nine minutes."), 3),
    "oasst1": ("oasst1", ("", "### Human: Say hello in Spanish.### Assistant: Hola."), 3),
    "super_natural": ("super_natural", ("Definition: Add the two numbers.\n\nNow complete the following example -\n"
                                        "Input: 2 + 5\nOutput: ", "7"), 3),
}


def dataset_config(name: str, path, n_eval: int = 1, *extra: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"dataset={name}", f"dataset.path={path}",
                                                       f"dataset.n_eval={n_eval}", *extra])
    return run_config(cfg).dataset


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_gives_the_exact_pairs(name):
    fixture, pair, count = EXPECTED[name]
    cfg = dataset_config(name, DATA / f"{fixture}.jsonl")
    assert cfg.hub_id  # the real hub id stays in the config
    splits = load_splits(cfg)
    pairs = splits.train + splits.eval
    assert len(pairs) == count
    assert pair in pairs


GLUE_EXPECTED = {  # task -> (one (source, target) its fixture must produce, number of pairs)
    "sst2": (("the story is tedious and flat", "negative"), 96),
    "mrpc": ((("The company posted a profit of 5 million.", "A profit of 5 million was posted by the company."),
              "equivalent"), 6),
    "stsb": ((("A man is playing a guitar.", "A man plays the guitar."), "4.8"), 6),
}


@pytest.mark.parametrize("task", sorted(GLUE_EXPECTED))
def test_glue_fixture_gives_the_tasks_text_and_label_name(task):
    pair, count = GLUE_EXPECTED[task]
    cfg = dataset_config("glue", DATA / f"glue_{task}.jsonl", 2, "model=tiny_roberta", f"dataset.task={task}")
    assert (cfg.hub_id, cfg.hub_config) == ("nyu-mll/glue", task)  # the hub's config of the same name
    splits = load_splits(cfg)
    assert len(splits.train + splits.eval) == count and pair in splits.train + splits.eval


def test_a_glue_row_from_the_unlabelled_test_split_is_refused(tmp_path):
    bad = tmp_path / "sst2.jsonl"
    bad.write_text(json.dumps({"sentence": "a film", "label": -1, "idx": 0}) + "\n"
                   + (DATA / "glue_sst2.jsonl").read_text())
    with pytest.raises(DataError, match=r"dataset=glue: row 1: label -1 is not one of 0..1 \(negative, positive\); "
                                         r"GLUE's test split has no labels"):
        load_splits(dataset_config("glue", bad, 2, "model=tiny_roberta", "dataset.task=sst2"))


def test_every_dataset_config_is_tested():
    names = {p.stem for p in (CONF_DIR / "dataset").glob("*.yaml")} - {"stdlib"}
    assert names == set(EXPECTED) | {"glue"}


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_csv_and_parquet_files_load_through_datasets(tmp_path, suffix):
    rows = [json.loads(line) for line in (DATA / "longform.jsonl").read_text().splitlines()]
    path = tmp_path / f"longform.{suffix}"
    getattr(pd.DataFrame(rows), f"to_{suffix}")(path, index=False)
    from_file = load_splits(dataset_config("longform", path))
    from_jsonl = load_splits(dataset_config("longform", DATA / "longform.jsonl"))
    assert sorted(from_file.train + from_file.eval) == sorted(from_jsonl.train + from_jsonl.eval)


def test_chip2_text_without_a_bot_turn_is_named(tmp_path):
    bad = tmp_path / "chip2.jsonl"
    bad.write_text(json.dumps({"text": "<human>: hello"}) + "\n" + (DATA / "chip2.jsonl").read_text())
    with pytest.raises(DataError, match=r"dataset=chip2: row 1: text has no '\\n<bot>: ' turn"):
        load_splits(dataset_config("chip2", bad))


def test_unnatural_row_without_instances_is_named(tmp_path):
    bad = tmp_path / "unnatural.jsonl"
    bad.write_text((DATA / "unnatural.jsonl").read_text() + json.dumps({"instruction": "x"}) + "\n")
    with pytest.raises(DataError, match="dataset=unnatural: row 3: instances is not a non-empty list"):
        load_splits(dataset_config("unnatural", bad))


def test_a_row_in_another_layout_names_the_expected_fields(tmp_path):
    with pytest.raises(DataError, match=r"dataset=super_natural: row 1 lacks definition, inputs, targets; "
                                         r"expected fields: definition, inputs, targets"):
        load_splits(dataset_config("super_natural", DATA / "longform.jsonl"))


def test_a_hub_dataset_with_its_own_test_split_keeps_it(tmp_path):
    """The hub path, exercised offline: datasets.load_dataset also loads a local dataset folder."""
    threads = (DATA / "oasst1.jsonl").read_text().splitlines()
    folder = tmp_path / "guanaco"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(threads[:2]) + "\n")
    (folder / "test.jsonl").write_text(threads[2] + "\n")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["dataset=oasst1", f"dataset.hub_id={folder}"])
    splits = load_splits(run_config(cfg).dataset)
    assert splits.eval_split == "test"
    assert splits.eval == [("", "### Human: Say hello in Spanish.### Assistant: Hola.")] and len(splits.train) == 2
    assert splits.fingerprint.startswith(f"{folder}@")
