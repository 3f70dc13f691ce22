"""Adapter inits that read the 16-bit weights (`lora.init=loftq|pissa`): where the adapter starts,
and what the quantized base then stores.

Both split each adapted weight W into what the base stores and what the adapter starts at:
- PiSSA (peft's own `pissa` / `pissa_niter_N` init, run on the unquantized base): the adapter takes
  W's top r singular directions, the base stores the residual W - sBA, quantized by the run.
- LoftQ: the adapter fits the quantization error, sBA = SVD_r(W - Q), alternating with Q =
  quantize(W - sBA) for `lora.loftq_iter` rounds. peft's own LoftQ moves every weight to CUDA and
  quantizes with NF4 without double quantization; this one quantizes with the run's own data type
  (blocksize, double quantization and load precision included: our codecs are bit-exact with
  bitsandbytes) on any device, and keeps peft's decomposition (`_low_rank_decomposition`).
  Unlike peft's it divides by the LoRA scale, so that sBA, not BA, is the fitted error.

The base is then loaded through the ordinary path (bitsandbytes or lab) from a copy of the
checkpoint whose adapted weights are replaced: one folder per base, init and (LoftQ) data type,
built once and cached, with the adapter's starting factors beside it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from qlora_lab.config import DTypeConfig, LoraConfig

FACTORS_NAME = "adapter_init.safetensors"
INIT_VERSION = 1  # bump when what a cached init holds changes


@dataclass
class AdapterInit:
    """A base to load instead of the checkpoint, and each adapted module's starting factors."""

    base_path: Path
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (A: r x in, B: out x r)
    scaling: float

    def deltas(self) -> dict[str, torch.Tensor]:
        """Each module's sBA (out x in), float32: what the adapter adds to the stored weight at init."""
        return {name: (b.float() @ a.float()) * self.scaling for name, (a, b) in self.factors.items()}

    def apply(self, peft_model: torch.nn.Module, adapter: str = "default") -> None:
        """The factors into the model's LoRA layers; DoRA's magnitudes recomputed on top of them, so
        that the model at init is base + sBA exactly as for plain LoRA."""
        prefix = "base_model.model."
        for name, (a, b) in self.factors.items():
            layer = peft_model.get_submodule(prefix + name)
            with torch.no_grad():
                layer.lora_A[adapter].weight.copy_(a)
                layer.lora_B[adapter].weight.copy_(b)
            if adapter in getattr(layer, "lora_variant", {}):
                layer.lora_variant[adapter].init(layer, adapter_name=adapter)


def lora_scaling(lora: LoraConfig) -> float:
    return lora.alpha / (math.sqrt(lora.r) if lora.rslora else lora.r)


def adapter_init(path: str, kind: str, dtype: DTypeConfig, lora: LoraConfig, target_pattern: str, seed: int,
                 load_unquantized: Callable[[], torch.nn.Module]) -> AdapterInit:
    """The cached init for this checkpoint (built on first use, under a lock); `load_unquantized`
    loads the checkpoint in float32, unquantized."""
    from safetensors.torch import load_file

    from qlora_lab.cache import build_lock, cache_dir

    key = _init_key(path, dtype, lora, target_pattern, seed)
    folder = cache_dir() / "adapter_init" / key
    if not (folder / FACTORS_NAME).exists():
        with build_lock(f"adapter_init/{key}"):
            if not (folder / FACTORS_NAME).exists():
                _build(folder, path, kind, dtype, lora, target_pattern, seed, load_unquantized)
    stored = load_file(str(folder / FACTORS_NAME))
    names = sorted({k.rsplit(".", 1)[0] for k in stored})
    return AdapterInit(base_path=folder, factors={n: (stored[f"{n}.A"], stored[f"{n}.B"]) for n in names},
                       scaling=lora_scaling(lora))


