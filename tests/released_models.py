"""Small models released quantized, made here by the formats' own tools: what the released-base
tests load (GGUF files by the gguf package's writer; NVFP4 folders by compressed-tensors)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
REFS = Path(sys.prefix) / "refs"  # make install: the lock's `refs` pins (compressed-tensors among them), apart


def small_llama(hidden: int = 256, intermediate: int = 512, layers: int = 2, seed: int = 0):
    """A random Llama and a BPE tokenizer trained on the repository's own source (seconds)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from qlora_lab.model.tiny import train_tokenizer

    text = "".join(p.read_text() for p in sorted((REPO / "qlora_lab").glob("*.py")))
    tokenizer = train_tokenizer(text, 512)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval(), tokenizer


def with_refs() -> None:
    """The reference libraries' folder on this process's path (compressed-tensors, torchao, hqq)."""
    if REFS.is_dir() and str(REFS) not in sys.path:
        sys.path.append(str(REFS))


def nvfp4_scales(module: torch.nn.Module) -> None:
    """A layer's NVFP4 global and group scales from its weight's min and max, computed by
    compressed-tensors' own functions (what llm-compressor's min-max observer feeds them)."""
    from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam

    weight = module.weight.data
    args = module.quantization_scheme.weights
    global_scale = generate_gparam(weight.amin(), weight.amax())
    groups = weight.reshape(weight.shape[0], -1, args.group_size)
    scale, _ = calculate_qparams(groups.amin(-1), groups.amax(-1), args, global_scale=global_scale)
    module.weight_global_scale.data.copy_(global_scale)
    module.weight_scale.data.copy_(scale)


def compressed_tensors_release(model: torch.nn.Module, tokenizer, out: Path, scheme: str = "NVFP4A16") -> Path:
    """`model` saved as compressed-tensors saves an NVFP4 model (its preset `scheme`, the head
    left out), by the library itself: apply the scheme, set the scales, compress, save, write the
    config. `model` is compressed in place."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config, preset_name_to_scheme

    config = QuantizationConfig(config_groups={"group_0": preset_name_to_scheme(scheme, ["Linear"])}, ignore=["lm_head"])
    apply_quantization_config(model, config)
    for module in model.modules():
        if getattr(getattr(module, "quantization_scheme", None), "weights", None) is not None:
            nvfp4_scales(module)
    compressor = ModelCompressor.from_pretrained_model(model, None)
    compressor.compress_model(model)
    model.save_pretrained(out)
    compressor.update_config(str(out))
    tokenizer.save_pretrained(out)
    return out


PEAK_OF_A_LOAD = """
import re, sys
sys.path += sys.argv[3:]  # the references, before transformers looks for them
import torch, transformers
{load}
resident = lambda key: int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))
warm = load(sys.argv[1])
del warm
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from here
before = resident("VmRSS")
model = load(sys.argv[2])
print((resident("VmHWM") - before) / 1024)
"""


def load_peak_mb(load: str, warm: Path, measured: Path, refs: bool = False) -> float:
    """Peak resident memory growth, in MiB, of `load(measured)` in a fresh process (one torch
    thread), after a first `load(warm)` (imports and lazy set-up left out). `load`: the source of a
    function `load(path)`; `refs`: the references' folder on that process's path."""
    script = PEAK_OF_A_LOAD.format(load=textwrap.dedent(load))
    args = [sys.executable, "-c", script, str(warm), str(measured)] + [str(REFS)] * refs
    proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return float(proc.stdout.split()[-1])
