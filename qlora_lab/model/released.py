"""Bases released quantized (`model.path=FILE.gguf`): the file's blocks become QuantLinear layers
as they are stored, never dequantized, so fine-tuning trains LoRA on the very weights the release
ships; what the release kept in F32 / F16 / BF16 (embeddings, norms, often the head) stays so.

transformers reads the GGUF header into its config and tokenizer, and maps GGUF's tensor names
to its own (`get_gguf_hf_weights_map`); its tensor processor undoes what llama.cpp's converter
did to a tensor (Llama's Q and K rows are permuted for its rotary layout). That permutation moves
whole rows, and a row is a run of whole blocks, so it applies to the stored bytes as well.
The model is built with empty weights first: only the stored tensors are ever in memory.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from qlora_lab.config import DTypeConfig
from qlora_lab.model.quantize import load_dtype, torch_dtype


def gguf_location(path: str) -> tuple[str, str]:
    """(folder, file name): how transformers' `from_pretrained(folder, gguf_file=name)` takes a GGUF file."""
    return os.path.split(os.path.abspath(path))


def load_gguf_tokenizer(path: str):
    """The tokenizer the GGUF file carries, as transformers rebuilds it."""
    from transformers import AutoTokenizer

    folder, name = gguf_location(path)
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


def load_gguf_base(path: str, dtype: DTypeConfig) -> torch.nn.Module:
    """A causal LM whose linear layers hold the file's Q4_0 / Q4_K / Q8_0 blocks (QuantLinear), the
    rest of its tensors as stored, widened to the run's load dtype."""
    import gguf
    from accelerate import init_empty_weights
    from qlora_kernels import QuantLinear
    from qlora_kernels.gguf_blocks import GGUF_BLOCKS, state_from_blocks
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    folder, name = gguf_location(path)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    with init_empty_weights():  # parameters on the meta device; buffers (rotary frequencies) real
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    reader = gguf.GGUFReader(path)
    architecture = reader.fields["general.architecture"].contents()
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config.to_dict())
    names = get_gguf_hf_weights_map(model, processor)
    kept, compute = load_dtype(dtype), torch_dtype(dtype.compute_dtype)
    quantized = [t for t in reader.tensors if t.tensor_type.name in GGUF_BLOCKS]
    for tensor in quantized + [t for t in reader.tensors if t not in quantized]:  # the layers first, then their biases
        hf_name = names.get(tensor.name)
        if hf_name is None:
            raise ValueError(f"{path}: GGUF tensor {tensor.name} has no place in a {config.model_type} model")
        shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists the fastest dimension first
        owner_name, _, leaf = hf_name.rpartition(".")
        owner = model.get_submodule(owner_name)
        kind = tensor.tensor_type.name
        if kind in GGUF_BLOCKS and isinstance(owner, torch.nn.Linear) and leaf == "weight":
            rows = processor.process(weights=np.asarray(tensor.data).reshape(shape[0], -1), name=tensor.name).weights
            state = state_from_blocks(kind, np.ascontiguousarray(rows), shape)
            parent_name, _, child = owner_name.rpartition(".")
            bias = torch.zeros(shape[0]) if owner.bias is not None else None  # its values come with its own tensor
            layer = QuantLinear.from_state(state, bias=bias, compute_dtype=compute)
            setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
            continue
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)  # F32 / F16 / BF16 as they are; an
        values = processor.process(weights=values, name=tensor.name).weights  # embedding in blocks, decoded
        owned = np.array(values, dtype=np.float32)  # a copy: the reader's arrays are the file's read-only pages
        set_frozen_tensor(owner, leaf, torch.from_numpy(owned).reshape(shape).to(kept))
    return finished(model, config, f"{path}: the GGUF file")


def finished(model: torch.nn.Module, config, source: str) -> torch.nn.Module:
    """A model built with empty weights and filled from a release: its head tied where the config
    ties it, every parameter given (else the first missing, named), in eval mode."""
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ValueError(f"{source} holds no tensor for {', '.join(missing[:3])}"
                         + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
    return model.eval()


def set_frozen_tensor(module: torch.nn.Module, leaf: str, value: torch.Tensor) -> None:
    """A parameter (frozen: the base is) or buffer of `module`, replaced by `value`."""
    old = getattr(module, leaf)
    if isinstance(old, torch.nn.Parameter):
        setattr(module, leaf, torch.nn.Parameter(value.to(old.dtype if not old.is_meta else value.dtype),
                                                 requires_grad=False))
    else:
        module.register_buffer(leaf, value)
