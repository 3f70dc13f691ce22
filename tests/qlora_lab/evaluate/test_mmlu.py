"""MMLU: the original prompt text, A-D logit scoring checked by hand, the unweighted subject mean,
and the batched shared-prefix evaluation equal to a plain one-question-at-a-time loop."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import FIXTURES, run_cli
from qlora_lab.config import Arch, DTypeConfig, LoraConfig, ModelConfig, Pretrain
from qlora_lab.evaluate import mmlu

FOLDER = FIXTURES / "mmlu"


def test_prompt_is_the_original_benchmarks():
    dev, questions = mmlu.load_local(FOLDER, "test")["world_religions"]
    prefix = mmlu.prompt_parts("world_religions", dev, shots=1)
    assert prefix == ("The following are multiple choice questions (with answers) about world religions.\n\n"
                      "In which city is the Kaaba?\nA. Medina\nB. Jerusalem\nC. Mecca\nD. Cairo\nAnswer: C\n\n")
    assert mmlu.format_question(questions[0], with_answer=False) == (
        "The holy book of Islam is the\nA. Torah\nB. Quran\nC. Bible\nD. Gita\nAnswer:")
    assert len(mmlu.prompt_parts("world_religions", dev, shots=5).split("Answer:")) == 6


def test_accuracy_by_hand():
    logits = torch.tensor([[1.0, 2.0, 0.0, 0.0],   # B
                           [5.0, 0.0, 0.0, 0.0],   # A
                           [0.0, 0.0, 0.0, 1.0],   # D
                           [3.0, 3.0, 0.0, 0.0]])  # a tie: the first letter, A
    assert mmlu.accuracy(logits, ["B", "A", "A", "A"]) == 0.75


def test_splits_read_their_own_folder():
    test, val = mmlu.load_local(FOLDER, "test"), mmlu.load_local(FOLDER, "val")
    assert {s: len(q) for s, (_, q) in test.items()} == {"high_school_physics": 4, "world_religions": 3}
    assert {s: len(q) for s, (_, q) in val.items()} == {"high_school_physics": 2, "world_religions": 2}
    assert all(len(dev) == 5 for dev, _ in test.values())


def test_a_malformed_row_names_file_and_line(tmp_path):
    for part in ("dev", "test"):
        (tmp_path / part).mkdir()
    (tmp_path / "test" / "law_test.csv").write_text("q,a,b,c,d,A\nq2,a,b,c,E\n")
    with pytest.raises(ValueError, match=r"law_test.csv:2: expected question,A,B,C,D,answer"):
        mmlu.load_local(tmp_path, "test")


@pytest.fixture(scope="module")
def unit_model():
    from qlora_lab.model.build import build_model

    cfg = ModelConfig(name="unit_mmlu", arch=Arch(vocab_size=512, hidden_size=64, intermediate_size=128,
                                                  num_layers=2, num_heads=2), pretrain=Pretrain(steps=0))
    built = build_model(cfg, DTypeConfig(name="fp32", backend="none", double_quant=None, blocksize=None,
                                         compute_dtype="fp32"), LoraConfig(r=4, dropout=0.0), seed=0,
                        gradient_checkpointing=False)
    built.model.eval()
    return built


@pytest.mark.parametrize("shots", [0, 5])
def test_batched_shared_prefix_equals_one_at_a_time(unit_model, shots):
    tok = unit_model.tokenizer
    dev, questions = mmlu.load_local(FOLDER, "test")["high_school_physics"]
    prefix = tok(tok.bos_token + mmlu.prompt_parts("high_school_physics", dev, shots), add_special_tokens=False)["input_ids"]
    suffixes = [tok(mmlu.format_question(q, False), add_special_tokens=False)["input_ids"] for q in questions]
    ids = mmlu.choice_token_ids(tok)
    batched = mmlu.choice_logits_batched(unit_model.model, prefix, suffixes, ids, batch_size=3, pad_id=tok.pad_token_id)
    plain = mmlu.choice_logits_one_by_one(unit_model.model, prefix, suffixes, ids)
    torch.testing.assert_close(batched, plain, rtol=1e-4, atol=1e-4)


def test_mean_is_over_subjects_not_questions(unit_model):
    tok, model = unit_model.tokenizer, unit_model.model
    subjects = mmlu.load_local(FOLDER, "test")
    result = mmlu.evaluate_mmlu(model, tok, subjects, "test", 5, batch_size=2)
    by_hand = {}
    for subject, (dev, questions) in subjects.items():
        prefix = tok(tok.bos_token + mmlu.prompt_parts(subject, dev, 5), add_special_tokens=False)["input_ids"]
        suffixes = [tok(mmlu.format_question(q, False), add_special_tokens=False)["input_ids"] for q in questions]
        logits = mmlu.choice_logits_one_by_one(model, prefix, suffixes, mmlu.choice_token_ids(tok))
        by_hand[subject] = mmlu.accuracy(logits, [q.answer for q in questions])
    assert result.by_subject == by_hand and result.n_questions == 7
    assert result.accuracy == pytest.approx(sum(by_hand.values()) / 2)


def test_the_record_names_split_and_shots(tmp_path):
    proc = run_cli("train.max_steps=0", f"eval.mmlu.path={FOLDER}", "eval.mmlu.split=val", "eval.mmlu.shots=0",
                   "eval.n_generate=0", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "record.json").read_text())["metrics"]
    assert (metrics["mmlu_split"], metrics["mmlu_shots"], metrics["mmlu_n_questions"]) == ("val", 0, 4)
    assert set(metrics["mmlu_acc_by_subject"]) == {"high_school_physics", "world_religions"}
    assert 0.0 <= metrics["mmlu_acc"] <= 1.0
