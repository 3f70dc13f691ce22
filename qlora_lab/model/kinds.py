"""Model kinds, a registry: what a decoder LM (causal), an encoder-decoder (seq2seq, T5) and a
sequence classifier (classifier, RoBERTa) each need, in one entry apiece. Adding a kind is one
entry here and its config files (conf/model/, its LoRA target family in targets.py).

Torch-free at import (config validation reads the names and families): the builders import
transformers and torch when they run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from qlora_lab.catalog import CLASSIFYING_KINDS, KIND_FAMILIES


@dataclass(frozen=True)
class ModelKind:
    name: str
    auto_class: str  # the transformers Auto class that loads a checkpoint of this kind
    peft_task: str  # peft's task type
    families: tuple[str, ...]  # what `model.family` may name (LoRA target names, targets.py)
    encode: Callable  # (train config, tokenizer, class labels or None) -> (pairs -> token examples)
    new_model: Callable  # (arch, tokenizer) -> a randomly initialised model of the kind (the built bases)
    pretrain_loss: Callable  # tokenizer -> ((model, batch of token windows) -> the built base's pretraining loss)
    trained_heads: tuple[str, ...] = ()  # modules kept unquantized and trained in full (the paper trained the head)
    classifies: bool = False  # trains on a classification dataset (dataset=glue), scored by accuracy
    template: Callable | None = None  # ids of <s>, </s> -> the tokenizer's post-processor (encoder kinds)
    mask_token: bool = False  # the built tokenizer has a <mask> (masked-LM pretraining)
    saved_as: str | None = None  # the built checkpoint's `architectures`, when it loads as another head


def _encode_pairs(tc, tokenizer, labels):
    from qlora_lab.data import tokens

    return lambda pairs: tokens.encode_pairs(pairs, tokenizer, tc.source_max_len, tc.target_max_len, tc.train_on_source)


def _encode_seq2seq(tc, tokenizer, labels):
    from qlora_lab.data import tokens

    return lambda pairs: tokens.encode_seq2seq(pairs, tokenizer, tc.source_max_len, tc.target_max_len)


def _encode_classes(tc, tokenizer, labels):
    from qlora_lab.data import tokens

    return lambda pairs: tokens.encode_classes(pairs, tokenizer, labels, tc.source_max_len)


def _specials(tokenizer) -> dict:
    return dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)


def _new_llama(arch, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_heads,
        max_position_embeddings=arch.max_seq_len, tie_word_embeddings=False, **_specials(tokenizer)))


def _new_t5(arch, tokenizer):
    """T5 1.1: gated-GELU MLP (wi_0, wi_1, wo), untied head."""
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(T5Config(
        vocab_size=len(tokenizer), d_model=arch.hidden_size, d_ff=arch.intermediate_size,
        d_kv=arch.hidden_size // arch.num_heads, num_layers=arch.num_layers, num_heads=arch.num_heads,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=tokenizer.pad_token_id,
        dropout_rate=0.0, **_specials(tokenizer)))


def _new_roberta(arch, tokenizer):
    from transformers import RobertaConfig, RobertaForMaskedLM

    return RobertaForMaskedLM(RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads,
        max_position_embeddings=arch.max_seq_len + 2, **_specials(tokenizer)))


def _next_token_loss(tokenizer):
    return lambda model, batch: model(input_ids=batch, labels=batch).loss


def _continuation_loss(tokenizer):
    """The first half of a window in, the second half out."""

    def continuation(model, batch):
        half = batch.shape[1] // 2
        return model(input_ids=batch[:, :half], labels=batch[:, half:].contiguous()).loss

    return continuation


def _masked_lm_loss(tokenizer):
    """BERT's masking: 15% of tokens, 80% of them <mask>, 10% random, 10% kept."""
    import torch

    def masked(model, batch):
        picked = torch.rand(batch.shape) < 0.15
        labels = torch.where(picked, batch, torch.full_like(batch, -100))
        inputs = batch.clone()
        roll = torch.rand(batch.shape)
        inputs[picked & (roll < 0.8)] = tokenizer.mask_token_id
        swap = picked & (roll >= 0.8) & (roll < 0.9)
        inputs[swap] = torch.randint(len(tokenizer), (int(swap.sum()),))
        return model(input_ids=inputs, labels=labels).loss

    return masked


def _t5_template(ids: dict) -> Any:
    from tokenizers import processors

    return processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                         special_tokens=[("</s>", ids["</s>"])])


def _roberta_template(ids: dict) -> Any:
    from tokenizers import processors

    return processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                         special_tokens=[("<s>", ids["<s>"]), ("</s>", ids["</s>"])])


KINDS: dict[str, ModelKind] = {
    "causal": ModelKind("causal", "AutoModelForCausalLM", "CAUSAL_LM", KIND_FAMILIES["causal"],
                        encode=_encode_pairs, new_model=_new_llama, pretrain_loss=_next_token_loss),
    "seq2seq": ModelKind("seq2seq", "AutoModelForSeq2SeqLM", "SEQ_2_SEQ_LM", KIND_FAMILIES["seq2seq"],
                         encode=_encode_seq2seq, new_model=_new_t5, pretrain_loss=_continuation_loss,
                         template=_t5_template),
    "classifier": ModelKind("classifier", "AutoModelForSequenceClassification", "SEQ_CLS", KIND_FAMILIES["classifier"],
                            encode=_encode_classes, new_model=_new_roberta, pretrain_loss=_masked_lm_loss,
                            trained_heads=("classifier",), classifies="classifier" in CLASSIFYING_KINDS,
                            template=_roberta_template,
                            mask_token=True, saved_as="RobertaForSequenceClassification"),
}
