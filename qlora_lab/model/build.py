"""Build the run's model: load the base (quantized by the dtype group), attach LoRA.

Also counts what the record reports about it: parameters, trainable parameters, the stored
bits per weight of the quantized linear layers and their error against the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from qlora_lab.checkpoint_config import released_summary
from qlora_lab.config import DTypeConfig, LoraConfig, ModelConfig
from qlora_lab.gguf_checkpoint import is_gguf
from qlora_lab.model.bits import base_linear_bits, total_stored_bits
from qlora_lab.model.kinds import KINDS
from qlora_lab.model.quantize import bnb_config, disable_cpu_weight_repacking, load_dtype, to_compute_dtype
from qlora_lab.model.targets import peft_target_pattern, target_names
from qlora_lab.model.weight_error import weight_error



@dataclass
class ModelInfo:
    """The record's `model` block."""

    name: str
    path: str  # what from_pretrained loaded: hub id or local folder
    n_params: int  # logical parameters of the base (a 4-bit weight counts as one)
    n_trainable: int
    bits_per_param: float  # stored bits per weight of the base's quantized linear layers
    quantized_layers: int
    total_bits: int | None = None  # every bit the base stores: weights as stored, the rest at its dtype
    model_type: str | None = None  # config.json's model_type (llama, gpt2, t5, ...)
    architecture: str | None = None  # the transformers class loaded (LlamaForCausalLM, ...)
    weight_sqnr_db: float | None = None  # quantized linear layers' SQNR against the checkpoint, mean over layers
    weight_sqnr_min_db: float | None = None  # the worst layer's
    weight_kurtosis: float | None = None  # the checkpoint's linear weights' kurtosis, mean over layers (Gaussian: 3)
    released: str | None = None  # the release the base's storage came from (`gguf q4_k`); None: quantized here


@dataclass
class BuiltModel:
    model: torch.nn.Module
    tokenizer: object
    info: ModelInfo


