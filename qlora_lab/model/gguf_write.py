"""A Llama-family causal LM written as a GGUF file, as llama.cpp's converter writes one: its
metadata, its byte-level BPE tokenizer, Q and K rows permuted for llama.cpp's rotary layout, the
linear layers in Q4_0, Q4_K or Q8_0 blocks and the rest in F32 (norms) and F16 (embeddings, head).

What makes a GGUF release of a base here (the tests' checkpoints, the study's releases), and what
`export --merge 4bit` writes for a run on a GGUF base: a layer whose weight is already stored in a
GGUF block type is written as it is stored, bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

WRITTEN_TYPES = ("q4_0", "q4_k", "q8_0")


def write_gguf(model: torch.nn.Module, tokenizer, out: Path, storage: str = "q4_k", name: str | None = None) -> Path:
    """`model` (a Llama, Mistral or Qwen2 causal LM, its linear layers nn.Linear or QuantLinear) and
    its fast tokenizer -> `out`. nn.Linear layers are quantized to `storage`: Q4_0 and Q8_0 by the
    gguf package's own quantizer, Q4_K by ours (llama.cpp's reference; gguf has none). A Q4_K row
    that is not a multiple of 256 weights falls back to Q4_0 (llama.cpp falls back to Q5_0, which
    is not held here)."""
    import gguf

    from qlora_lab.gguf_checkpoint import GGUF_ARCHS

    if storage not in WRITTEN_TYPES:
        raise ValueError(f"GGUF storage {storage!r}: expected one of {', '.join(WRITTEN_TYPES)}")
    config = model.config
    architecture = next((a for a, t in GGUF_ARCHS.items() if t == config.model_type), None)
    if architecture is None:
        raise ValueError(f"model_type {config.model_type!r} cannot be written as GGUF here; supported: "
                         f"{', '.join(GGUF_ARCHS.values())}")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out), architecture)
    _write_metadata(writer, config, name or out.stem)
    _write_tokenizer(writer, tokenizer)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[architecture.upper()], config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, module, leaf in _tensors(model):
        if tied and hf_name == "lm_head.weight":
            continue
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise ValueError(f"{hf_name} has no GGUF name for {architecture}")
        gguf_name += "." + suffix
        if leaf == "weight" and hasattr(module, "quant_state"):
            kind, raw = _stored_blocks(module)
            writer.add_tensor(gguf_name, _permuted(raw, gguf_name, config), raw_dtype=gguf.GGMLQuantizationType[kind])
            continue
        values = getattr(module, leaf).detach().float().cpu().numpy()
        values = _permuted(values, gguf_name, config)
        if isinstance(module, torch.nn.Linear) and leaf == "weight" and hf_name != "lm_head.weight":
            kind = _block_type(storage, values.shape[1])
            raw = _quantized(values, kind)
            writer.add_tensor(gguf_name, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType[kind])
        elif values.ndim == 1:
            writer.add_tensor(gguf_name, values.astype(np.float32))  # norms, biases: F32 as llama.cpp keeps them
        else:
            writer.add_tensor(gguf_name, values.astype(np.float16))  # embeddings and the head: kept in 16 bits
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _tensors(model: torch.nn.Module):
    """(name, owning module, leaf) of every parameter, and of every QuantLinear's stored weight."""
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if hasattr(module, "quant_state"):
            yield f"{prefix}weight", module, "weight"
        for leaf, _ in module.named_parameters(recurse=False):
            yield f"{prefix}{leaf}", module, leaf


def _block_type(storage: str, row: int) -> str:
    if storage == "q4_k" and row % 256:
        return "Q4_0"
    return storage.upper()


def _quantized(values: np.ndarray, kind: str) -> np.ndarray:
    import gguf

    if kind == "Q4_K":
        from qlora_kernels import quantize
        from qlora_kernels.gguf_blocks import blocks_from_state

        return blocks_from_state(quantize(torch.from_numpy(values), "uint4", 32, scale="q4_k"))[1]
    return gguf.quants.quantize(values.astype(np.float32), gguf.GGMLQuantizationType[kind])


def _stored_blocks(module) -> tuple[str, np.ndarray]:
    from qlora_kernels.gguf_blocks import blocks_from_state

    return blocks_from_state(module.quant_state())


def _permuted(values: np.ndarray, gguf_name: str, config) -> np.ndarray:
    """llama.cpp's converter permutes Llama's Q and K rows (HF's rotary halves -> interleaved pairs);
    rows move whole, so the same holds for rows of blocks."""
    if config.model_type not in ("llama", "mistral") or not gguf_name.endswith((".attn_q.weight", ".attn_k.weight")):
        return values
    heads = config.num_attention_heads
    if ".attn_k." in gguf_name:
        heads = getattr(config, "num_key_value_heads", None) or heads
    return values.reshape(heads, 2, values.shape[0] // heads // 2, *values.shape[1:]).swapaxes(1, 2).reshape(values.shape)


def _write_metadata(writer, config, name: str) -> None:
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta") or getattr(config, "rope_theta", 10000.0)
    writer.add_rope_freq_base(float(theta))
    writer.add_vocab_size(config.vocab_size)


def _write_tokenizer(writer, tokenizer) -> None:
    """A byte-level BPE tokenizer as llama.cpp's `gpt2` model: tokens by id, merges, special ids."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise ValueError(f"tokenizer model {spec['model']['type']}: only a byte-level BPE is written as GGUF here")
    vocab = tokenizer.get_vocab()
    tokens = [None] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    specials = set(tokenizer.all_special_tokens)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in specials else 1 for t in tokens])  # 3: control, 1: normal
    writer.add_token_merges(merges)
    for role, token in (("bos", tokenizer.bos_token), ("eos", tokenizer.eos_token), ("pad", tokenizer.pad_token)):
        if token is not None:
            getattr(writer, f"add_{role}_token_id")(vocab[token])
    writer.add_add_bos_token(False)
