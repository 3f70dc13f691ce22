"""A frozen k-bit linear layer: packed weight and block constants as buffers, nothing else.

forward = x @ dequantize(W).T (+ bias) in the compute dtype. Its autograd gives the gradient
with respect to the input only, and keeps no dequantized weight alive between forward and
backward: backward dequantizes again (the paper's trade of compute for memory).
"""

from __future__ import annotations

import torch

from qlora_kernels.blockwise import QuantState, dequantize, quantize, stored_codebook
from qlora_kernels.codebooks import Codebook
from qlora_kernels.double_quant import NestedState

_STATE_BUFFERS = ("packed", "absmax", "nested_codes", "nested_absmax", "nested_offset", "nested_code", "offsets",
                  "offsets_codes", "offsets_absmax", "offsets_offset")


def _holds_weight(name: str) -> bool:
    """A buffer of the stored weight: the absmax path's, or a scale format's own (scale_*)."""
    return name in _STATE_BUFFERS or (name.startswith("scale_") and name != "scale_format")


class _DequantMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, state: QuantState, compute_dtype: torch.dtype) -> torch.Tensor:
        ctx.state, ctx.compute_dtype = state, compute_dtype
        return x @ dequantize(state, compute_dtype).t()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out.to(ctx.compute_dtype) @ dequantize(ctx.state, ctx.compute_dtype)
        return grad_x, None, None


class QuantLinear(torch.nn.Module):
    """nn.Linear's interface (in_features, out_features, bias) over a quantized, frozen weight."""

    def __init__(self, in_features: int, out_features: int, bias: bool, book: str | Codebook, blocksize: int = 64,
                 double_quant: bool = False, compute_dtype: torch.dtype = torch.bfloat16, scale: str | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.scale_format = scale or ("dq8" if double_quant else "fp32")
        self.double_quant = self.scale_format == "dq8"
        self.codebook, self.blocksize = stored_codebook(book, self.scale_format), blocksize
        self.compute_dtype = compute_dtype
        empty = quantize(torch.zeros(out_features, in_features), self.codebook, blocksize, scale=self.scale_format)
        self._set_state(empty)
        self.bias = torch.nn.Parameter(torch.zeros(out_features, dtype=compute_dtype), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, book: str | Codebook, blocksize: int = 64,
                    double_quant: bool = False, compute_dtype: torch.dtype = torch.bfloat16,
                    scale: str | None = None) -> QuantLinear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, book, blocksize, double_quant,
                    compute_dtype, scale)
        layer._set_state(quantize(linear.weight.detach(), layer.codebook, blocksize, scale=layer.scale_format))
        if linear.bias is not None:
            layer.bias.data = linear.bias.detach().to(compute_dtype)
        return layer.to(linear.weight.device)

    @classmethod
    def from_state(cls, state: QuantState, bias: torch.Tensor | None = None,
                   compute_dtype: torch.dtype = torch.bfloat16) -> QuantLinear:
        """A layer over a state as it is (a released checkpoint's blocks): no weight is quantized,
        and no float copy of the weight is made."""
        layer = cls.__new__(cls)
        torch.nn.Module.__init__(layer)
        layer.out_features, layer.in_features = state.shape
        layer.scale_format = state.scale_name
        layer.double_quant = layer.scale_format == "dq8"
        layer.codebook, layer.blocksize, layer.compute_dtype = state.codebook, state.blocksize, compute_dtype
        layer._set_state(state)
        layer.bias = None if bias is None else torch.nn.Parameter(bias.to(compute_dtype), requires_grad=False)
        return layer

    def _set_state(self, state: QuantState) -> None:
        values = state.to_dict()
        for name, value in values.items():
            if _holds_weight(name) and isinstance(value, torch.Tensor):
                self.register_buffer(name, value)
        self.weight_dtype = state.dtype

    def requantize(self, weight: torch.Tensor) -> None:
        """Store `weight` (out x in) in this layer's own codebook, blocksize and double quantization:
        what merging an adapter into a k-bit layer does."""
        self._set_state(quantize(weight.detach().to(self.weight_dtype), self.codebook, self.blocksize,
                                 scale=self.scale_format))

    def stored_state(self) -> dict[str, torch.Tensor]:
        """The buffers that hold the weight, copied: `restore_state` puts them back bit for bit."""
        return {name: buffer.clone() for name, buffer in self.named_buffers(recurse=False) if _holds_weight(name)}

    def restore_state(self, stored: dict[str, torch.Tensor]) -> None:
        for name, buffer in stored.items():
            self.register_buffer(name, buffer)

    @property
    def weight(self) -> torch.Tensor:
        """The weight as the forward uses it (dequantized, compute dtype; a new tensor per call, not a
        parameter): what peft's DoRA reads of a base layer (`dequantize_module_weight`)."""
        return dequantize(self.quant_state(), self.compute_dtype)

    @property
    def qweight(self) -> torch.Tensor:
        """The packed weight, under the name peft looks for on quantized layers (GPTQ's)."""
        return self.packed

    def quant_state(self) -> QuantState:
        """The QuantState these buffers hold (views, no copies)."""
        shape = torch.Size((self.out_features, self.in_features))
        if self.scale_format not in ("fp32", "dq8"):
            scales = {name.removeprefix("scale_"): buffer for name, buffer in self.named_buffers(recurse=False)
                      if name.startswith("scale_")}
            return QuantState(packed=self.packed, absmax=None, nested=None, shape=shape, dtype=self.weight_dtype,
                              blocksize=self.blocksize, codebook=self.codebook, scale_format=self.scale_format,
                              scales=scales)
        nested = nested_offsets = None
        if self.double_quant:
            nested = NestedState(codes=self.nested_codes, absmax=self.nested_absmax,
                                 offset=float(self.nested_offset), code=self.nested_code)
            if self.codebook.affine:
                nested_offsets = NestedState(codes=self.offsets_codes, absmax=self.offsets_absmax,
                                             offset=float(self.offsets_offset), code=self.nested_code)
        offsets = self.offsets if self.codebook.affine and not self.double_quant else None
        return QuantState(packed=self.packed, absmax=None if nested else self.absmax, nested=nested,
                          shape=torch.Size((self.out_features, self.in_features)), dtype=self.weight_dtype,
                          blocksize=self.blocksize, codebook=self.codebook, offsets=offsets,
                          nested_offsets=nested_offsets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _DequantMatmul.apply(x.to(self.compute_dtype), self.quant_state(), self.compute_dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.to(x.dtype)

    def get_extra_state(self) -> dict:
        return {"codebook": self.codebook.name, "codebook_values": list(self.codebook.values),
                "blocksize": self.blocksize, "double_quant": self.double_quant, "scale": self.scale_format}

    def set_extra_state(self, extra: dict) -> None:
        mine = self.get_extra_state()
        extra = {"scale": "dq8" if extra.get("double_quant") else "fp32", **extra}  # saved before scale formats
        for key in mine:
            if extra.get(key) != mine[key]:
                raise ValueError(f"state_dict holds a {key} of {extra.get(key)!r}, this layer {mine[key]!r}: "
                                 f"it was saved from another quantization")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"codebook={self.codebook.name}, blocksize={self.blocksize}, scale={self.scale_format}")
