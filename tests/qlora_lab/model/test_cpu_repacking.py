"""bitsandbytes' AVX512-BF16 trap: evaluating must not change what training computes afterwards.

On a CPU with AVX512-BF16, an eval-mode Linear4bit forward with a no-grad input repacks the
weight in place; afterwards LoRA gradients are wrong, and out_features % 32 != 0 crashes.
The run switches that path off; these tests evaluate, then train, and compare the LoRA
gradients with a fresh model's. The MLP width 688 (not a multiple of 32) is deliberate.
"""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch

from qlora_lab.config import Arch, DTypeConfig, LoraConfig, ModelConfig, Pretrain
from qlora_lab.data.tokens import PadCollator, encode_pairs
from qlora_lab.evaluate.loss import heldout_loss
from qlora_lab.evaluate.rouge import generate_answers
from qlora_lab.model.build import build_model

def unit_model(width: int) -> ModelConfig:
    return ModelConfig(name=f"unit{width}", arch=Arch(vocab_size=512, hidden_size=64, intermediate_size=width,
                                                      num_layers=2, num_heads=2), pretrain=Pretrain(steps=0))


ODD_WIDTH, EVEN_WIDTH = unit_model(688), unit_model(704)
PAIRS = [("def add(a, b):\n    \"\"\"Sum.\"\"\"\n", "    return a + b\n"),
         ("def neg(x):\n    \"\"\"Negate.\"\"\"\n", "    return -x\n")]


def lora_grads(evaluate_first: bool, allow_repacking: bool = False, model_cfg: ModelConfig = ODD_WIDTH,
               backend: str = "bnb", dora: bool = False) -> dict[str, torch.Tensor]:
    built = build_model(model_cfg, DTypeConfig(backend=backend), LoraConfig(r=8, dropout=0.0, dora=dora), seed=0,
                        gradient_checkpointing=False)
    model, tok = built.model, built.tokenizer
    with torch.no_grad():  # B starts at zero; give it values so every adapter gradient is non-trivial
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
    if allow_repacking:
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = True
    examples = encode_pairs(PAIRS, tok, 64, 64, train_on_source=False)
    if evaluate_first:
        heldout_loss(model, examples, tok.pad_token_id, batch_size=2)
        generate_answers(model, tok, PAIRS[:1], max_new_tokens=4, source_max_len=64)
    model.train()
    batch = PadCollator(tok.pad_token_id)(examples)
    model(**batch).loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("backend", ["bnb", "lab"])  # lab: qlora_kernels' QuantLinear on the compiled codec
@pytest.mark.parametrize("model_cfg", [ODD_WIDTH, EVEN_WIDTH], ids=["width688", "width704"])
def test_training_after_evaluation_gets_a_fresh_models_gradients(model_cfg, backend):
    fresh = lora_grads(evaluate_first=False, model_cfg=model_cfg, backend=backend)
    after_eval = lora_grads(evaluate_first=True, model_cfg=model_cfg, backend=backend)
    assert fresh.keys() == after_eval.keys() and len(fresh) == 2 * 2 * 7  # A and B, 7 targets, 2 layers
    for name in fresh:
        assert torch.equal(fresh[name], after_eval[name]), name
    assert any(g.abs().sum() > 0 for g in fresh.values())


@pytest.mark.parametrize("backend", ["bnb", "lab"])
def test_dora_training_after_evaluation_gets_a_fresh_models_gradients(backend):
    """DoRA reads the 4-bit base twice more (its column norms, from a copy of the layer on
    bitsandbytes): evaluating first must change none of its gradients, the magnitudes' included."""
    fresh = lora_grads(evaluate_first=False, backend=backend, dora=True)
    after_eval = lora_grads(evaluate_first=True, backend=backend, dora=True)
    assert fresh.keys() == after_eval.keys() and len(fresh) == 3 * 2 * 7  # A, B and the magnitude
    for name in fresh:
        assert torch.equal(fresh[name], after_eval[name]), name
    assert all(g.abs().sum() > 0 for n, g in fresh.items() if "lora_magnitude_vector" in n)


def test_the_trap_is_real_here_so_the_test_above_can_fail():
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never takes the repacking path here")
    with pytest.raises(AssertionError):  # the repacking path on a width that is not a multiple of 32
        lora_grads(evaluate_first=True, allow_repacking=True)


def test_left_open_the_trap_silently_corrupts_gradients_here():
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never takes the repacking path here")
    fresh = lora_grads(evaluate_first=False, model_cfg=EVEN_WIDTH)
    trapped = lora_grads(evaluate_first=True, allow_repacking=True, model_cfg=EVEN_WIDTH)
    assert any(not torch.allclose(fresh[n], trapped[n], rtol=1e-3, atol=1e-6) for n in fresh)
