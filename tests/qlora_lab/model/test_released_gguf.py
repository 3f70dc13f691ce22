"""`model.path=FILE.gguf`: a base released in llama.cpp's blocks loads as it is stored.

The test releases are made here, by the gguf package's writer and quantizer (Q4_0, Q8_0; Q4_K by
ours, gguf having none): a small Llama with grouped KV heads (so the K rows' permutation is the
kv-head one) and its byte-level BPE tokenizer. Every tensor our loader gives equals what
transformers' own GGUF loading (which dequantizes) gives, bit for bit; the load keeps no 16-bit
copy of a quantized layer; a run trains on it and its record names the release.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_cli
from released_models import load_peak_mb, small_llama
from qlora_lab.config import ConfigError, DTypeConfig

pytest.importorskip("gguf", reason="gguf reads and writes GGUF files (a runtime dependency)")


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> dict[str, Path]:
    from qlora_lab.model.gguf_write import write_gguf

    model, tokenizer = small_llama()
    out = tmp_path_factory.mktemp("releases")
    model.save_pretrained(out / "original")
    tokenizer.save_pretrained(out / "original")
    return {storage: write_gguf(model, tokenizer, out / storage / f"small-{storage}.gguf", storage)
            for storage in ("q4_k", "q4_0", "q8_0")}


def transformers_weights(path: Path) -> dict[str, torch.Tensor]:
    """What transformers' own GGUF loading gives (it dequantizes every tensor)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return {name: tensor.detach() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("storage, block", [("q4_k", "Q4_K"), ("q4_0", "Q4_0"), ("q8_0", "Q8_0")])
def test_every_tensor_equals_transformers_gguf_dequantization(releases, storage, block):
    from qlora_kernels import QuantLinear, dequantize

    from qlora_lab.model.released import load_gguf_base

    path = releases[storage]
    dtype = DTypeConfig(name=storage, backend="lab", scale=None, double_quant=False, blocksize=32,
                        compute_dtype="fp32", released=f"gguf {storage}")
    ours = load_gguf_base(str(path), dtype)
    theirs = transformers_weights(path)
    layers = {name: m for name, m in ours.named_modules() if isinstance(m, QuantLinear)}
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down per layer; the head stays in 16 bits
    for name, layer in layers.items():
        decoded = dequantize(layer.quant_state(), torch.float32)
        assert torch.equal(decoded.view(torch.int32), theirs[f"{name}.weight"].view(torch.int32)), name
    kept = {name: t for name, t in ours.state_dict().items() if not any(name.startswith(f"{q}.") for q in layers)}
    assert "model.embed_tokens.weight" in kept and "lm_head.weight" in kept
    for name, tensor in kept.items():
        assert torch.equal(tensor.float(), theirs[name]), name
    assert {layer.quant_state().scale_name for layer in layers.values()} == {"q4_k" if block == "Q4_K" else "fp16"}


def test_the_tokenizer_is_the_one_inside_the_file(releases):
    from transformers import AutoTokenizer

    from qlora_lab.model.released import load_gguf_tokenizer

    original = AutoTokenizer.from_pretrained(releases["q4_k"].parent.parent / "original")
    rebuilt = load_gguf_tokenizer(str(releases["q4_k"]))
    sample = "def released(path):\n    return load_gguf_base(path, dtype)  # Q4_K, 4.5 bits\n"
    assert rebuilt(sample)["input_ids"] == original(sample)["input_ids"]
    assert rebuilt.decode(original(sample)["input_ids"]) == sample


