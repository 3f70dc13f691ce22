"""The `lab` backend: the base's linear layers swapped for qlora_kernels' QuantLinear, which
peft's LoRA wraps through its custom-module registration (no fork of peft)."""

from __future__ import annotations

import torch
from peft.tuners.lora.layer import LoraLayer

from qlora_lab.config import DTypeConfig
from qlora_lab.model.quantize import torch_dtype


def lab_codebook(dtype: DTypeConfig):
    """The data type's codebook: a shipped one by name (mxfp4's is e2m1), or the config's own spec."""
    from qlora_kernels import codebook, codebook_from_spec

    from qlora_lab.catalog import codebook_name

    return codebook_from_spec(dtype.name, dtype.codebook) if dtype.codebook else codebook(codebook_name(dtype.name))


def quantize_linears(model: torch.nn.Module, dtype: DTypeConfig, skip: set[int]) -> int:
    """Replace every nn.Linear and GPT-2 Conv1D (ids in `skip` left alone: the head) by a QuantLinear."""
    from qlora_kernels import QuantLinear
    from transformers.pytorch_utils import Conv1D

    book, compute = lab_codebook(dtype), torch_dtype(dtype.compute_dtype)
    swaps = [(name, module) for name, module in model.named_modules()
             if isinstance(module, (torch.nn.Linear, Conv1D)) and id(module) not in skip]
    for name, layer in swaps:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = _as_linear(layer) if isinstance(layer, Conv1D) else layer
        setattr(parent, child, QuantLinear.from_linear(linear, book, dtype.blocksize, compute_dtype=compute,
                                                       scale=dtype.storage_scale))
    return len(swaps)


def _as_linear(conv: torch.nn.Module) -> torch.nn.Linear:
    """A Conv1D (weight stored in x out) as the nn.Linear it computes."""
    n_in, n_out = conv.weight.shape
    linear = torch.nn.Linear(n_in, n_out, bias=conv.bias is not None, dtype=conv.weight.dtype,
                             device=conv.weight.device)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.t())
        if conv.bias is not None:
            linear.bias.copy_(conv.bias)
    return linear


def prepare_lab_base(model: torch.nn.Module, gradient_checkpointing: bool) -> torch.nn.Module:
    """What peft's prepare_model_for_kbit_training does for bitsandbytes models: freeze the
    base, keep its remaining 16-bit weights in float32, let checkpointed inputs carry grads."""
    for param in model.parameters():
        param.requires_grad = False
        if param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


class LoraQuantLinear(torch.nn.Module, LoraLayer):
    """LoRA around a QuantLinear: base output + B(A(dropout(x))) * scale, in the adapters' dtype;
    DoRA through peft's own variant (it reads the base through QuantLinear.weight). Merging folds
    the adapters into the k-bit weight (re-quantized with the layer's own data type); unmerging
    puts the stored weight back bit for bit."""

    def __init__(self, base_layer: torch.nn.Module, adapter_name: str, config, r: int = 0, lora_alpha: int = 1,
                 **kwargs) -> None:
        super().__init__()
        LoraLayer.__init__(self, base_layer)
        self.fan_in_fan_out = False
        self._active_adapter = adapter_name
        self._stored_before_merge: list[dict] = []
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config)

    @property
    def lora_variants(self):
        from peft.tuners.lora.variants import DoraLinearVariant

        return {(): None, ("use_dora",): DoraLinearVariant}

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x)
        if self.disable_adapters or self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            lora_A, lora_B = self.lora_A[name], self.lora_B[name]
            x_adapter = x.to(lora_A.weight.dtype)
            if name in self.lora_variant:  # DoRA: peft's forward, on the adapters' dtype
                update = self.lora_variant[name].forward(self, active_adapter=name, x=x_adapter,
                                                         result=result.to(lora_A.weight.dtype))
                result = update.to(result.dtype)
                continue
            update = lora_B(lora_A(self.lora_dropout[name](x_adapter))) * self.scaling[name]
            result = result + update.to(result.dtype)
        return result

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """scale * B A (out x in), float32."""
        return (self.lora_B[adapter].weight.float() @ self.lora_A[adapter].weight.float()) * self.scaling[adapter]

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        from peft.tuners.tuners_utils import check_adapters_to_merge

        base = self.get_base_layer()
        for name in check_adapters_to_merge(self, adapter_names):
            if name not in self.lora_A:
                continue
            weight = base.weight.float()
            delta = self.get_delta_weight(name)
            if name in self.lora_variant:  # DoRA: magnitude / ||W + dW|| per output row, times (W + dW)
                norm = self.lora_magnitude_vector[name].get_weight_norm(weight, delta, scaling=1).detach()
                merged = (self.lora_magnitude_vector[name].weight.float() / norm).view(-1, 1) * (weight + delta)
            else:
                merged = weight + delta
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"NaNs detected in the merged weights: the adapter {name} seems to be broken")
            self._stored_before_merge.append(base.stored_state())
            base.requantize(merged)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            self.merged_adapters.pop()
            self.get_base_layer().restore_state(self._stored_before_merge.pop())


def register_with_peft(peft_config) -> None:
    import warnings

    from qlora_kernels import QuantLinear

    # peft warns of any layer type it does not know, even one registered for it, as ours is
    warnings.filterwarnings("ignore", message=r"Unsupported layer type '<class 'qlora_kernels\.", category=UserWarning)
    peft_config._register_custom_module({QuantLinear: LoraQuantLinear})
