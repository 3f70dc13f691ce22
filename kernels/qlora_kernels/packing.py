"""k-bit codes <-> bytes, first code in the highest bits (bitsandbytes' nibble order for k = 4).

Any k from 1 to 8: g = 8 / gcd(8, k) codes fill g * k / 8 whole bytes (k = 3: 8 codes in 3).
"""

from __future__ import annotations

import math

import torch


def group(bits: int) -> tuple[int, int]:
    """(codes per group, bytes per group)."""
    codes = 8 // math.gcd(8, bits)
    return codes, codes * bits // 8


def pack(codes: torch.Tensor, bits: int, pad_code: int) -> torch.Tensor:
    """Flat integer codes -> uint8 bytes; a short last group is filled with `pad_code`."""
    per_group, nbytes = group(bits)
    flat = codes.reshape(-1).to(torch.int64)
    short = -flat.numel() % per_group
    if short:
        flat = torch.cat([flat, flat.new_full((short,), pad_code)])
    if bits == 4:  # the common case, without the general shifts
        pairs = flat.view(-1, 2)
        return ((pairs[:, 0] << 4) | pairs[:, 1]).to(torch.uint8)
    shifts = bits * torch.arange(per_group - 1, -1, -1, device=flat.device)
    words = (flat.view(-1, per_group) << shifts).sum(dim=1)
    byte_shifts = 8 * torch.arange(nbytes - 1, -1, -1, device=flat.device)
    return ((words.unsqueeze(1) >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """uint8 bytes -> the first n codes (int64)."""
    per_group, nbytes = group(bits)
    data = packed.reshape(-1).to(torch.int64)
    if bits == 4:
        return torch.stack([data >> 4, data & 0xF], dim=1).reshape(-1)[:n]
    byte_shifts = 8 * torch.arange(nbytes - 1, -1, -1, device=data.device)
    words = (data.view(-1, nbytes) << byte_shifts).sum(dim=1)
    shifts = bits * torch.arange(per_group - 1, -1, -1, device=data.device)
    return ((words.unsqueeze(1) >> shifts) & ((1 << bits) - 1)).reshape(-1)[:n]
