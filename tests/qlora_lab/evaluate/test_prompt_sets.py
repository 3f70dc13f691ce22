"""Prompt sets by name: the Vicuna questions fetched over HTTP (a real server on 127.0.0.1 in
FastChat's layout) and cached, lists of sets and files, and the errors of each."""

from __future__ import annotations

import json

import pytest

from conftest import FIXTURES, fastchat_questions
from qlora_lab.config import ConfigError, EvalConfig
from qlora_lab.evaluate.prompt_sets import PROMPT_SETS, first_human_turn, load_prompts


@pytest.fixture
def vicuna_url(file_server, tmp_path, monkeypatch):
    base, seen = file_server
    (tmp_path / "served" / "question.jsonl").write_text(fastchat_questions())
    monkeypatch.setenv("QLORA_LAB_VICUNA_URL", f"{base}/question.jsonl")
    monkeypatch.setenv("QLORA_LAB_CACHE", str(tmp_path / "cache"))
    return seen


def test_vicuna_is_fetched_once_and_read_from_the_cache_after(vicuna_url):
    rows = load_prompts("vicuna")
    assert [r["id"] for r in rows] == [f"vicuna-{i}" for i in range(1, 81)]
    assert rows[6] == {"id": "vicuna-7", "prompt": "What is question 7 about?", "category": "generic"}
    assert load_prompts("vicuna") == rows
    assert vicuna_url == ["/question.jsonl"]  # the second load never asked the server


def test_the_default_url_is_fastchats_vicuna_bench_at_a_pinned_commit():
    url = PROMPT_SETS["vicuna"]["url"]
    assert url.startswith("https://raw.githubusercontent.com/lm-sys/FastChat/")
    assert url.endswith("/fastchat/llm_judge/data/vicuna_bench/question.jsonl")
    assert len(url.split("/")[5]) == 40  # a commit, not a branch that can move


def test_a_list_joins_sets_and_files_in_order_and_refuses_repeated_ids(vicuna_url):
    questions = FIXTURES / "prompts" / "questions.jsonl"
    rows = load_prompts([str(questions), "vicuna"])
    assert [r["id"] for r in rows[:4]] == ["q1", "q2", "q3", "vicuna-1"] and len(rows) == 83
    with pytest.raises(ValueError, match="prompt id 'q1' appears twice"):
        load_prompts([str(questions), str(questions)])


def test_a_fetch_that_is_not_the_set_fails_and_caches_nothing(file_server, tmp_path, monkeypatch):
    base, _ = file_server
    monkeypatch.setenv("QLORA_LAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "served" / "short.jsonl").write_text(fastchat_questions(79))
    (tmp_path / "served" / "other.jsonl").write_text(json.dumps({"question_id": 1, "text": "hi"}) + "\n" * 1
                                                      + fastchat_questions(79))
    cases = [("short.jsonl", "holds 79 rows, the set has 80"),
             ("other.jsonl", "line 1 is not in the set's layout .missing 'turns'"),
             ("missing.jsonl", r"could not fetch .*missing.jsonl .*HTTP Error 404.*pass eval.prompts=FILE")]
    for name, message in cases:
        monkeypatch.setenv("QLORA_LAB_VICUNA_URL", f"{base}/{name}")
        with pytest.raises(ValueError, match=message):
            load_prompts("vicuna")
    assert not list((tmp_path / "cache").glob("prompts-*.jsonl"))


def test_an_unreachable_server_is_one_clear_error(tmp_path, monkeypatch):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("QLORA_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("QLORA_LAB_VICUNA_URL", f"http://127.0.0.1:{port}/question.jsonl")
    with pytest.raises(ValueError, match=rf"eval.prompts=vicuna: could not fetch http://127.0.0.1:{port}/question"
                                         r".jsonl \(.*refused.*\); download it .* point QLORA_LAB_VICUNA_URL"):
        load_prompts("vicuna")


def test_config_takes_a_name_a_file_or_a_list_and_names_what_is_missing(tmp_path):
    questions = str(FIXTURES / "prompts" / "questions.jsonl")
    for prompts in ("vicuna", "oasst1", questions, ["vicuna", "oasst1", questions]):
        EvalConfig(prompts=prompts).validate()
    with pytest.raises(ConfigError, match="eval.prompts.*nope.jsonl.*no such file .or a named set: oasst1, vicuna"):
        EvalConfig(prompts=["vicuna", str(tmp_path / "nope.jsonl")]).validate()


def test_the_oasst1_prompt_set_is_each_threads_first_question():
    threads = [json.loads(line)["text"] for line in (FIXTURES / "datasets" / "oasst1.jsonl").read_text().splitlines()]
    assert [first_human_turn(t) for t in threads] == ["Can you recommend a book on astronomy?",
                                                      "How many legs does a spider have?", "Say hello in Spanish."]
    assert PROMPT_SETS["oasst1"]["hub_id"] == "timdettmers/openassistant-guanaco"
