"""Folding a trained adapter into its base: the merged weights as an ordinary transformers model.

16-bit: the run's quantized weights dequantized (what the forward computed with), plus the
adapter folded in by peft's own merge (LoRA, rsLoRA, DoRA alike). 4-bit: that merged model
stored again in the run's data type, as the run's own load would store it. Either way a merge
changes the model a little (rounding to 16 bits; re-quantizing), which `qlora_lab.export`
measures.
"""

from __future__ import annotations

import torch


def dequantized_into(reference: torch.nn.Module, quantized: torch.nn.Module) -> int:
    """Copy every quantized linear layer of `quantized` (a built base, peft-wrapped or not),
    dequantized, into the same-named layer of the unquantized `reference`; returns how many."""
    from transformers.pytorch_utils import Conv1D

    from qlora_lab.model.weight_error import dequantized_weight

    copied = 0
    for name, module in quantized.named_modules():
        weight = dequantized_weight(module)
        if weight is None:
            continue
        target = reference.get_submodule(name.replace(".base_layer", ""))
        weight = weight.reshape(module.out_features, module.in_features)
        with torch.no_grad():
            target.weight.copy_(weight.t() if isinstance(target, Conv1D) else weight)
        copied += 1
    return copied


def with_adapter(reference: torch.nn.Module, trained) -> torch.nn.Module:
    """The trained model's LoRA adapter (its weights, copied) on the unquantized reference base."""
    import copy

    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers.pytorch_utils import Conv1D

    peft_config = copy.deepcopy(trained.peft_config["default"])
    peft_config.fan_in_fan_out = any(isinstance(m, Conv1D) for m in reference.modules())
    peft_config.init_lora_weights = True  # whatever the run's init, the weights are the trained ones
    model = get_peft_model(reference, peft_config)
    set_peft_model_state_dict(model, get_peft_model_state_dict(trained))
    return model


def merged_model(reference: torch.nn.Module, trained) -> torch.nn.Module:
    """The trained peft model's adapter folded (peft's merge_and_unload) into `reference`, the
    unquantized base that already holds the dequantized weights: a plain transformers model."""
    return with_adapter(reference, trained).merge_and_unload()


def dequantize_linears(model: torch.nn.Module) -> int:
    """Every qlora_kernels QuantLinear replaced by the nn.Linear it computes (float32): how a
    data type transformers cannot store is written as an ordinary checkpoint."""
    from qlora_lab.model.weight_error import dequantized_weight

    swaps = [(name, m) for name, m in model.named_modules() if callable(getattr(m, "quant_state", None))]
    for name, layer in swaps:
        parent_name, _, child = name.rpartition(".")
        linear = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(dequantized_weight(layer))
            if layer.bias is not None:
                linear.bias.copy_(layer.bias.float())
        setattr(model.get_submodule(parent_name) if parent_name else model, child, linear)
    return len(swaps)
