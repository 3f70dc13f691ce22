"""`model.path=DIR` of an NVFP4 release (compressed-tensors' layout) loads as it is stored.

The test release is made here by compressed-tensors itself (apply its NVFP4A16 preset, scales from
its own functions, compress, save): a small bf16 Llama with grouped KV heads and its tokenizer.
Every layer our loader decodes equals compressed-tensors' decompression, bit for bit; the load
keeps no 16-bit copy of a quantized layer; a run trains on it, its record names the release, and
`export --merge 4bit` writes a folder the library's reader (through transformers) loads.
compressed-tensors is a test dependency only (the lock's `refs`, which `make install` keeps apart).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_cli
from qlora_lab.config import ConfigError, DTypeConfig
from released_models import compressed_tensors_release, load_peak_mb, small_llama, with_refs

with_refs()
pytest.importorskip("compressed_tensors", reason="compressed-tensors is a test dependency (make install: .venv/refs)")

NVFP4 = DTypeConfig(name="nvfp4", backend="lab", scale="e4m3", double_quant=False, blocksize=16, compute_dtype="fp32",
                    released="nvfp4")


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    model, tokenizer = small_llama()
    model = model.to(torch.bfloat16)  # releases are made from the bf16 original
    out = tmp_path_factory.mktemp("nvfp4")
    model.save_pretrained(out / "original")
    tokenizer.save_pretrained(out / "original")
    return compressed_tensors_release(model, tokenizer, out / "small-nvfp4")


def their_decompression(folder: Path) -> dict[str, torch.Tensor]:
    """What transformers gives for the folder through compressed-tensors, decompressed (bf16)."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16,
                                                 quantization_config=CompressedTensorsConfig(dequantize=True))
    return {name: tensor.detach() for name, tensor in model.state_dict().items()}


def their_float32_values(folder: Path, layer: str) -> torch.Tensor:
    """compressed-tensors' own decode of one layer's stored tensors, kept in float32 (its
    decompression then rounds to bf16)."""
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        packed, scale, global_scale = (f.get_tensor(f"{layer}.{k}") for k in ("weight_packed", "weight_scale",
                                                                                "weight_global_scale"))
    values = unpack_fp4_from_uint8(packed, packed.shape[0], 2 * packed.shape[1], dtype=torch.float32)
    return dequantize(x_q=values, scale=scale.to(torch.float32), args=preset_name_to_scheme("NVFP4A16", ["Linear"]).weights,
                      global_scale=global_scale, dtype=torch.float32)


def test_every_layer_equals_compressed_tensors_decompression(release):
    from qlora_kernels import QuantLinear, dequantize, native

    from qlora_lab.model.released_nvfp4 import load_nvfp4_base

    ours = load_nvfp4_base(str(release), NVFP4)
    theirs = their_decompression(release)
    layers = {name: m for name, m in ours.named_modules() if isinstance(m, QuantLinear)}
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down per layer; the head stays in 16 bits
    for name, layer in layers.items():
        exact = their_float32_values(release, name)
        for compiled in (False, True):
            with native.enabled(compiled):
                decoded = dequantize(layer.quant_state(), torch.float32)
            assert torch.equal(decoded.view(torch.int32), exact.view(torch.int32)), (name, compiled)
        assert torch.equal(decoded.to(torch.bfloat16), theirs[f"{name}.weight"]), name
    kept = {name: t for name, t in ours.state_dict().items() if not any(name.startswith(f"{q}.") for q in layers)}
    assert "model.embed_tokens.weight" in kept and "lm_head.weight" in kept
    for name, tensor in kept.items():
        assert torch.equal(tensor, theirs[name].float()), name
    assert {layer.quant_state().scale_name for layer in layers.values()} == {"e4m3"}


