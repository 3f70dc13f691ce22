"""`model.path=DIR_OR_HUB_ID`: what a researcher's own checkpoint is, read from its config.json
(or, for `model.path=FILE.gguf`, from the GGUF header: gguf_checkpoint; a folder released in
NVFP4 says so in its config.json: compressed_checkpoint).

One override is enough to fine-tune your own folder or hub model: its `model_type` gives the
model kind and the LoRA target family, its sizes give the `arch` that the memory estimate and
the record use, and its folder (or hub id) names the run's model. Torch-free: this runs while
the command line is checked, before anything launches.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from qlora_lab.config_checks import ConfigError
from qlora_lab.catalog import MODEL_TYPES
from qlora_lab.compressed_checkpoint import CompressedSummary, is_compressed_release, read_compressed_summary
from qlora_lab.gguf_checkpoint import GGUFSummary, is_gguf, read_gguf_summary

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # `gpt2`, `facebook/opt-125m`

# config.json key names per size, as the families spell them (first found wins)
_ARCH_KEYS = {
    "vocab_size": ("vocab_size",),
    "hidden_size": ("hidden_size", "n_embd", "d_model", "n_embed"),
    "intermediate_size": ("intermediate_size", "ffn_dim", "n_inner", "d_ff"),
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "num_heads": ("num_attention_heads", "n_head", "num_heads"),
    "max_seq_len": ("max_position_embeddings", "n_positions", "seq_length"),
}
DEFAULT_MAX_SEQ_LEN = 2048  # BLOOM (ALiBi) and T5 (relative positions) declare no maximum


def own_model_fields(path: str) -> dict:
    """ModelConfig fields of what `path` really holds: name, path, kind, family and arch (a dict)
    from its config.json. A bad path or an unknown family fails here, in one line."""
    path = local_path(path)
    if is_gguf(path):  # a llama.cpp release: its header says what it is
        summary = read_gguf_summary(path)
        kind, family = MODEL_TYPES[summary.model_type]
        return {"name": Path(path).stem, "path": path, "kind": kind, "family": family, "arch": summary.arch}
    checkpoint = read_checkpoint_config(path)
    model_type = checkpoint.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ConfigError("model.path", path,
                          f"its config.json has model_type {model_type!r}; known families: "
                          f"{', '.join(sorted(MODEL_TYPES))}")
    kind, family = MODEL_TYPES[model_type]
    return {"name": Path(path).name if Path(path).is_dir() else path, "path": path, "kind": kind, "family": family,
            "arch": arch_from_checkpoint(checkpoint)}


def local_path(path: str) -> str:
    """An existing folder as an absolute path (a run's working folder may differ); a hub id as given."""
    folder = Path(path).expanduser()
    if folder.is_dir() or (is_gguf(path) and folder.is_file()):
        return str(folder.resolve())
    if is_gguf(path):
        raise ConfigError("model.path", path, "no such GGUF file")
    if not _HUB_ID.match(path) or path.count("/") > 1:
        raise ConfigError("model.path", path, "no such folder")
    return path


@lru_cache(maxsize=64)
def read_checkpoint_config(path: str) -> dict:
    """config.json of a local folder, or of a hub id (the hub's cache first; offline, only it)."""
    folder = Path(path)
    if folder.is_dir():
        config = folder / "config.json"
        if not config.is_file():
            raise ConfigError("model.path", path, "the folder holds no config.json (not a transformers checkpoint)")
        return json.loads(config.read_text(encoding="utf-8"))
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(path, "config.json")).read_text(encoding="utf-8"))
    except Exception as err:  # offline, unknown repo, gated: all end the same way for the user
        raise ConfigError("model.path", path, f"no such folder, and the hub id's config.json could not be read "
                                              f"({type(err).__name__})") from None


def arch_from_checkpoint(checkpoint: dict) -> dict:
    """Arch's fields from a config.json; an MLP width left out means the usual 4 x hidden."""
    arch = {}
    for field, keys in _ARCH_KEYS.items():
        arch[field] = next((int(checkpoint[k]) for k in keys if checkpoint.get(k) is not None), None)
    missing = [f for f in ("vocab_size", "hidden_size", "num_layers", "num_heads") if arch[f] is None]
    if missing:
        raise ConfigError("model.path", checkpoint.get("_name_or_path", "?"),
                          f"its config.json gives no {', '.join(missing)}")
    arch["intermediate_size"] = arch["intermediate_size"] or 4 * arch["hidden_size"]
    arch["max_seq_len"] = arch["max_seq_len"] or DEFAULT_MAX_SEQ_LEN
    return arch


def quantized_checkpoint(path: str | None) -> str | None:
    """The quantization method a checkpoint was saved in (`bitsandbytes`, `gptq`, ...), None for a
    16-bit one or one whose config.json cannot be read here (a hub id not in the cache)."""
    if not path:
        return None
    if is_gguf(path):
        return "gguf"
    try:
        checkpoint = read_checkpoint_config(local_path(path))
    except ConfigError:
        return None
    stored = checkpoint.get("quantization_config")
    return (stored.get("quant_method") or "quantized") if isinstance(stored, dict) else None


def released_summary(path: str | None) -> GGUFSummary | CompressedSummary | None:
    """What a base released quantized holds (a GGUF file, or a local folder of an NVFP4 release in
    compressed-tensors' layout); None for anything else. A hub id is not looked up here: download
    the release and give its folder."""
    if not path:
        return None
    if is_gguf(path):
        return read_gguf_summary(local_path(path))
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        return None
    checkpoint = read_checkpoint_config(str(folder.resolve()))
    return read_compressed_summary(path, checkpoint) if is_compressed_release(checkpoint) else None
