"""qlora_kernels: k-bit blockwise quantization where a data type is a codebook x a scale format x
a block size.

    from qlora_kernels import quantize, dequantize
    state = quantize(weight, "nf4", blocksize=64, double_quant=True)
    state = quantize(weight, "e2m1", blocksize=16, scale="e4m3")  # NVFP4
    state.packed, state.bits_per_param, dequantize(state)

Plain tensors and arguments in, tensors out: this package knows no run and no config. Its names
are imported on first use, so `qlora_kernels.scale_specs` (plain data) can be read without torch.
"""

from importlib import import_module

_WHERE = {"quantize": "blockwise", "dequantize": "blockwise", "QuantState": "quant_state",
          "NestedState": "double_quant", "Codebook": "codebooks", "codebook": "codebooks",
          "codebook_from_spec": "codebooks", "CODEBOOK_SPECS": "codebooks", "QuantLinear": "linear",
          "SCALE_FORMATS": "scale_specs"}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'qlora_kernels' has no attribute {name!r}")
    value = getattr(import_module(f"qlora_kernels.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
