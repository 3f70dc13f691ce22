"""Codebooks: the 2^k values a k-bit code can stand for, in code order, within [-1, 1].

A shipped codebook is a line of spec in CODEBOOK_SPECS, and so is a new one: kinds are
`normal_float` (the paper's NF: quantiles of N(0, 1)), `float` (sign, exponent, mantissa),
`integer` (symmetric absmax), `uniform` (2^k evenly spaced levels from -1 to 1) and `table`
(values listed in code order, divided by `scale`). `affine: true` makes a data type affine: each
block is first centred on the midpoint of its minimum and maximum (stored, one per block), so
the codebook spans the block's range rather than its absmax on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

# bitsandbytes' FP4 (E2M1) in its own bit layout: sign bit 8, then the listed magnitudes / 12.
_BNB_FP4 = [0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0]
# bitsandbytes' sign-magnitude Int4 table: symmetric absmax, +-0 and 7 levels a side.
# OCP E2M1 (MXFP4's and NVFP4's elements) in its own bit layout: sign bit 8, exponent 2 bits, mantissa 1.
_E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
_INT4 = [7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0]

CODEBOOK_SPECS: dict[str, dict] = {
    "nf4": {"kind": "normal_float", "bits": 4},
    "nf3": {"kind": "normal_float", "bits": 3},
    "nf2": {"kind": "normal_float", "bits": 2},
    "fp4": {"kind": "table", "values": _BNB_FP4, "scale": 12.0},  # E2M1, bitsandbytes' layout
    "fp4_e3m0": {"kind": "float", "exponent_bits": 3, "mantissa_bits": 0},
    "int4": {"kind": "table", "values": _INT4, "scale": 7.0},
    "int8": {"kind": "integer", "bits": 8},
    # The 2026 formats' grids, divided by a power of two so that a block scale times 8 or 16 gives
    # their values to the bit (see `unit`): E2M1 / 8, Q4_0's (q - 8) / 8, Q4_K's and HQQ's q / 16.
    "e2m1": {"kind": "table", "values": _E2M1, "scale": 8.0, "unit": 8.0},
    "int4_grid": {"kind": "table", "values": [q - 8.0 for q in range(16)], "scale": 8.0, "unit": 8.0},
    "uint4": {"kind": "table", "values": [float(q) for q in range(16)], "scale": 16.0, "unit": 16.0},
    "int8_grid": {"kind": "table", "values": [q - 128.0 for q in range(256)], "scale": 128.0, "unit": 128.0},  # Q8_0
    # per-block minimum and maximum, 16 uniform levels between them (a zero point per block)
    "int4_affine": {"kind": "uniform", "bits": 4, "affine": True},
}


@dataclass(frozen=True)
class Codebook:
    """A data type: `values[code]` is what code stands for, times its block's absmax."""

    name: str
    values: tuple[float, ...]  # float32-representable, in code order
    affine: bool = False  # blocks centred on (min + max) / 2 before scaling; the centre stored per block
    unit: float = 1.0  # the format's own values are values x unit (a power of two: scaling by it is exact)

    def __post_init__(self):
        n = len(self.values)
        if n < 2 or n & (n - 1) or n > 256:
            raise ValueError(f"codebook {self.name!r} has {n} values; expected a power of two from 2 to 256")
        if max(abs(v) for v in self.values) > 1.0:
            raise ValueError(f"codebook {self.name!r} has values outside [-1, 1]")

    @property
    def peak(self) -> float:
        return max(abs(v) for v in self.values)

    @property
    def signed(self) -> bool:
        return min(self.values) < 0 < max(self.values)

    def normalized(self) -> Codebook:
        """Scaled so that its largest magnitude is 1: what an absmax block scale maps onto (E2M1 / 8 ->
        E2M1 / 6). The codebook itself where it is already."""
        peak = self.peak
        if peak == 1.0:
            return self
        return Codebook(self.name, tuple(float(torch.tensor(v / peak, dtype=torch.float32)) for v in self.values),
                        affine=self.affine)

    @property
    def bits(self) -> int:
        return len(self.values).bit_length() - 1

    def tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return _values_tensor(self.values, str(device))

    @property
    def zero_code(self) -> int:
        """The code 0.0 quantizes to (pads an odd tail, as bitsandbytes does)."""
        return int(nearest_codes(torch.zeros(1), self)[0])


@lru_cache(maxsize=64)
def _values_tensor(values: tuple[float, ...], device: str) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)


