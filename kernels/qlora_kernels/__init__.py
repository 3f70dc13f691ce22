"""qlora_kernels: k-bit blockwise quantization where a data type is just a codebook.

    from qlora_kernels import quantize, dequantize
    state = quantize(weight, "nf4", blocksize=64, double_quant=True)
    state.packed, state.bits_per_param, dequantize(state)

Plain tensors and arguments in, tensors out: this package knows no run and no config.
"""

from qlora_kernels.blockwise import QuantState, dequantize, quantize
from qlora_kernels.codebooks import CODEBOOK_SPECS, Codebook, codebook, codebook_from_spec
from qlora_kernels.double_quant import NestedState
from qlora_kernels.linear import QuantLinear

__all__ = ["quantize", "dequantize", "QuantState", "NestedState", "Codebook", "codebook", "codebook_from_spec",
           "CODEBOOK_SPECS", "QuantLinear"]