def test_our_quantizer_writes_what_compressed_tensors_writes():
    """Weights with an all-zero group, tiny and huge groups, a -0.0, in float32 and bf16: the
    stored tensors of quantize_nvfp4 equal compressed-tensors' NVFP4PackedCompressor's."""
    from compressed_tensors.compressors.nvfp4 import NVFP4PackedCompressor
    from compressed_tensors.quantization import preset_name_to_scheme
    from qlora_kernels.compressed_blocks import nvfp4_tensors, quantize_nvfp4

    from released_models import nvfp4_scales

    scheme = preset_name_to_scheme("NVFP4A16", ["Linear"])
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(1)
        layer = torch.nn.Linear(96, 40, bias=False).to(dtype)
        with torch.no_grad():
            layer.weight[0, :16] = 0.0
            layer.weight[1, :16] *= 1e-30
            layer.weight[2, :16] *= 1e6
            layer.weight[3, 5] = -0.0
        layer.quantization_scheme = scheme
        layer.weight_global_scale = torch.nn.Parameter(torch.empty(1), requires_grad=False)
        layer.weight_scale = torch.nn.Parameter(torch.empty(40, 6, dtype=dtype), requires_grad=False)
        nvfp4_scales(layer)
        theirs = NVFP4PackedCompressor.compress({"weight": layer.weight.data, "weight_scale": layer.weight_scale.data,
                                                 "weight_global_scale": layer.weight_global_scale.data}, scheme)
        ours = nvfp4_tensors(quantize_nvfp4(layer.weight.data))
        for key, tensor in ours.items():
            other = theirs[key]
            assert tensor.dtype == other.dtype and tensor.shape == other.shape, key
            assert torch.equal(tensor.view(torch.uint8) if tensor.dtype == torch.float8_e4m3fn else tensor,
                               other.view(torch.uint8) if other.dtype == torch.float8_e4m3fn else other), (dtype, key)


