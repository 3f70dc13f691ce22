"""`QuantState`: a quantized tensor and what is needed to undo it; the codecs' common currency
(the torch, compiled and Triton paths all read it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from qlora_kernels.codebooks import Codebook
from qlora_kernels.double_quant import NestedState, dequantize_absmax
from qlora_kernels.scale_specs import scale_spec


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
    scale_format: str | None = None  # a scale format with a codec of its own (e8m0, e4m3, q4_k, ...); None: absmax
    scales: dict[str, torch.Tensor] | None = None  # what that format stores (scale_formats decodes it)

    @property
    def numel(self) -> int:
        return self.shape.numel()

    @property
    def scale_name(self) -> str:
        """The scale format by name: fp32 and dq8 for the absmax path."""
        return self.scale_format or ("dq8" if self.nested is not None else "fp32")

    @property
    def n_blocks(self) -> int:
        return -(-self.numel // self.blocksize)

    @property
    def stored_bits(self) -> int:
        """Codes (a short last byte counts whole) + block constants (+ their constants); a scale
        format with a codec of its own counts as its file layout holds it (scale_specs)."""
        if self.scale_format is not None:
            spec = scale_spec(self.scale_format)
            groups = -(-self.n_blocks // spec.group_bits[1])
            return int(self.packed.numel() * 8 + spec.block_bits * self.n_blocks + spec.group_bits[0] * groups
                       + spec.tensor_bits)
        constants = self.nested.stored_bits if self.nested is not None else self.absmax.numel() * 32
        if self.nested_offsets is not None:
            constants += self.nested_offsets.stored_bits
        elif self.offsets is not None:
            constants += self.offsets.numel() * 32
        return self.packed.numel() * 8 + constants

    @property
    def bits_per_param(self) -> float:
        return self.stored_bits / self.numel

    def block_scales(self):
        """What a decode applies per block (scale_formats.BlockScales), whatever the format."""
        from qlora_kernels.scale_formats import BlockScales, codec

        if self.scale_format is not None:
            _, decode = codec(self.scale_format, scale_spec(self.scale_format).codec)
            return decode(self.scales, self.codebook)
        absmax = dequantize_absmax(self.nested) if self.nested is not None else self.absmax
        offsets = dequantize_absmax(self.nested_offsets) if self.nested_offsets is not None else self.offsets
        return BlockScales(absmax, offset=offsets)

    def stored_scales(self):
        """The block constants as stored, for the compiled CPU decode to decode itself
        (scale_formats.StoredScales); None where they are decoded in torch first (block_scales)."""
        from qlora_kernels.scale_formats import StoredScales, stored_codec

        if self.scale_format is not None:
            stored = stored_codec(scale_spec(self.scale_format).codec)
            return None if stored is None else stored(self.scales, self.codebook)
        if self.nested is not None and self.nested_offsets is None and self.offsets is None:  # the paper's DQ
            return StoredScales("nested", (self.nested.codes, self.nested.absmax.float()), table=self.nested.code,
                                constant=self.nested.offset)
        return None

    def block_absmax(self) -> torch.Tensor:
        return self.block_scales().scale

    def block_offsets(self) -> torch.Tensor | None:
        """An affine data type's block centres (dequantized under DQ); None for the others."""
        return self.block_scales().offset

    def to_dict(self) -> dict:
        """Tensors and plain values only: what a state_dict can hold."""
        out = {"packed": self.packed, "shape": torch.tensor(list(self.shape)), "blocksize": self.blocksize,
               "dtype": str(self.dtype).removeprefix("torch."), "codebook": self.codebook.name,
               "codebook_values": self.codebook.tensor()}
        if self.scale_format is not None:
            out["scale_format"] = self.scale_format
            out["codebook_unit"] = self.codebook.unit
            out.update({f"scale_{key}": value for key, value in self.scales.items()})
            return out
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
        book = Codebook(data["codebook"], tuple(data["codebook_values"].tolist()), affine=affine,
                        unit=float(data.get("codebook_unit", 1.0)))
        if data.get("scale_format") is not None:
            scales = {key.removeprefix("scale_"): value for key, value in data.items()
                      if key.startswith("scale_") and key != "scale_format"}
            return cls(packed=data["packed"], absmax=None, nested=None, shape=torch.Size(data["shape"].tolist()),
                       dtype=getattr(torch, data["dtype"]), blocksize=int(data["blocksize"]), codebook=book,
                       scale_format=data["scale_format"], scales=scales)
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
