"""The 2026 formats as QLoRA data types, end to end on the tiny base: `dtype=mxfp4|nvfp4|q4_0|
q4_k|hqq4` and a cross (`dtype=nf4 dtype.scale=e4m3 dtype.blocksize=16`) train and evaluate, with
the record's bits per parameter as stored; LoftQ fits them and a 16-bit export reloads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, records_under, run_cli, tiny_base_dir
from qlora_lab.config import ConfigError, DTypeConfig

# bits per parameter as stored: 4-bit codes + one 8-bit E8M0 per 32 (MXFP4); an 8-bit E4M3 per 16
# and one fp32 per tensor (NVFP4); fp16 per 32 (Q4_0); 12 bits per 32 + 32 per 256 (Q4_K); an fp16
# scale and zero per 64 (HQQ)
STORED_BITS = {"mxfp4": 4.25, "nvfp4": 4.5, "q4_0": 4.5, "q4_k": 4.5, "hqq4": 4.5}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tiny_base_dir()
    out = tmp_path_factory.mktemp("formats")
    proc = run_cli("-m", f"dtype={','.join(STORED_BITS)}", "train.max_steps=2", "eval.n_generate=0",
                   "train.report_to=none", "train.save_steps=0", "eval.fidelity=true", "eval.fidelity_tokens=512",
                   f"hydra.sweep.dir={out / 'sweep'}", cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return records_under(out / "sweep")


def test_each_named_format_trains_and_evaluates_with_its_stored_bits(sweep):
    by_dtype = {record["config"]["dtype"]["name"]: record for record in sweep.values()}
    assert sorted(by_dtype) == sorted(STORED_BITS)
    for name, record in by_dtype.items():
        assert record["status"] == "ok", (name, record.get("error"))
        assert record["config"]["dtype"]["backend"] == "lab" and record["config"]["dtype"]["double_quant"] is False
        assert record["model"]["bits_per_param"] == pytest.approx(STORED_BITS[name], abs=0.002), name
        assert record["metrics"]["train_loss_last"] < record["metrics"]["train_loss_first"] + 0.5
        assert 0 < record["metrics"]["kl_to_base"] < 0.1, name


def test_a_cross_trains_as_nf4_with_nvfp4_scales(tmp_path):
    tiny_base_dir()
    proc = run_cli("dtype=nf4", "dtype.backend=lab", "dtype.scale=e4m3", "dtype.blocksize=16", "train.max_steps=2",
                   "eval.n_generate=0", "train.report_to=none", "train.save_steps=0", "lora.init=loftq",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["status"] == "ok" and record["config"]["dtype"]["scale"] == "e4m3"
    assert record["model"]["bits_per_param"] == pytest.approx(4.5, abs=0.002)
    export = subprocess.run([sys.executable, "-m", "qlora_lab.export", str(tmp_path / "run"), "--merge", "16bit",
                             "--out", str(tmp_path / "merged"), "--tokens", "512"], capture_output=True, text=True,
                            cwd=REPO, timeout=600)
    assert export.returncode == 0, export.stderr[-3000:]
    assert (tmp_path / "merged" / "config.json").exists()


@pytest.mark.parametrize("overrides, says", [
    ({"name": "nf4", "scale": "e4m3", "blocksize": 16}, "backend bnb (bitsandbytes) stores fp32 or dq8 only"),
    ({"name": "nf4", "backend": "lab", "scale": "q4_k", "blocksize": 32}, "defined for uint4, not codebook nf4"),
    ({"name": "q4_0", "backend": "lab", "scale": "fp16", "blocksize": 64}, "takes block size 32, not 64"),
    ({"name": "mxfp4", "backend": "lab", "scale": "e8m0", "blocksize": 32, "double_quant": True},
     "double quantization is scale format dq8"),
    ({"name": "nf4", "backend": "lab", "scale": "e9m9"}, "dtype.scale=e9m9"),
])
def test_a_cross_that_cannot_exist_is_refused_in_one_line(overrides, says):
    import re

    with pytest.raises(ConfigError, match=re.escape(says)) as error:
        DTypeConfig(**overrides).validate()
    assert "\n" not in str(error.value)


def test_the_paper_s_data_types_keep_their_meaning():
    """dtype=nf4 is still NF4 + DQ, double_quant=false is still fp32 absmax, and the record names both."""
    nf4 = DTypeConfig(name="nf4")
    nf4.validate()
    assert (nf4.scale, nf4.double_quant) == ("dq8", True)
    plain = DTypeConfig(name="fp4", double_quant=False)
    plain.validate()
    assert (plain.scale, plain.double_quant) == ("fp32", False)


def test_the_config_check_imports_no_torch():
    """The registries sit below config and model, torch-free: a bad value is refused in a second."""
    code = ("import sys; from qlora_lab.config import DTypeConfig; DTypeConfig(name='nvfp4', backend='lab', "
            "scale='e4m3', blocksize=16).validate(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
