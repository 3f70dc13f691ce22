"""`QuantState`: a quantized tensor and what is needed to undo it; the codecs' common currency
(the torch, compiled and Triton paths all read it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from qlora_kernels.codebooks import Codebook
from qlora_kernels.double_quant import NestedState, dequantize_absmax


@dataclass(frozen=True)
class QuantState:
    """A quantized tensor: packed codes + block constants + what is needed to undo it."""

    packed: torch.Tensor  # uint8, bitsandbytes' layout for 4 bits (first code in the high nibble)
    absmax: torch.Tensor | None  # float32 per block (None under double quantization)
    nested: NestedState | None  # the quantized absmax under double quantization
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int
    codebook: Codebook = field(repr=False)
    offsets: torch.Tensor | None = None  # float32 block centres of an affine data type (None under DQ)
    nested_offsets: NestedState | None = None  # the centres, double-quantized as the absmax is

    @property
    def numel(self) -> int:
        return self.shape.numel()

    @property
    def stored_bits(self) -> int:
        """Codes (a short last byte counts whole) + block constants (+ their constants)."""
        constants = self.nested.stored_bits if self.nested is not None else self.absmax.numel() * 32
        if self.nested_offsets is not None:
            constants += self.nested_offsets.stored_bits
        elif self.offsets is not None:
            constants += self.offsets.numel() * 32
        return self.packed.numel() * 8 + constants

    @property
    def bits_per_param(self) -> float:
        return self.stored_bits / self.numel

    def block_absmax(self) -> torch.Tensor:
        return dequantize_absmax(self.nested) if self.nested is not None else self.absmax

    def block_offsets(self) -> torch.Tensor | None:
        """An affine data type's block centres (dequantized under DQ); None for the others."""
        return dequantize_absmax(self.nested_offsets) if self.nested_offsets is not None else self.offsets

    def to_dict(self) -> dict:
        """Tensors and plain values only: what a state_dict can hold."""
        out = {"packed": self.packed, "shape": torch.tensor(list(self.shape)), "blocksize": self.blocksize,
               "dtype": str(self.dtype).removeprefix("torch."), "codebook": self.codebook.name,
               "codebook_values": self.codebook.tensor()}
        if self.nested is None:
            out["absmax"] = self.absmax
        else:
            out.update(nested_codes=self.nested.codes, nested_absmax=self.nested.absmax,
                       nested_offset=torch.tensor(self.nested.offset, dtype=torch.float32),
                       nested_code=self.nested.code)
        if self.nested_offsets is not None:
            out.update(offsets_codes=self.nested_offsets.codes, offsets_absmax=self.nested_offsets.absmax,
                       offsets_offset=torch.tensor(self.nested_offsets.offset, dtype=torch.float32))
        elif self.offsets is not None:
            out["offsets"] = self.offsets
        return out

    @classmethod
    def from_dict(cls, data: dict) -> QuantState:
        affine = "offsets" in data or "offsets_codes" in data
        book = Codebook(data["codebook"], tuple(data["codebook_values"].tolist()), affine=affine)
        nested = nested_offsets = None
        if "nested_codes" in data:
            nested = NestedState(codes=data["nested_codes"], absmax=data["nested_absmax"],
                                 offset=float(data["nested_offset"]), code=data["nested_code"])
        if "offsets_codes" in data:
            nested_offsets = NestedState(codes=data["offsets_codes"], absmax=data["offsets_absmax"],
                                         offset=float(data["offsets_offset"]), code=data["nested_code"])
        return cls(packed=data["packed"], absmax=data.get("absmax"), nested=nested,
                   shape=torch.Size(data["shape"].tolist()), dtype=getattr(torch, data["dtype"]),
                   blocksize=int(data["blocksize"]), codebook=book, offsets=data.get("offsets"),
                   nested_offsets=nested_offsets)
