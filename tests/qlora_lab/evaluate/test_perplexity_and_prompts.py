"""Corpus perplexity by hand, answers to a prompts file for judging, seeded sampling."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import FIXTURES, fastchat_questions, run_cli
from qlora_lab.evaluate.perplexity import corpus_perplexity, corpus_texts
from qlora_lab.evaluate.prompt_sets import read_prompts
from qlora_lab.evaluate.rouge import generate_answers


@pytest.fixture(scope="module")
def unit_model():
    from qlora_lab.config import Arch, DTypeConfig, LoraConfig, ModelConfig, Pretrain
    from qlora_lab.model.build import build_model

    cfg = ModelConfig(name="unit_ppl", arch=Arch(vocab_size=512, hidden_size=64, intermediate_size=128,
                                                 num_layers=2, num_heads=2), pretrain=Pretrain(steps=0))
    fp32 = DTypeConfig(name="fp32", backend="none", double_quant=None, blocksize=None, compute_dtype="fp32")
    return build_model(cfg, fp32, LoraConfig(r=4, dropout=0.0), seed=0, gradient_checkpointing=False)


def test_corpus_perplexity_by_hand(unit_model):
    model, tok = unit_model.model.eval(), unit_model.tokenizer
    texts = corpus_texts(FIXTURES / "corpus", None, None, "text")
    assert len(texts) == 2 and texts[0].startswith("def compile")  # sorted by file name
    ppl, tokens = corpus_perplexity(model, tok, texts, seq_len=64, max_tokens=10_000, batch_size=4)
    ids = []
    for text in texts:
        ids += tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, 64):
            window = torch.tensor([ids[start : start + 64]])
            if window.shape[1] < 2:
                continue
            logits = model(input_ids=window).logits[0, :-1]
            nll += torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="sum").item()
            count += window.shape[1] - 1
    windows = math.ceil((len(ids) - 1) / 64)
    assert tokens == count == len(ids) - windows  # each window predicts all but its first token
    assert ppl == pytest.approx(math.exp(nll / count), rel=1e-6)


def test_paper_sampling_is_seeded(unit_model):
    pairs = [("Write a haiku about rain.", None)]
    a = generate_answers(unit_model.model, unit_model.tokenizer, pairs, 12, 64, sampling="paper", seed=3)
    b = generate_answers(unit_model.model, unit_model.tokenizer, pairs, 12, 64, sampling="paper", seed=3)
    assert a == b and a[0]["id"] == 0


def test_prompts_file_rows_need_id_and_prompt(tmp_path):
    assert [r["id"] for r in read_prompts(FIXTURES / "prompts" / "questions.jsonl")] == ["q1", "q2", "q3"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "hi"}) + "\n")
    with pytest.raises(ValueError, match="row 1 lacks id or prompt; expected fields: id, prompt, reference"):
        read_prompts(bad)


def test_eval_only_run_with_corpus_and_prompts(tmp_path, file_server, monkeypatch):
    """A prompts file and the Vicuna set (from a server on 127.0.0.1) answered in one run."""
    base, _ = file_server
    (tmp_path / "served" / "question.jsonl").write_text(fastchat_questions())
    monkeypatch.setenv("QLORA_LAB_VICUNA_URL", f"{base}/question.jsonl")
    proc = run_cli("train.max_steps=0", f"eval.ppl.path={FIXTURES / 'corpus'}",
                   f"eval.prompts=[{FIXTURES / 'prompts' / 'questions.jsonl'},vicuna]", "eval.sampling=paper",
                   "eval.prompt_template='### Human: {prompt}### Assistant:'", "eval.n_generate=1",
                   "eval.max_new_tokens=8", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "record.json").read_text())["metrics"]
    assert metrics["ppl_on"] == "corpus" and metrics["ppl"] > 1 and metrics["ppl_tokens"] > 100
    rows = [json.loads(line) for line in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    prompted = [r for r in rows if r["set"] == "prompts"]
    assert [r["id"] for r in prompted] == ["q1", "q2", "q3"] + [f"vicuna-{i}" for i in range(1, 81)]
    assert prompted[-1]["prompt"] == "What is question 80 about?"
    assert prompted[0]["prompt"] == "How do I reverse a list in Python?" and prompted[2]["reference"] is None
    assert [r["id"] for r in rows if r["set"] == "heldout"] == ["heldout-0"]