def test_a_run_trains_on_the_release_and_its_record_names_it(release, tmp_path):
    proc = run_cli(f"model.path={release}", "train.max_steps=3", "eval.n_generate=0", "train.report_to=none",
                   "train.save_steps=0", "lora.dora=true", "eval.fidelity=true", "eval.fidelity_tokens=256",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["status"] == "ok", record.get("error")
    assert record["config"]["dtype"]["name"] == "nvfp4" and record["config"]["dtype"]["released"] == "nvfp4"
    assert record["config"]["dtype"]["blocksize"] == 16 and record["config"]["dtype"]["scale"] == "e4m3"
    assert record["model"]["released"] == "nvfp4"
    assert record["model"]["bits_per_param"] == pytest.approx(4.5, abs=0.002)
    assert record["metrics"]["kl_to_base"] is not None and record["metrics"]["kl_to_base"] >= 0
    assert record["metrics"]["train_loss_last"] < record["metrics"]["train_loss_first"] + 0.5
    for merge in ("16bit", "4bit"):
        out = tmp_path / f"merged-{merge}"
        export = subprocess.run([sys.executable, "-m", "qlora_lab.export", str(tmp_path / "run"), "--merge", merge,
                                 "--out", str(out), "--tokens", "256"], capture_output=True, text=True, cwd=REPO,
                                timeout=600)
        assert export.returncode == 0, export.stderr[-3000:]
        report = json.loads((out / "export.json").read_text())
        assert report["kl_to_unmerged"] < (1e-4 if merge == "16bit" else 0.05), report
    assert "NVFP4" in json.loads((tmp_path / "merged-4bit" / "export.json").read_text())["format"]
    # the format's own reader loads the 4-bit export, to the values ours decodes
    from qlora_kernels import QuantLinear, dequantize

    from qlora_lab.model.released_nvfp4 import load_nvfp4_base

    theirs = their_decompression(tmp_path / "merged-4bit")
    ours = load_nvfp4_base(str(tmp_path / "merged-4bit"), NVFP4)
    layers = {name: m for name, m in ours.named_modules() if isinstance(m, QuantLinear)}
    assert len(layers) == 14
    for name, layer in layers.items():
        assert torch.equal(dequantize(layer.quant_state(), torch.float32).to(torch.bfloat16), theirs[f"{name}.weight"])


@pytest.mark.parametrize("overrides, says", [
    (["dtype=fp4"], "is released as nvfp4 and loads as stored; leave dtype unset (or dtype=nvfp4)"),
    (["lora.init=loftq"], "holds a compressed-tensors-quantized checkpoint (use lora.init=gaussian)"),
])
def test_what_a_release_cannot_be_is_refused_in_one_line(release, tmp_path, overrides, says):
    proc = run_cli(f"model.path={release}", *overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode != 0 and says in proc.stderr, proc.stderr[-2000:]


def test_other_layouts_and_experts_are_refused(release, tmp_path):
    from qlora_lab.checkpoint_config import read_checkpoint_config, released_summary

    def folder_with(name: str, change) -> str:
        config = json.loads((release / "config.json").read_text())
        change(config)
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        return str(tmp_path / name)

    int4 = folder_with("int4", lambda c: c["quantization_config"]["config_groups"]["group_0"].update(format="pack-quantized"))
    with pytest.raises(ConfigError, match="holds compressed-tensors format 'pack-quantized' .*supported: nvfp4-pack-quantized"):
        released_summary(int4)
    moe = folder_with("moe", lambda c: c.update(num_local_experts=8))
    with pytest.raises(ConfigError, match=r"a mixture-of-experts release \(llama, num_local_experts=8\) is not supported"):
        released_summary(moe)
    fake = folder_with("frozen", lambda c: c["quantization_config"].update(quantization_status="frozen"))
    with pytest.raises(ConfigError, match="the weights are not packed"):
        released_summary(fake)
    read_checkpoint_config.cache_clear()
    assert released_summary(str(release.parent / "original")) is None  # a 16-bit folder is not a release


def test_loading_keeps_no_16_bit_copy_of_a_quantized_layer(release, tmp_path):
    """Peak resident memory of a load, in a fresh process each, after a first load of the small
    release (imports and lazy set-up left out): ours against transformers' loading through
    compressed-tensors with decompression, on a release whose linear layers dominate (36M weights:
    63 MiB in bf16, 20 MiB as NVFP4). Measured: ours +32 to +34 MiB, compressed-tensors'
    +159 to +203 MiB."""
    model, tokenizer = small_llama(hidden=1024, intermediate=2560, layers=3)
    big = compressed_tensors_release(model.to(torch.bfloat16), tokenizer, tmp_path / "big")
    del model
    loaders = {"ours": """
        from qlora_lab.config import DTypeConfig
        from qlora_lab.model.released_nvfp4 import load_nvfp4_base

        def load(path):
            return load_nvfp4_base(path, DTypeConfig(name="nvfp4", backend="lab", scale="e4m3", double_quant=False,
                                                     blocksize=16, compute_dtype="bf16", released="nvfp4"))
        """, "compressed-tensors": """
        def load(path):
            config = transformers.CompressedTensorsConfig(dequantize=True)
            return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, quantization_config=config)
        """}
    grown = {who: load_peak_mb(load, release, big, refs=True) for who, load in loaders.items()}
    print("peak growth of the load, MB:", grown)
    linear_bf16_mb = 3 * (2 * 1024 * 1024 + 2 * 512 * 1024 + 3 * 1024 * 2560) * 2 / 2**20
    assert grown["compressed-tensors"] > 0.8 * linear_bf16_mb, grown  # it holds the decompressed layers
    # ours: the stored tensors (20 MiB), the file's pages (safetensors maps it) and what the allocator
    # keeps of the reads; a 16-bit copy of the layers would add 63 MiB to that
    assert grown["ours"] < linear_bf16_mb, grown


def test_a_checkpoint_folder_is_released_as_nvfp4_from_the_command_line(release, tmp_path):
    """`python -m qlora_lab.release DIR --nvfp4` writes, for the same bf16 original, the very
    tensors compressed-tensors wrote."""
    from safetensors.torch import load_file

    original = release.parent / "original"
    out = tmp_path / "ours-nvfp4"
    proc = subprocess.run([sys.executable, "-m", "qlora_lab.release", str(original), "--nvfp4", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours, theirs = load_file(out / "model.safetensors"), load_file(release / "model.safetensors")
    assert sorted(ours) == sorted(theirs)
    for key, tensor in theirs.items():
        assert tensor.dtype == ours[key].dtype and torch.equal(tensor.view(torch.uint8), ours[key].view(torch.uint8)), key
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["format"] == "nvfp4-pack-quantized" and config["ignore"] == ["lm_head"]
    bad = subprocess.run([sys.executable, "-m", "qlora_lab.release", str(original), "--nvfp4", "--out",
                          str(tmp_path / "x.gguf")], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert bad.returncode == 2 and "expected a new (or empty) folder for the NVFP4 release" in bad.stderr
