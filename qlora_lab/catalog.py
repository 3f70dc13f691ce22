"""The plain-data registries a config is checked against: data types, scale formats, model kinds
and their LoRA target families. No torch and nothing from `model/`: `config.py` reads them, and
`model/` (which reads configs) builds on them, so the two never depend on each other.

Adding a data type is an entry in DTYPES and a file in conf/dtype/; a scale format, an entry in
qlora_kernels.scale_specs; a kind, its families here and its builders in model/kinds.py.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from qlora_kernels.scale_specs import SCALE_FORMATS, crossable  # noqa: F401  (plain data, no torch)


@dataclass(frozen=True)
class DTypeSpec:
    """What one data type is and which backends can store it."""

    bits: int  # code bits per weight (16 / 32 for unquantized)
    blockwise: bool  # absmax blocks (and double quantization) apply
    backends: tuple[str, ...]  # where it can run; the first is the default
    blocksizes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # per-backend limits
    codebook: str | None = None  # qlora_kernels' codebook (None: the data type's own name)
    scale: str = "dq8"  # the scale format when dtype.scale and dtype.double_quant leave it open
    signed: bool = True  # the codebook has values of both signs (what absmax-style scales need)
    centred: bool = False  # blocks centred on their midpoint (int4_affine): only fp32 / dq8 store that


# A data type of the user's own: `dtype.codebook` holds its spec (see qlora_kernels.codebooks).
CUSTOM = DTypeSpec(0, True, ("lab",), {"lab": tuple(2**i for i in range(4, 13))})


# transformers' BitsAndBytesConfig has no blocksize: bitsandbytes' Linear4bit quantizes in 64s.
# qlora_kernels takes any power of two from 16 to 4096.
_LAB_BLOCKS = tuple(2**i for i in range(4, 13))
_BLOCKS = {"bnb": (64,), "lab": _LAB_BLOCKS}
_LAB = {"lab": _LAB_BLOCKS}

DTYPES: dict[str, DTypeSpec] = {
    "nf4": DTypeSpec(4, True, ("bnb", "lab"), _BLOCKS),
    "fp4": DTypeSpec(4, True, ("bnb", "lab"), _BLOCKS),
    "int4": DTypeSpec(4, True, ("lab",), _BLOCKS),
    "int4_affine": DTypeSpec(4, True, ("lab",), _BLOCKS, centred=True),  # per-block min/max, 16 levels, a zero point
    "nf3": DTypeSpec(3, True, ("lab",), _BLOCKS),
    "nf2": DTypeSpec(2, True, ("lab",), _BLOCKS),
    "fp4_e3m0": DTypeSpec(4, True, ("lab",), _BLOCKS),
    # the 4-bit formats of 2026: a codebook x a scale format (qlora_kernels.scale_specs) x a block size
    "e2m1": DTypeSpec(4, True, ("lab",), _LAB, codebook="e2m1"),  # OCP E2M1 values with any scale format (the cross)
    "mxfp4": DTypeSpec(4, True, ("lab",), _LAB, codebook="e2m1", scale="e8m0"),  # OCP MX: E2M1, 2^k per 32
    "nvfp4": DTypeSpec(4, True, ("lab",), _LAB, codebook="e2m1", scale="e4m3"),  # E2M1, E4M3 per 16, fp32 per tensor
    "q4_0": DTypeSpec(4, True, ("lab",), _LAB, codebook="int4_grid", scale="fp16"),  # llama.cpp
    "q4_k": DTypeSpec(4, True, ("lab",), _LAB, codebook="uint4", scale="q4_k", signed=False),  # llama.cpp
    "hqq4": DTypeSpec(4, True, ("lab",), _LAB, codebook="uint4", scale="hqq", signed=False),  # HQQ
    "q8_0": DTypeSpec(8, True, ("lab",), _LAB, codebook="int8_grid", scale="fp16"),  # llama.cpp's 8-bit
    "int8": DTypeSpec(8, False, ("bnb",)),
    "bf16": DTypeSpec(16, False, ("none",)),
    "fp32": DTypeSpec(32, False, ("none",)),
}

# what bitsandbytes stores: an fp32 absmax per 64 weights, or its double quantization
BNB_SCALES = ("fp32", "dq8")


def codebook_name(dtype_name: str) -> str:
    spec = DTYPES.get(dtype_name)
    return (spec.codebook if spec is not None else None) or dtype_name


def available_backends() -> list[str]:
    """Backends this installation can run: `lab` needs the qlora_kernels package."""
    ready = ["bnb", "none"]
    if importlib.util.find_spec("qlora_kernels") is not None:
        ready.append("lab")
    return ready


COMPUTE_DTYPES = ("auto", "bf16", "fp16", "fp32")  # dtype.compute_dtype


# model.kind -> the architecture families (`model.family`) it takes; model/kinds.py builds them
KIND_FAMILIES: dict[str, tuple[str, ...]] = {
    "causal": ("bloom", "gpt2", "gpt_neox", "llama", "opt"),
    "seq2seq": ("t5",),
    "classifier": ("roberta",),
}
CLASSIFYING_KINDS = ("classifier",)  # trained on a classification dataset, scored by accuracy


TARGET_GROUPS: dict[str, dict[str, tuple[str, ...]]] = {
    "llama": {
        "qv": ("q_proj", "v_proj"),
        "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
        "mlp": ("gate_proj", "up_proj", "down_proj"),
    },
    "opt": {
        "qv": ("q_proj", "v_proj"),
        "attn": ("q_proj", "k_proj", "v_proj", "out_proj"),
        "mlp": ("fc1", "fc2"),
    },
    "gpt_neox": {  # Pythia: q, k and v share one fused projection
        "qv": ("query_key_value",),
        "attn": ("query_key_value", "dense"),
        "mlp": ("dense_h_to_4h", "dense_4h_to_h"),
    },
    "bloom": {
        "qv": ("query_key_value",),
        "attn": ("query_key_value", "dense"),
        "mlp": ("dense_h_to_4h", "dense_4h_to_h"),
    },
    "t5": {  # self- and cross-attention alike; wi: T5 1.0, wi_0 / wi_1: T5 1.1's gated MLP
        "qv": ("q", "v"),
        "attn": ("q", "k", "v", "o"),
        "mlp": ("wi", "wi_0", "wi_1", "wo"),
    },
    "gpt2": {  # Conv1D layers (weights stored transposed); q, k and v share one fused projection
        "qv": ("c_attn",),
        "attn": ("c_attn", "attn.c_proj"),
        "mlp": ("c_fc", "mlp.c_proj"),
    },
    "roberta": {  # the classification head is not a target: it is trained in full
        "qv": ("attention.self.query", "attention.self.value"),
        "attn": ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"),
        "mlp": ("intermediate.dense", "layer.*.output.dense"),
    },
}


# (in, out) of each linear layer of one decoder block, by the family's module names: h hidden,
# f the MLP's width, 3h a fused q/k/v projection. What the planner's memory estimate counts.
LINEAR_SHAPES: dict[str, dict[str, tuple[str, str]]] = {
    "llama": {"q_proj": ("h", "h"), "k_proj": ("h", "h"), "v_proj": ("h", "h"), "o_proj": ("h", "h"),
              "gate_proj": ("h", "f"), "up_proj": ("h", "f"), "down_proj": ("f", "h")},
    "opt": {"q_proj": ("h", "h"), "k_proj": ("h", "h"), "v_proj": ("h", "h"), "out_proj": ("h", "h"),
            "fc1": ("h", "f"), "fc2": ("f", "h")},
    "gpt_neox": {"query_key_value": ("h", "3h"), "dense": ("h", "h"), "dense_h_to_4h": ("h", "f"),
                 "dense_4h_to_h": ("f", "h")},
    "bloom": {"query_key_value": ("h", "3h"), "dense": ("h", "h"), "dense_h_to_4h": ("h", "f"),
              "dense_4h_to_h": ("f", "h")},
    "gpt2": {"c_attn": ("h", "3h"), "attn.c_proj": ("h", "h"), "c_fc": ("h", "f"), "mlp.c_proj": ("f", "h")},
}


# A checkpoint's config.json `model_type` -> (model.kind, model.family): how `model.path=DIR`
# learns what it loads. Llama's descendants name their projections as Llama does.
MODEL_TYPES: dict[str, tuple[str, str]] = {
    "llama": ("causal", "llama"), "mistral": ("causal", "llama"), "qwen2": ("causal", "llama"),
    "qwen3": ("causal", "llama"), "gemma": ("causal", "llama"), "gemma2": ("causal", "llama"),
    "opt": ("causal", "opt"), "gpt_neox": ("causal", "gpt_neox"), "bloom": ("causal", "bloom"),
    "gpt2": ("causal", "gpt2"), "t5": ("seq2seq", "t5"), "mt5": ("seq2seq", "t5"),
    "roberta": ("classifier", "roberta"),
}


def target_names(family: str, targets: str | list[str]) -> list[str]:
    """Module names LoRA wraps: a group name (`all` = attention + MLP) or an explicit list."""
    if not isinstance(targets, str):
        return list(targets)
    groups = TARGET_GROUPS[family]
    if targets == "all":
        return list(dict.fromkeys(groups["attn"] + groups["mlp"]))
    return list(groups[targets])
