"""What quantization did to the weights themselves: the signal-to-quantization-noise ratio of
every quantized linear layer's dequantized weight against the checkpoint's, and how heavy the
checkpoint's weight tails are (kurtosis: 3 for a Gaussian). The paper's case for NF4 rests on
weights being near-normal; a base whose kurtosis is far from 3 may order the data types
differently, so every run records both.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from qlora_lab.gguf_checkpoint import is_gguf


@dataclass
class WeightError:
    """The record's `model` fields (None where nothing was quantized or the checkpoint is unreadable)."""

    weight_sqnr_db: float | None  # mean over quantized linear layers of 10 log10(|W|^2 / |W - Q(W)|^2) (Q + sBA at init)
    weight_sqnr_min_db: float | None  # the worst layer's
    weight_kurtosis: float | None  # mean over the linear layers of each weight's kurtosis (Pearson; Gaussian 3)


def sqnr_db(weight: torch.Tensor, approx: torch.Tensor) -> float:
    """10 log10(signal power / noise power), in float64; inf for an exact copy."""
    signal = weight.double().pow(2).sum().item()
    noise = (weight.double() - approx.double()).pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def kurtosis(weight: torch.Tensor) -> float:
    """E[(w - mean)^4] / var^2 over all the tensor's values (3 for a normal sample)."""
    centred = weight.double().reshape(-1) - weight.double().mean()
    variance = centred.pow(2).mean().item()
    return float("nan") if variance == 0 else centred.pow(4).mean().item() / variance**2


def dequantized_weight(module: torch.nn.Module) -> torch.Tensor | None:
    """A quantized linear layer's weight as the forward uses it, in float32; None for any other module."""
    if callable(getattr(module, "quant_state", None)):  # qlora_kernels' QuantLinear
        from qlora_kernels import dequantize

        return dequantize(module.quant_state()).float()  # in the dtype it was loaded in, as bitsandbytes does
    state = getattr(getattr(module, "weight", None), "quant_state", None)
    if state is not None:  # bitsandbytes' Linear4bit
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(module.weight.data, state).float()
    return None


def weight_error(model: torch.nn.Module, checkpoint: str, skip: set[int],
                 adapter_deltas: dict[str, torch.Tensor] | None = None) -> WeightError:
    """Every linear layer (ids in `skip` left out: the heads) against the checkpoint's weights; where
    an adapter init starts away from zero (LoftQ, PiSSA), the layer's weight at init is the stored
    one plus the adapter's sBA (`adapter_deltas`, by module name)."""
    original = checkpoint_tensors(checkpoint)
    if original is None:
        return WeightError(None, None, None)
    sqnrs, kurtoses = [], []
    for name, module in model.named_modules():
        if id(module) in skip or not hasattr(module, "in_features"):
            continue
        weight = original.get(name, module)
        if weight is None:
            continue
        kurtoses.append(kurtosis(weight))
        approx = dequantized_weight(module)
        if approx is not None:
            if adapter_deltas and name in adapter_deltas:
                approx = approx.reshape(weight.shape) + adapter_deltas[name]
            sqnrs.append(sqnr_db(weight, approx.reshape(weight.shape).cpu()))
    finite = [s for s in sqnrs if math.isfinite(s)]
    return WeightError(weight_sqnr_db=round(sum(finite) / len(finite), 4) if finite else None,
                       weight_sqnr_min_db=round(min(finite), 4) if finite else None,
                       weight_kurtosis=round(sum(kurtoses) / len(kurtoses), 4) if kurtoses else None)


_FLOAT_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


class CheckpointTensors:
    """A checkpoint's safetensors, read one weight at a time by its module's name."""

    def __init__(self, files: list[Path]):
        from safetensors import safe_open

        self.files = list(files)
        self.folder = self.files[0].parent
        self._files = [safe_open(str(f), framework="pt") for f in files]
        self._where = {key: handle for handle in self._files for key in handle.keys()}

    def dtype(self) -> torch.dtype:
        """The dtype the checkpoint stores its floating-point weights in (its first one's)."""
        for key, handle in self._where.items():
            tensor = handle.get_slice(key)
            name = tensor.get_dtype()
            if name in _FLOAT_DTYPES:
                return _FLOAT_DTYPES[name]
        return torch.float32

    def keys_for(self, weights: dict[str, torch.Tensor]) -> dict[str, tuple[str, bool]]:
        """checkpoint key -> (module name, stored transposed) for each module's weight (out x in)."""
        found = {}
        for name, weight in weights.items():
            for key in _candidate_keys(name):
                if key in self._where:
                    shape = tuple(self._where[key].get_slice(key).get_shape())
                    if shape in (tuple(weight.shape), tuple(weight.shape)[::-1]):
                        found[key] = (name, shape != tuple(weight.shape))
                        break
            else:
                raise KeyError(f"no weight of module {name} in the checkpoint {self.folder}")
        return found

    def get(self, module_name: str, module: torch.nn.Module) -> torch.Tensor | None:
        """The module's weight as nn.Linear holds it (out x in): GPT-2's Conv1D layout transposed."""
        shape = (module.out_features, module.in_features)
        for key in _candidate_keys(module_name):
            if key in self._where:
                weight = self._where[key].get_tensor(key).float()
                if tuple(weight.shape) == shape:
                    return weight
                if tuple(weight.shape) == shape[::-1]:
                    return weight.t()
        return None


def _candidate_keys(module_name: str) -> list[str]:
    """The name as saved, and without its first part (a checkpoint saved from the base model)."""
    keys = [f"{module_name}.weight"]
    if "." in module_name:
        keys.append(f"{module_name.split('.', 1)[1]}.weight")
    return keys


def checkpoint_tensors(checkpoint: str) -> CheckpointTensors | None:
    """The local folder's or the hub snapshot's safetensors files; None where there are none."""
    folder = Path(checkpoint)
    if is_gguf(checkpoint):  # a release with no 16-bit original to measure against
        return None
    if not folder.is_dir():
        folder = _hub_snapshot(checkpoint)
        if folder is None:
            return None
    index = folder / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / name for name in names]
    else:
        files = [folder / "model.safetensors"]
    return CheckpointTensors(files) if all(f.exists() for f in files) else None


def _hub_snapshot(hub_id: str) -> Path | None:
    from transformers.utils import cached_file

    for name in ("model.safetensors.index.json", "model.safetensors"):
        try:
            found = cached_file(hub_id, name, _raise_exceptions_for_missing_entries=False)
        except OSError:
            found = None
        if found:
            return Path(found).parent
    return None
