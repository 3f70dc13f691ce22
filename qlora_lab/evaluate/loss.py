"""Held-out loss and perplexity, weighted by target token (not by batch)."""

from __future__ import annotations

import math

from qlora_lab.evaluate.registry import EvalInputs, evaluation, no_grad
from qlora_lab.model.kinds import KINDS


PPL_LOSS_CAP = 50.0  # a diverged run's perplexity stays a finite, readable number (e^50) instead of inf


@no_grad
def heldout_loss(model, examples: list[dict], pad_token_id: int, batch_size: int) -> tuple[float, float]:
    """(mean loss per target token, its perplexity) over `examples`. A decoder-only model
    predicts each next token of its input; an encoder-decoder (T5) its labels, decoded from
    the labels shifted right."""
    import torch

    from qlora_lab.data.tokens import IGNORE_INDEX, PadCollator

    was_training = model.training
    model.eval()
    collate = PadCollator(pad_token_id)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[start : start + batch_size]).items()}
        if _encoder_decoder(model):
            logits = model(**batch).logits.float()
            labels = batch["labels"]
        else:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()[:, :-1]
            labels = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX,
                                                   reduction="sum")
        total += losses.item()
        count += int((labels != IGNORE_INDEX).sum())
    model.train(was_training)
    loss = total / max(count, 1)
    return loss, math.exp(min(loss, PPL_LOSS_CAP))


def _encoder_decoder(model) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


@evaluation("loss", order=10, enabled=lambda c: c.eval.loss and not KINDS[c.model.kind].classifies,
            metrics=("eval_loss", "ppl"))
def measure(inputs: EvalInputs) -> dict:
    """Held-out loss and perplexity over the eval split's target tokens."""
    loss, ppl = heldout_loss(inputs.model, inputs.encode(inputs.eval_pairs), inputs.tokenizer.pad_token_id,
                             inputs.config.eval.batch_size)
    return {"eval_loss": loss, "ppl": ppl, "ppl_on": "heldout"}