def _init_key(path: str, dtype: DTypeConfig, lora: LoraConfig, target_pattern: str, seed: int) -> str:
    """What decides an init: the checkpoint's files, the adapter's shape and scale, the init and its
    iterations, and for LoftQ the storage it fits."""
    files = []
    if Path(path).is_dir():
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(path).iterdir() if p.is_file())
    spec = {"path": str(path), "files": files, "init": lora.init, "r": lora.r, "scaling": lora_scaling(lora),
            "targets": target_pattern, "version": INIT_VERSION}
    if lora.init == "loftq":
        spec.update(loftq_iter=lora.loftq_iter, dtype=[dtype.name, dtype.codebook, dtype.blocksize,
                                                       dtype.double_quant, dtype.compute_dtype]
                    + ([dtype.scale] if dtype.scale not in (None, "fp32", "dq8") else []))
    else:
        spec.update(pissa_niter=lora.pissa_niter, seed=seed if lora.pissa_niter else None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _build(folder: Path, path: str, kind: str, dtype: DTypeConfig, lora: LoraConfig, target_pattern: str,
           seed: int, load_unquantized: Callable[[], torch.nn.Module]) -> None:
    """Split every adapted weight, write the checkpoint copy and the factors (factors last: their
    file marks the folder complete)."""
    from safetensors.torch import save_file

    from qlora_lab.cache import atomic_write
    from qlora_lab.model.weight_error import checkpoint_tensors

    original = checkpoint_tensors(path)
    if original is None:
        raise FileNotFoundError(f"lora.init={lora.init} needs the checkpoint's safetensors; {path} has none")
    layers = _adapted_linears(load_unquantized(), kind, lora, target_pattern, seed)
    split = _pissa if lora.init == "pissa" else _loftq
    bases, factors = {}, {}
    for name, (weight, peft_factors) in layers.items():
        bases[name], factors[f"{name}.A"], factors[f"{name}.B"] = split(weight, peft_factors, lora, dtype,
                                                                        original.dtype())
    folder.mkdir(parents=True, exist_ok=True)
    _write_checkpoint_copy(Path(original.folder), folder, original, bases)
    atomic_write(folder / FACTORS_NAME,
                 lambda tmp: save_file({k: v.contiguous() for k, v in factors.items()}, tmp))


def _adapted_linears(base: torch.nn.Module, kind: str, lora: LoraConfig, target_pattern: str,
                     seed: int) -> dict[str, tuple[torch.Tensor, tuple | None]]:
    """Per adapted module (name in the base model): its float32 weight (out x in) and, for PiSSA,
    peft's factors (A, B) with the residual peft left in the layer as the weight."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer

    from qlora_lab.model.kinds import KINDS

    init = True if lora.init != "pissa" else ("pissa" if not lora.pissa_niter else f"pissa_niter_{lora.pissa_niter}")
    transposed = _has_conv1d(base)
    torch.manual_seed(seed)  # pissa_niter_N's randomized SVD
    model = get_peft_model(base, PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, target_modules=target_pattern,
                                                init_lora_weights=init, use_rslora=lora.rslora,
                                                fan_in_fan_out=transposed, task_type=KINDS[kind].peft_task))
    layers = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        weight = module.get_base_layer().weight.detach().float()
        weight = weight.t() if transposed else weight
        factors = (module.lora_A["default"].weight.detach().float(), module.lora_B["default"].weight.detach().float())
        layers[name.removeprefix("base_model.model.")] = (weight.contiguous(), factors if lora.init == "pissa" else None)
    return layers


def _has_conv1d(model: torch.nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


def _pissa(weight, peft_factors, lora, dtype, checkpoint_dtype):
    """peft's PiSSA: the residual it left in the layer is what the base stores."""
    lora_A, lora_B = peft_factors
    return weight, lora_A, lora_B


def _loftq(weight, peft_factors, lora, dtype, checkpoint_dtype):
    """LoftQ with the run's quantizer: Q = quantize(W - sBA), sBA = SVD_r(W - Q), `loftq_iter` times
    (the first with B A = 0). Returns what the base must store (its quantization is that last Q)."""
    from peft.utils.loftq_utils import _low_rank_decomposition

    scale = lora_scaling(lora)
    stored = weight.to(checkpoint_dtype)
    for step in range(lora.loftq_iter):
        error = weight - roundtrip(stored, dtype)
        low_rank = _low_rank_decomposition(error, reduced_rank=lora.r)
        L, R = low_rank["L"], low_rank["R"]
        if step + 1 < lora.loftq_iter:
            stored = (weight - L @ R).to(checkpoint_dtype)
    return stored.float(), R / math.sqrt(scale), L / math.sqrt(scale)


def roundtrip(weight: torch.Tensor, dtype: DTypeConfig) -> torch.Tensor:
    """What the run's base will hold for `weight` as stored in the checkpoint: loaded in the run's
    load precision, quantized with its data type, dequantized to float32."""
    from qlora_kernels import dequantize, quantize

    from qlora_lab.model.lab_backend import lab_codebook
    from qlora_lab.model.quantize import load_dtype

    state = quantize(weight.to(load_dtype(dtype)), lab_codebook(dtype), dtype.blocksize, scale=dtype.storage_scale)
    return dequantize(state, torch.float32)


def _write_checkpoint_copy(source: Path, folder: Path, original, bases: dict[str, torch.Tensor]) -> None:
    """The checkpoint with each adapted weight replaced (in its own key, layout and dtype); every
    other file linked to the original."""
    from safetensors.torch import load_file, save_file

    from qlora_lab.cache import atomic_write

    replaced = original.keys_for(bases)  # checkpoint key -> (module name, transposed)
    for item in source.iterdir():
        if item.is_file() and not item.name.endswith(".safetensors") and not (folder / item.name).exists():
            (folder / item.name).symlink_to(item.resolve())
    for file in original.files:
        tensors = load_file(str(file))
        for key, (name, transposed) in replaced.items():
            if key in tensors:
                new = bases[name].t() if transposed else bases[name]
                tensors[key] = new.to(tensors[key].dtype).contiguous()
        atomic_write(folder / file.name, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