def model_path(cfg: ModelConfig) -> str:
    """A locally built base's cached folder (built on first use), or the hub id / folder."""
    if cfg.source == "build":
        from qlora_lab.model.tiny import built_model_dir

        return str(built_model_dir(cfg))
    return cfg.path


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    if is_gguf(path):  # a llama.cpp release carries its own
        from qlora_lab.model.released import load_gguf_tokenizer

        tokenizer = load_gguf_tokenizer(path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # LLaMA ships none; the paper added one
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def load_base(path: str, dtype: DTypeConfig, kind: str = "causal", num_labels: int | None = None) -> torch.nn.Module:
    """The base in the dtype group's storage: bitsandbytes through transformers, our own
    codecs (backend lab: layers swapped after a 16-bit load), or unquantized. The output head
    (and a classifier's head) stays unquantized."""
    import transformers

    if dtype.released and is_gguf(path):  # stored as released: its blocks as they are, no 16-bit load
        from qlora_lab.model.released import load_gguf_base

        return load_gguf_base(path, dtype)
    if not is_gguf(path) and (dtype.released or released_summary(path) is not None):  # an NVFP4 release
        from qlora_lab.model.merge import dequantize_linears
        from qlora_lab.model.released_nvfp4 import load_nvfp4_base

        model = load_nvfp4_base(path, dtype)
        if not dtype.released:  # its unquantized reference: the stored values decoded, as compressed-tensors does
            dequantize_linears(model)
            model.to(load_dtype(dtype))
        return model
    spec = KINDS[kind]
    auto_class, heads = spec.auto_class, spec.trained_heads
    extra = {"num_labels": num_labels} if spec.classifies else {}
    if is_gguf(path):  # a release's unquantized reference: transformers dequantizes it
        from qlora_lab.model.released import gguf_location

        path, name = gguf_location(path)
        extra = {**extra, "gguf_file": name}
    device_map = "auto" if torch.cuda.is_available() else "cpu"
    model = getattr(transformers, auto_class).from_pretrained(
        path, quantization_config=bnb_config(dtype, skip_modules=heads), dtype=load_dtype(dtype),
        device_map=device_map, **extra)
    if "gguf_file" in extra:  # dequantized on load: an ordinary model from here (transformers would refuse to save it)
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
    if dtype.backend == "lab":
        from qlora_lab.model.lab_backend import quantize_linears

        quantize_linears(model, dtype, skip=_head_ids(model, heads))
    disable_cpu_weight_repacking(model)
    return model


def _head_ids(model: torch.nn.Module, heads: tuple[str, ...]) -> set[int]:
    """ids of the modules that stay unquantized: the output embeddings and the named heads."""
    out = model.get_output_embeddings()
    kept = {id(out)} if out is not None else set()
    for name in heads:
        for module in model.get_submodule(name).modules():
            kept.add(id(module))
    return kept


def build_model(model_cfg: ModelConfig, dtype: DTypeConfig, lora: LoraConfig, seed: int,
                gradient_checkpointing: bool, num_labels: int | None = None) -> BuiltModel:
    """Base + quantization + LoRA adapters (or, with lora.enabled=false, every weight trained);
    adapter init is seeded, so runs repeat exactly."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    path = model_path(model_cfg)
    tokenizer = load_tokenizer(path)
    targets = peft_target_pattern(target_names(model_cfg.family, lora.targets))
    init = initial_adapter(model_cfg, dtype, lora, seed, num_labels)
    torch.manual_seed(seed)  # a classifier's fresh head is initialised at load
    base = load_base(str(init.base_path) if init else path, dtype, model_cfg.kind, num_labels)
    task_type, heads = KINDS[model_cfg.kind].peft_task, KINDS[model_cfg.kind].trained_heads
    stored = base_linear_bits(base, skip=_head_ids(base, heads))
    errors = weight_error(base, path, skip=_head_ids(base, heads), adapter_deltas=init.deltas() if init else None)
    total_bits = total_stored_bits(base)
    n_params = _logical_params(base)
    base = to_compute_dtype(base, dtype)  # after the count: what is stored, not its widened copy
    if not lora.enabled:  # full fine-tuning: the 16-bit baseline
        if gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = base
    else:
        base = prepare_base(base, dtype, gradient_checkpointing)
        torch.manual_seed(seed)
        adapters = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                                  bias="none", task_type=task_type, modules_to_save=list(heads) or None,
                                  fan_in_fan_out=_transposed_weights(base), use_dora=lora.dora,
                                  use_rslora=lora.rslora)
        if dtype.backend == "lab":
            from qlora_lab.model.lab_backend import register_with_peft

            register_with_peft(adapters)
        model = get_peft_model(base, adapters)
        if init is not None:
            init.apply(model)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info = ModelInfo(name=model_cfg.name, path=path, n_params=n_params, n_trainable=n_trainable,
                     bits_per_param=round(stored.bits_per_param, 6),
                     quantized_layers=_quantized_layers(base), total_bits=total_bits,
                     model_type=getattr(base.config, "model_type", None), architecture=type(base).__name__,
                     released=dtype.released, **vars(errors))
    return BuiltModel(model=model, tokenizer=tokenizer, info=info)


def initial_adapter(model_cfg: ModelConfig, dtype: DTypeConfig, lora: LoraConfig, seed: int,
                    num_labels: int | None = None):
    """LoftQ's / PiSSA's split of the base (an AdapterInit: the checkpoint the base loads from, the
    adapter's starting factors); None for peft's default init, where the base is the checkpoint."""
    if not lora.enabled or lora.init == "gaussian":
        return None
    from qlora_lab.model.adapter_init import adapter_init

    path = model_path(model_cfg)
    fp32 = DTypeConfig(name="fp32", backend="none", double_quant=None, blocksize=None, compute_dtype="fp32")
    return adapter_init(path, model_cfg.kind, dtype, lora, peft_target_pattern(target_names(model_cfg.family, lora.targets)),
                        seed, load_unquantized=lambda: load_base(path, fp32, model_cfg.kind, num_labels))


def _transposed_weights(model: torch.nn.Module) -> bool:
    """GPT-2's Conv1D layers store (in, out): LoRA must know where they stay unquantized."""
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


def prepare_base(base: torch.nn.Module, dtype: DTypeConfig, gradient_checkpointing: bool) -> torch.nn.Module:
    """peft's k-bit preparation (norms in fp32, input grads on), as the paper's code did."""
    if dtype.backend == "none":
        return base
    if dtype.backend == "lab":
        from qlora_lab.model.lab_backend import prepare_lab_base

        return prepare_lab_base(base, gradient_checkpointing)
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing,
                                           gradient_checkpointing_kwargs={"use_reentrant": False})


def _logical_params(model: torch.nn.Module) -> int:
    """Parameters, a 4-bit weight counting once; a QuantLinear's weight lives in buffers."""
    total = 0
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        total += torch.Size(state.shape).numel() if state is not None else param.numel()
    return total + sum(m.in_features * m.out_features for m in model.modules() if _is_lab_linear(m))


def _is_lab_linear(module: torch.nn.Module) -> bool:
    return callable(getattr(module, "quant_state", None))


def _quantized_layers(model: torch.nn.Module) -> int:
    import bitsandbytes as bnb

    return sum(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) or _is_lab_linear(m) for m in model.modules())


def adapter_dir(run_dir: Path) -> Path:
    return run_dir / "adapter"


def full_model_dir(run_dir: Path) -> Path:
    """Where a full fine-tune (lora.enabled=false) saves its weights."""
    return run_dir / "model"
