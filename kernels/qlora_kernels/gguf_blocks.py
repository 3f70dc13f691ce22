"""GGUF's quantized blocks <-> QuantState, byte for byte: a released GGUF tensor becomes a
QuantState without a float copy of it ever being made, and a QuantState of one of these formats
is written back as the blocks llama.cpp reads.

The layouts are ggml's (what the `gguf` package's quants module reads): one row of a tensor is
a run of blocks, never split across rows.
- Q4_0: 32 weights in 18 bytes: fp16 d, then 16 bytes whose low nibbles are weights 0..15 and
  high nibbles 16..31; weight = (q - 8) d. Ours: codebook int4_grid, scale format fp16.
- Q4_K: 256 weights in 144 bytes: fp16 d and dmin, 12 bytes of 6-bit scales and mins for eight
  sub-blocks of 32, then 128 bytes where each 32 bytes hold sub-block 2c in the low nibbles and
  2c + 1 in the high ones; weight = d sc q - dmin m. Ours: codebook uint4, scale format q4_k.
- Q8_0: 32 weights in 34 bytes: fp16 d, then 32 int8 q; weight = q d. Ours: codebook
  int8_grid, scale format fp16.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qlora_kernels import packing
from qlora_kernels.blockwise import QuantState, stored_codebook
from qlora_kernels.codebooks import codebook


@dataclass(frozen=True)
class GGUFBlock:
    """One GGUF block type as a QuantState stores it."""

    name: str  # GGML's name: Q4_0, Q4_K, Q8_0
    weights: int  # per block
    nbytes: int  # per block
    codebook: str
    scale: str  # scale format
    blocksize: int  # ours: the block one scale covers (Q4_K's sub-block)


GGUF_BLOCKS = {block.name: block for block in (
    GGUFBlock("Q4_0", 32, 18, "int4_grid", "fp16", 32),
    GGUFBlock("Q4_K", 256, 144, "uint4", "q4_k", 32),
    GGUFBlock("Q8_0", 32, 34, "int8_grid", "fp16", 32),
)}


def gguf_block(name: str) -> GGUFBlock:
    if name not in GGUF_BLOCKS:
        raise ValueError(f"GGUF tensor type {name} is not supported; supported: {', '.join(GGUF_BLOCKS)} "
                         f"(and F32, F16, BF16 kept as they are)")
    return GGUF_BLOCKS[name]


def block_of_state(state: QuantState) -> GGUFBlock | None:
    """The GGUF block type a QuantState is stored as, if any."""
    return next((b for b in GGUF_BLOCKS.values() if b.codebook == state.codebook.name and b.scale == state.scale_name
                 and b.blocksize == state.blocksize), None)


def state_from_blocks(name: str, raw: np.ndarray, shape: tuple[int, int], dtype: torch.dtype = torch.float32) -> QuantState:
    """The bytes of a GGUF tensor (any shape holding rows x blocks x block bytes) -> a QuantState of
    `shape` (out, in) that decodes to what gguf's dequantize gives, bit for bit."""
    block = gguf_block(name)
    rows, cols = shape
    if cols % block.weights:
        raise ValueError(f"a {name} row holds whole blocks of {block.weights} weights; this one has {cols}")
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, block.nbytes)
    if blocks.shape[0] != rows * cols // block.weights:
        raise ValueError(f"{name} data of {blocks.shape[0]} blocks does not hold a {rows} x {cols} tensor")
    d = torch.from_numpy(blocks[:, :2].copy().view(np.float16).reshape(-1))
    if name == "Q4_0":
        qs = blocks[:, 2:]
        codes = np.concatenate([qs & 0x0F, qs >> 4], axis=1)
        scales = {"fp16": d}
    elif name == "Q8_0":
        codes = blocks[:, 2:] ^ 0x80  # int8 q as the code q + 128, one byte each
        scales = {"fp16": d}
    else:  # Q4_K
        qs = blocks[:, 16:].reshape(-1, 4, 1, 32)
        codes = np.concatenate([qs & 0x0F, qs >> 4], axis=2)  # (blocks, 4, 2, 32): sub-blocks 2c, 2c + 1
        dmin = torch.from_numpy(blocks[:, 2:4].copy().view(np.float16).reshape(-1))
        scales = {"d": d, "dmin": dmin, "scales": torch.from_numpy(blocks[:, 4:16].copy())}
    book = stored_codebook(codebook(block.codebook), block.scale)
    codes = codes.reshape(-1)
    # packed as packing.pack packs (first code in the high nibble), in bytes: no int64 copy per weight
    packed = torch.from_numpy(np.ascontiguousarray(codes if book.bits == 8 else (codes[0::2] << 4) | codes[1::2]))
    return QuantState(packed=packed, absmax=None, nested=None, shape=torch.Size(shape), dtype=dtype,
                      blocksize=block.blocksize, codebook=book, scale_format=block.scale, scales=scales)


def blocks_from_state(state: QuantState) -> tuple[str, np.ndarray]:
    """(GGML type name, uint8 [rows, row bytes]) of a QuantState stored as a GGUF block type: what
    `GGUFWriter.add_tensor(..., raw_dtype=...)` writes."""
    block = block_of_state(state)
    if block is None or len(state.shape) != 2 or state.shape[1] % block.weights:
        raise ValueError(f"a {state.codebook.name} x {state.scale_name} x {state.blocksize} state of shape "
                         f"{tuple(state.shape)} is no GGUF block type; GGUF holds "
                         + ", ".join(f"{b.name} ({b.codebook} x {b.scale}, rows of whole {b.weights})"
                                     for b in GGUF_BLOCKS.values()))
    codes = packing.unpack(state.packed, state.codebook.bits, state.numel).numpy()
    rows = state.shape[0]
    d = state.scales["d" if block.name == "Q4_K" else "fp16"].numpy().view(np.uint8).reshape(-1, 2)
    if block.name == "Q4_0":
        halves = codes.reshape(-1, 2, 16).astype(np.uint8)
        body = halves[:, 0] | (halves[:, 1] << 4)
    elif block.name == "Q8_0":
        body = (codes.reshape(-1, 32) - 128).astype(np.int8).view(np.uint8)
    else:
        pairs = codes.reshape(-1, 4, 2, 32).astype(np.uint8)
        qs = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(-1, 128)
        dmin = state.scales["dmin"].numpy().view(np.uint8).reshape(-1, 2)
        body = np.concatenate([dmin, state.scales["scales"].numpy(), qs], axis=1)
    return block.name, np.concatenate([d, body], axis=1).reshape(rows, -1)
