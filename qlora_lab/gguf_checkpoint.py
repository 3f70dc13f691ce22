"""`model.path=FILE.gguf`: what a GGUF release holds, read from its header while the command line
is checked (torch-free): the family, the sizes, and how its tensors are stored.

A GGUF file names its architecture (`general.architecture`) and keeps its sizes under that name
(`llama.embedding_length`, ...). Its linear layers are stored in llama.cpp's block types; the
ones qlora_kernels holds as they are (Q4_0, Q4_K, Q8_0) load without a 16-bit copy, the rest of
the file (embeddings, norms) in F32 / F16 / BF16.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from qlora_lab.config_checks import ConfigError

# GGUF architecture -> transformers' model_type, for the dense decoders whose tensors load row by row
GGUF_ARCHS = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}
RELEASED_TYPES = {"Q4_0": "q4_0", "Q4_K": "q4_k", "Q8_0": "q8_0"}  # GGUF block type -> our data type
KEPT_TYPES = ("F32", "F16", "BF16")  # loaded as they are stored


@dataclass(frozen=True)
class GGUFSummary:
    """A GGUF file's header, as the config needs it."""

    model_type: str
    arch: dict  # Arch's fields
    storage: str  # the data type of most of its quantized weights (q4_k), ours by name
    types: dict  # GGML type name -> tensors stored in it
    name: str  # general.name, else the file's stem
    blocksize: int = 32  # the weights one scale covers (Q4_K's sub-block)

    @property
    def released(self) -> str:
        """`gguf q4_k`, or `gguf q4_k+q8_0` where the release mixes block types."""
        quantized = [RELEASED_TYPES[t] for t in sorted(self.types, key=lambda t: -self.types[t]) if t in RELEASED_TYPES]
        return "gguf " + "+".join(quantized)


@lru_cache(maxsize=16)
def read_gguf_summary(path: str) -> GGUFSummary:
    """The header of a GGUF file; every reason it cannot be a base here fails in one line."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as err:
        raise ConfigError("model.path", path, f"not a GGUF file this gguf can read ({err})") from None
    field = lambda key: reader.fields[key].contents() if key in reader.fields else None  # noqa: E731
    architecture = field("general.architecture")
    if field(f"{architecture}.expert_count"):
        raise ConfigError("model.path", path, f"a mixture-of-experts release ({architecture}, "
                                              f"{field(f'{architecture}.expert_count')} experts) is not supported yet; "
                                              f"dense: {', '.join(GGUF_ARCHS)}")
    if architecture not in GGUF_ARCHS:
        raise ConfigError("model.path", path, f"GGUF architecture {architecture!r} is not supported; supported: "
                                              f"{', '.join(GGUF_ARCHS)}")
    types = Counter(t.tensor_type.name for t in reader.tensors)
    unsupported = sorted(set(types) - set(RELEASED_TYPES) - set(KEPT_TYPES))
    if unsupported:
        raise ConfigError("model.path", path, f"holds {', '.join(unsupported)} tensors; supported: "
                                              f"{', '.join(RELEASED_TYPES)} (and {', '.join(KEPT_TYPES)} kept as stored)")
    quantized = [t for t in types if t in RELEASED_TYPES]
    if not quantized:
        raise ConfigError("model.path", path, "holds no quantized tensor (Q4_0, Q4_K, Q8_0): load its 16-bit "
                                              "original as a folder instead")
    tokens = field("tokenizer.ggml.tokens")
    heads = field(f"{architecture}.attention.head_count")
    hidden = field(f"{architecture}.embedding_length")
    arch = {"vocab_size": len(tokens) if tokens else field(f"{architecture}.vocab_size"), "hidden_size": hidden,
            "intermediate_size": field(f"{architecture}.feed_forward_length") or 4 * hidden,
            "num_layers": field(f"{architecture}.block_count"), "num_heads": heads,
            "max_seq_len": field(f"{architecture}.context_length") or 2048}
    missing = [key for key, value in arch.items() if not value]
    if missing:
        raise ConfigError("model.path", path, f"its GGUF header gives no {', '.join(missing)}")
    storage = RELEASED_TYPES[max(quantized, key=lambda t: types[t])]
    return GGUFSummary(model_type=GGUF_ARCHS[architecture], arch={k: int(v) for k, v in arch.items()},
                       storage=storage, types=dict(types), name=field("general.name") or Path(path).stem)


def is_gguf(path: str | None) -> bool:
    return bool(path) and str(path).endswith(".gguf")