def test_a_run_trains_on_the_release_and_its_record_names_it(releases, tmp_path):
    path = releases["q4_k"]
    proc = run_cli(f"model.path={path}", "train.max_steps=3", "eval.n_generate=0", "train.report_to=none",
                   "train.save_steps=0", "lora.dora=true", "eval.fidelity=false",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["status"] == "ok", record.get("error")
    assert record["config"]["dtype"]["name"] == "q4_k" and record["config"]["dtype"]["released"] == "gguf q4_k"
    assert record["model"]["released"] == "gguf q4_k"
    assert record["model"]["bits_per_param"] == pytest.approx(4.5, abs=0.002)
    assert record["model"]["weight_sqnr_db"] is None  # no 16-bit original to measure against
    assert record["metrics"]["train_loss_last"] < record["metrics"]["train_loss_first"] + 0.5
    for merge in ("16bit", "4bit"):  # 4bit: a GGUF file of the release's block type, read by transformers
        out = tmp_path / f"merged-{merge}"
        export = subprocess.run([sys.executable, "-m", "qlora_lab.export", str(tmp_path / "run"), "--merge", merge,
                                 "--out", str(out), "--tokens", "256"], capture_output=True, text=True, cwd=REPO,
                                timeout=600)
        assert export.returncode == 0, export.stderr[-3000:]
        report = json.loads((out / "export.json").read_text())
        assert report["kl_to_unmerged"] < (1e-4 if merge == "16bit" else 0.05), report
    assert (tmp_path / "merged-4bit" / f"{path.stem}-merged.gguf").is_file()
    assert "GGUF Q4_K" in json.loads((tmp_path / "merged-4bit" / "export.json").read_text())["format"]


@pytest.mark.parametrize("overrides, says", [
    (["dtype=fp4"], "is released as gguf q4_k and loads as stored; leave dtype unset (or dtype=q4_k)"),
    (["lora.init=loftq"], "holds a gguf-quantized checkpoint (use lora.init=gaussian)"),
])
def test_what_a_release_cannot_be_is_refused_in_one_line(releases, tmp_path, overrides, says):
    proc = run_cli(f"model.path={releases['q4_k']}", *overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode != 0 and says in proc.stderr, proc.stderr[-2000:]


def test_dtype_released_is_never_set_by_hand(tmp_path):
    proc = run_cli("dtype.released=gguf q4_k", "dtype=q4_k", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    says = "is set from model.path (a GGUF file or an NVFP4 release's folder); leave it null"
    assert proc.returncode != 0 and says in proc.stderr, proc.stderr[-2000:]


def test_unsupported_tensor_types_and_experts_are_refused(tmp_path):
    import gguf
    import numpy as np

    from qlora_lab.gguf_checkpoint import read_gguf_summary

    def written(name: str, arch: str, tensor_type, experts: int = 0) -> str:
        writer = gguf.GGUFWriter(str(tmp_path / name), arch)
        writer.add_block_count(1)
        if experts:
            writer.add_expert_count(experts)
        data = np.zeros((32, 64), np.float32)
        raw = gguf.quants.quantize(data, tensor_type)
        writer.add_tensor("blk.0.attn_q.weight", raw, raw_shape=raw.shape, raw_dtype=tensor_type)
        writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
        return str(tmp_path / name)

    with pytest.raises(ConfigError, match="holds Q5_0 tensors; supported: Q4_0, Q4_K, Q8_0"):
        read_gguf_summary(written("q5.gguf", "llama", gguf.GGMLQuantizationType.Q5_0))
    with pytest.raises(ConfigError, match="a mixture-of-experts release .* is not supported yet"):
        read_gguf_summary(written("moe.gguf", "qwen2moe", gguf.GGMLQuantizationType.Q8_0, experts=4))


def test_loading_keeps_no_16_bit_copy_of_a_quantized_layer(releases, tmp_path):
    """Peak resident memory of a load, in a fresh process each, after a first load of the small
    release (imports and lazy set-up left out): ours against transformers' dequantizing loader, on
    a release whose linear layers dominate (36M weights: 138 MB in fp32, 19 MB as Q4_K)."""
    from qlora_lab.model.gguf_write import write_gguf

    model, tokenizer = small_llama(hidden=1024, intermediate=2560, layers=3)
    path = write_gguf(model, tokenizer, tmp_path / "big.gguf", "q4_k")
    del model
    loaders = {"ours": """
        from qlora_lab.config import DTypeConfig
        from qlora_lab.model.released import load_gguf_base

        def load(path):
            return load_gguf_base(path, DTypeConfig(name="q4_k", backend="lab", scale=None, double_quant=False,
                                                    blocksize=32, compute_dtype="fp32", released="gguf q4_k"))
        """, "transformers": """
        import os

        def load(path):
            return transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path),
                                                                     gguf_file=os.path.basename(path), dtype=torch.float32)
        """}
    grown = {who: load_peak_mb(load, releases["q4_k"], path) for who, load in loaders.items()}
    linear_fp32_mb = 3 * (2 * 1024 * 1024 + 2 * 512 * 1024 + 3 * 1024 * 2560) * 4 / 2**20
    assert grown["transformers"] > 0.8 * linear_fp32_mb, grown  # it holds the dequantized layers
    assert grown["ours"] < 0.5 * linear_fp32_mb, grown  # the blocks, the file's pages, the 16-bit rest


def test_a_checkpoint_folder_is_released_as_gguf_from_the_command_line(releases, tmp_path):
    from qlora_lab.gguf_checkpoint import read_gguf_summary

    original = releases["q4_k"].parent.parent / "original"
    out = tmp_path / "small-q8_0.gguf"
    proc = subprocess.run([sys.executable, "-m", "qlora_lab.release", str(original), "--gguf", "q8_0", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = read_gguf_summary(str(out))
    assert summary.released == "gguf q8_0" and summary.arch["num_layers"] == 2 and summary.model_type == "llama"
    bad = subprocess.run([sys.executable, "-m", "qlora_lab.release", str(tmp_path), "--gguf", "q4_k", "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert bad.returncode == 2 and "no config.json (not a transformers checkpoint folder)" in bad.stderr