@lru_cache(maxsize=64)
def sorted_codes(values: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(midpoints between sorted values, code of each sorted position): nearest-value lookup."""
    table = torch.tensor(values, dtype=torch.float32)
    order = torch.argsort(table, stable=True)
    ordered = table[order]
    return (ordered[:-1] + ordered[1:]) / 2, order


def codebook(name_or_book: str | Codebook) -> Codebook:
    if isinstance(name_or_book, Codebook):
        return name_or_book
    if not isinstance(name_or_book, str):
        raise TypeError(f"codebook must be a name or a Codebook, not {type(name_or_book).__name__}")
    if name_or_book not in CODEBOOK_SPECS:
        raise ValueError(f"unknown codebook {name_or_book!r}; shipped: {', '.join(CODEBOOK_SPECS)}")
    return codebook_from_spec(name_or_book, CODEBOOK_SPECS[name_or_book])


def codebook_from_spec(name: str, spec: dict) -> Codebook:
    kind = spec.get("kind")
    builders = {"normal_float": _normal_float, "float": _float, "integer": _integer, "uniform": _uniform,
                "table": _table}
    if kind not in builders:
        raise ValueError(f"codebook {name!r}: kind {kind!r} is not one of {', '.join(builders)}")
    args = {k: v for k, v in spec.items() if k not in ("kind", "affine", "unit")}
    return Codebook(name, tuple(float(v) for v in builders[kind](**args).tolist()), affine=bool(spec.get("affine")),
                    unit=float(spec.get("unit", 1.0)))


def _normal_float(bits: int, offset: float | None = None) -> torch.Tensor:
    """The paper's NormalFloat: quantiles of N(0, 1), asymmetric (one more positive value), an
    exact zero, normalised to [-1, 1], built with bitsandbytes' float32/float64 steps, so NF4
    equals its table. The offset halves the gap between the 1/(2(2^k-1)) and 1/(2*2^k) tails
    (0.9677083 for k = 4, as in the paper's code)."""
    half = 2 ** (bits - 1)
    if offset is None:
        offset = 0.9677083 if bits == 4 else 1 - (1 / (2 * (2**bits - 1)) + 1 / (2 * 2**bits)) / 2
    ppf = lambda q: torch.special.ndtri(q.double())
    positive = ppf(torch.linspace(offset, 0.5, half + 1)[:-1])
    negative = -ppf(torch.linspace(offset, 0.5, half)[:-1])
    values = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).float().sort().values
    return values / values.max()


def _float(exponent_bits: int, mantissa_bits: int, bias: int | None = None) -> torch.Tensor:
    """Sign, exponent, mantissa (subnormals at exponent 0), in code order, scaled by the max."""
    bias = 2 ** (exponent_bits - 1) - 1 if bias is None else bias
    values = []
    for sign in (1.0, -1.0):
        for exponent in range(2**exponent_bits):
            for mantissa in range(2**mantissa_bits):
                fraction = mantissa / 2**mantissa_bits
                magnitude = fraction * 2.0 ** (1 - bias) if exponent == 0 else (1 + fraction) * 2.0 ** (exponent - bias)
                values.append(sign * magnitude)
    table = torch.tensor(values, dtype=torch.float32)
    return table / table.abs().max()


def _integer(bits: int) -> torch.Tensor:
    """Symmetric absmax integers: code c stands for (c - 2^(k-1)) / (2^(k-1) - 1), the one code
    below -1 held at -1 (symmetric: -127..127 for 8 bits, code 0 never chosen)."""
    half = 2 ** (bits - 1)
    return ((torch.arange(2**bits, dtype=torch.float32) - half) / (half - 1)).clamp(min=-1.0)


def _uniform(bits: int) -> torch.Tensor:
    """2^k evenly spaced levels from -1 to 1, both ends included (an affine block's min and max)."""
    return torch.linspace(-1.0, 1.0, 2**bits, dtype=torch.float32)


def _table(values: list[float], scale: float = 1.0) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32) / torch.tensor(scale, dtype=torch.float32)


def nearest_codes(scaled: torch.Tensor, book: Codebook) -> torch.Tensor:
    """Code of the nearest value for each element of `scaled` (in [-1, 1]); a tie at a midpoint
    goes to the lower value, as in bitsandbytes."""
    midpoints, order = sorted_codes(book.values)
    position = torch.bucketize(scaled, midpoints.to(scaled.device), out_int32=True)
    return order.to(scaled.device)[position]
