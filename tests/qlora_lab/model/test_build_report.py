"""A built base keeps what it cost and how well it learned (build.json): the held-out loss on
modules it was not pretrained on is how a shorter recipe is shown to reach the same base."""

from __future__ import annotations

import math

import pytest

from qlora_lab.config import Arch, ModelConfig, Pretrain
from qlora_lab.model.tiny import HELDOUT_WINDOWS, built_model_dir, heldout_windows, read_build_report

ARCH = Arch(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=1, num_heads=2)


@pytest.fixture(scope="module")
def untrained_base(tmp_path_factory):
    """A build with no pretraining (its tokenizer and report), made once for the tests below."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QLORA_LAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        return built_model_dir(ModelConfig(name="unit-init", arch=ARCH, pretrain=Pretrain(steps=0)))


def test_a_pretrained_build_reports_its_heldout_loss_tokens_and_seconds(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QLORA_LAB_CACHE", str(tmp_path))
    pretrain = Pretrain(steps=40, batch_size=4, seq_len=64, learning_rate=3e-3)
    folder = built_model_dir(ModelConfig(name="unit-built", arch=ARCH, pretrain=pretrain))
    report = read_build_report(folder)
    assert report is not None and report.name == "unit-built" and report.kind == "causal"
    assert report.recipe["steps"] == 40 and report.recipe["learning_rate"] == 3e-3
    assert report.pretrain_tokens == 40 * 4 * 64 and report.heldout_tokens == HELDOUT_WINDOWS * 64
    # a uniform guess over the vocabulary costs ln(512) = 6.24 nats; 40 steps learn well below it (5.35 here)
    assert math.isfinite(report.heldout_loss) and report.heldout_loss < math.log(ARCH.vocab_size) - 0.5
    assert 0 < report.tokenizer_s < report.total_s and report.pretrain_s > 0
    said = capsys.readouterr().err
    assert f"held-out loss {report.heldout_loss:.3f}" in said and "done in" in said


def test_a_build_without_pretraining_has_no_heldout_loss(untrained_base):
    report = read_build_report(untrained_base)
    assert report.heldout_loss is None and report.heldout_tokens == 0 and report.pretrain_tokens == 0


def test_heldout_windows_are_the_same_text_for_every_recipe_and_never_pretrained_on(untrained_base):
    from qlora_lab.data.stdlib import pretrain_text
    from qlora_lab.data.stdlib_mc import heldout_source_texts
    from qlora_lab.model.build import load_tokenizer

    tokenizer = load_tokenizer(str(untrained_base))
    windows = heldout_windows(tokenizer, 64)
    assert windows.shape == (HELDOUT_WINDOWS, 64) and (heldout_windows(tokenizer, 64) == windows).all()
    assert len({tuple(w) for w in windows.tolist()}) == HELDOUT_WINDOWS  # spread out, not one window repeated
    texts = [tokenizer.decode(w) for w in windows.tolist()]
    heldout, pretrained_on = "\n\n".join(heldout_source_texts()), pretrain_text()
    assert all(text in heldout for text in texts)
    # only boilerplate repeats across the halves (the codec tables of encodings/): 3 of 32 windows here
    assert sum(text in pretrained_on for text in texts) <= HELDOUT_WINDOWS // 8
