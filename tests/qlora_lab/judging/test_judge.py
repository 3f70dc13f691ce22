"""Pairwise judging over a sweep folder: the offline reference judge, an OpenAI-compatible judge
against a real HTTP server on 127.0.0.1 (slow answers, 500s, unparseable text), reruns,
human imports and the Vicuna relative score."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from qlora_lab.judge import main
from qlora_lab.judging.verdicts import Unparseable, parse_verdict
from qlora_analysis.relative_score import relative_scores
from qlora_lab.records import Record, write_record

KEY = "sk-test-secret-123"
ANSWERS = {  # run folder -> (overrides, answers by prompt id)
    "0": (["dtype=nf4"], {"q1": "Use items[::-1] or list.reverse() to reverse it.", "q2": "Eleven.", "q3": "rain"}),
    "1": (["dtype=fp4"], {"q1": "Reverse it.", "q2": "Eleven is a prime number.", "q3": "soft rain falls down"}),
    "2": (["dtype=int4"], {"q1": "I do not know", "q2": "Twelve", "q3": "drops"}),
}
REFERENCES = {"q1": "Use list.reverse() or slicing: items[::-1].", "q2": "Eleven is a prime number.", "q3": None}


def make_sweep(root: Path, answers=ANSWERS) -> Path:
    for folder, (overrides, rows) in answers.items():
        run_dir = root / folder
        run_dir.mkdir(parents=True)
        write_record(run_dir, Record(run_id=folder, status="ok", overrides=overrides))
        lines = [{"id": pid, "prompt": f"question {pid}", "reference": REFERENCES[pid], "generation": text,
                  "set": "prompts"} for pid, text in rows.items()]
        (run_dir / "generations.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    return root


def judgments(root: Path) -> list[dict]:
    return [json.loads(l) for l in (root / "judgments.jsonl").read_text().splitlines()]


def test_reference_judge_offline_both_orders(tmp_path):
    root = make_sweep(tmp_path)
    assert main([str(root), "--judge", "reference"]) == 0
    rows = judgments(root)
    assert len(rows) == 3 * 3 * 2  # 3 pairs of runs x 3 prompts x both orders
    by = {(r["prompt_id"], r["model_a"], r["model_b"]): r for r in rows}
    assert by[("q2", "dtype=nf4", "dtype=fp4")]["winner"] == "b"  # fp4's answer is the reference itself
    assert by[("q2", "dtype=fp4", "dtype=nf4")]["winner"] == "a"
    assert by[("q1", "dtype=nf4", "dtype=int4")]["winner"] == "a"
    assert by[("q3", "dtype=nf4", "dtype=fp4")] == {**by[("q3", "dtype=nf4", "dtype=fp4")], "winner": None,
                                                     "reason": "no reference answer"}


class FakeChatAPI(BaseHTTPRequestHandler):
    """Answers like /v1/chat/completions: verdict by answer length, or trouble on cue."""

    state: dict = {}

    def log_message(self, *args):
        pass

    def do_POST(self):
        state = self.state
        with state["lock"]:
            state["in_flight"] += 1
            state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
            state["auth"].add(self.headers.get("Authorization"))
        try:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            user = body["messages"][-1]["content"]
            first, second = re.findall(r"Start of Assistant (?:\d|[AB])'s Answer\]\n(.*?)\n\n?\[The End", user,
                                       flags=re.S)
            with state["lock"]:
                state["requests"].append((first, second))
                state["layouts"].add("mtbench" if user.startswith("[User Question]") else "vicuna")
            trouble = state["trouble"](first, second)
            if trouble == "500":
                self.send_response(500)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"error": {"message": "internal error"}}')
                return
            # every answer takes a moment, as a real endpoint's does: the judge's concurrent requests
            # then overlap even on a loaded machine (an instant reply let them run one at a time)
            time.sleep(1.5 if trouble == "slow" else 0.05)
            text = "I cannot say." if trouble == "garbage" else state["verdict"](first, second)
            reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        finally:
            with state["lock"]:
                state["in_flight"] -= 1


@pytest.fixture
def chat_api(monkeypatch):
    FakeChatAPI.state = {"lock": threading.Lock(), "in_flight": 0, "max_in_flight": 0, "auth": set(),
                         "requests": [], "trouble": lambda a, b: None, "layouts": set(),
                         "verdict": lambda a, b: "1\nlonger" if len(a) > len(b) else "2\nlonger"}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeChatAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("JUDGE_KEY", KEY)
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", FakeChatAPI.state
    server.shutdown()


def openai_args(root: Path, url: str, *extra: str) -> list[str]:
    return [str(root), "--judge", "openai", "--base-url", url, "--model", "judge-1", "--api-key-env", "JUDGE_KEY",
            "--retries", "1", "--timeout", "0.5", "--concurrency", "3", *extra]


def test_openai_judge_against_a_real_http_server(tmp_path, chat_api):
    url, state = chat_api
    root = make_sweep(tmp_path)
    assert main(openai_args(root, url)) == 0
    rows = judgments(root)
    assert len(rows) == 18 and all(r["judge"] == "openai:judge-1" for r in rows)
    for r in rows:
        a = ANSWERS[{"dtype=nf4": "0", "dtype=fp4": "1", "dtype=int4": "2"}[r["model_a"]]][1][r["prompt_id"]]
        b = ANSWERS[{"dtype=nf4": "0", "dtype=fp4": "1", "dtype=int4": "2"}[r["model_b"]]][1][r["prompt_id"]]
        assert r["winner"] == ("a" if len(a) > len(b) else "b")
    assert state["auth"] == {f"Bearer {KEY}"} and 1 < state["max_in_flight"] <= 3
    assert KEY not in (root / "judgments.jsonl").read_text()


def test_errors_are_retried_then_written_as_such_and_a_rerun_judges_only_those(tmp_path, chat_api):
    url, state = chat_api
    root = make_sweep(tmp_path)
    cues = {"Eleven.": "500", "soft rain falls down": "slow", "I do not know": "garbage"}
    state["trouble"] = lambda a, b: cues.get(a) or cues.get(b)
    assert main(openai_args(root, url)) == 0
    rows = judgments(root)
    failed = [r for r in rows if r["winner"] is None]
    reasons = " ".join(r["reason"] for r in failed)
    assert "HTTP 500" in reasons and "Timeout" in reasons and "unparseable verdict" in reasons
    # transport errors are retried; an answer without a verdict is not (it would come again)
    assert all(r["reason"].endswith("(after 2 tries)") != r["reason"].startswith("unparseable") for r in failed)
    assert len(rows) == 18 and 0 < len(failed) < 18 and KEY not in (root / "judgments.jsonl").read_text()
    state["trouble"], state["requests"] = (lambda a, b: None), []
    assert main(openai_args(root, url)) == 0
    assert len(state["requests"]) == len(failed)  # only the missing ones were asked again
    again = judgments(root)
    assert len(again) == 18 and all(r["winner"] in ("a", "b") for r in again)


def test_score_mode_and_the_vicuna_relative_score(tmp_path, chat_api):
    url, state = chat_api
    root = make_sweep(tmp_path)
    state["verdict"] = lambda a, b: f"{min(10, len(a) // 3 + 1)} {min(10, len(b) // 3 + 1)}\nby length"
    assert main(openai_args(root, url, "--mode", "score", "--relative-to", "dtype=nf4")) == 0
    rows = judgments(root)
    assert all(r["score_a"] is not None for r in rows)
    score = lambda text: min(10, len(text) // 3 + 1)
    fp4 = next(s for s in relative_scores(rows, "dtype=nf4") if s.model == "dtype=fp4")
    mine = sum(score(t) for t in ANSWERS["1"][1].values())
    theirs = sum(score(t) for t in ANSWERS["0"][1].values())
    assert fp4.percent == pytest.approx(100 * mine / theirs) and fp4.lower <= fp4.percent <= fp4.upper
    assert fp4.n_prompts == 3


def test_human_judgments_import(tmp_path):
    root = make_sweep(tmp_path)
    csv_path = tmp_path / "human.csv"
    csv_path.write_text("prompt_id,model_a,model_b,winner\nq1,dtype=nf4,dtype=fp4,a\nq2,dtype=fp4,dtype=nf4,tie\n")
    assert main([str(root), "--import", str(csv_path)]) == 0
    human = [r for r in judgments(root) if r["judge"] == "human"]
    assert [(r["prompt_id"], r["winner"]) for r in human] == [("q1", "a"), ("q2", "tie")]
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt_id,model_a,model_b,winner\nq1,x,y,maybe\n")
    assert main([str(root), "--import", str(bad)]) == 2


def test_missing_key_is_one_line_and_names_the_variable_not_a_value(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    root = make_sweep(tmp_path)
    assert main([str(root), "--judge", "openai", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                 "--api-key-env", "NO_SUCH_KEY_VAR"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --judge openai needs an API key in the environment "
                                               "variable NO_SUCH_KEY_VAR")


def test_labels_name_runs(tmp_path):
    root = make_sweep(tmp_path)
    assert main([str(root), "--label", "0=guanaco-nf4", "--set", "prompts"]) == 0
    assert any(r["model_a"] == "guanaco-nf4" for r in judgments(root))


@pytest.mark.parametrize("text, winner", [
    ("2\nAssistant 2 explains why.", "b"),  # the first line, as the Vicuna prompt asks
    ("Both answers are short; the second is right.\n\nVerdict: 2", "b"),  # the last line
    ("Assistant A is vague. Assistant B is correct.\n\n[[B]]", "b"),  # FastChat's marker
    ("A comparison of the two...\n[[C]]", "tie"),
    ("tie\nneither is better", "tie"),
])
def test_verdicts_are_read_where_real_judges_put_them(text, winner):
    assert parse_verdict(text, "threeclass")[0] == winner


@pytest.mark.parametrize("text, reason", [
    ("1\nOn reflection the second is better.\n2", "ambiguous"),  # first and last lines disagree
    ("Either [[A]] or [[B]].", "ambiguous"),
    ("A fine pair of answers.", "no verdict"),
])
def test_an_ambiguous_or_missing_verdict_is_refused_with_its_reason(text, reason):
    with pytest.raises(Unparseable, match=reason):
        parse_verdict(text, "threeclass")


def test_a_judge_that_answers_on_its_last_line_is_judged_once(tmp_path, chat_api):
    url, state = chat_api
    root = make_sweep(tmp_path)
    state["verdict"] = lambda a, b: f"Let me compare them.\nThe answers differ.\nVerdict: {1 if len(a) > len(b) else 2}"
    assert main(openai_args(root, url)) == 0
    assert all(r["winner"] in ("a", "b") for r in judgments(root)) and len(state["requests"]) == 18


def test_mtbench_prompt_and_its_markers(tmp_path, chat_api):
    url, state = chat_api
    root = make_sweep(tmp_path)
    state["verdict"] = lambda a, b: f"Explanation.\n[[{'A' if len(a) > len(b) else 'B'}]]"
    assert main(openai_args(root, url, "--prompt", "mtbench")) == 0
    rows = judgments(root)
    assert len(rows) == 18 and all(r["winner"] in ("a", "b") for r in rows) and state["layouts"] == {"mtbench"}
    assert main(openai_args(root, url, "--prompt", "mtbench", "--mode", "score")) == 2  # its verdict has no scores


def test_nothing_judged_exits_non_zero_and_the_report_says_why(tmp_path, capsys):
    import socket
    import subprocess
    import sys

    root = make_sweep(tmp_path / "sweep")
    with socket.socket() as probe:  # a port nothing listens on: every request is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    import os

    os.environ["JUDGE_KEY"] = KEY
    try:
        code = main([str(root), "--judge", "openai", "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "j",
                     "--api-key-env", "JUDGE_KEY", "--retries", "0", "--timeout", "2"])
    finally:
        del os.environ["JUDGE_KEY"]
    out = capsys.readouterr()
    assert code == 1 and "0 verdicts, 18 could not be judged" in out.out
    assert "none of the 18 pairs could be judged" in out.err and "Connection" in out.err
    report = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "qlora_analysis", str(root), "--out", str(report)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = (report / "report.md").read_text()
    assert "0 judge verdicts, 18 pairs that could not be judged" in text
    assert "No Elo table: none of the 18 judgments has a verdict" in text and "Connection" in text
