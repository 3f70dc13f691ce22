"""`model.path=DIR_OR_HUB_ID`: a researcher's own checkpoint, described from its config.json,
loaded for real (GPT-2's Conv1D layers on both backends) and recorded as what it is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import records_under, run_cli, tiny_base_dir
from qlora_lab.config import ModelConfig, resolve_own_model
from qlora_lab.config_checks import ConfigError


def own(path) -> ModelConfig:
    """What `model.path=PATH` on the default `tiny` config gives before resolution."""
    return ModelConfig(path=str(path))


def gpt2_folder(root: Path) -> Path:
    """A small GPT-2 built here with the tiny base's tokenizer: an ordinary transformers checkpoint."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder = root / "my-gpt2"
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir())
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=512,
                                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("config, kind, family, arch", [
    ({"model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
      "num_hidden_layers": 32, "num_attention_heads": 32, "max_position_embeddings": 32768},
     "causal", "llama", (32000, 4096, 14336, 32, 32, 32768)),
    ({"model_type": "gpt2", "vocab_size": 50257, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024},
     "causal", "gpt2", (50257, 768, 3072, 12, 12, 1024)),  # n_inner null: 4 x hidden
    ({"model_type": "t5", "vocab_size": 32128, "d_model": 512, "d_ff": 1024, "num_layers": 8, "num_heads": 6},
     "seq2seq", "t5", (32128, 512, 1024, 8, 6, 2048)),
])
def test_kind_family_and_arch_come_from_config_json(tmp_path, config, kind, family, arch):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    model = resolve_own_model(own(folder))
    assert (model.name, model.path, model.source, model.kind, model.family) == \
        ("ckpt", str(folder.resolve()), "pretrained", kind, family)
    assert (model.arch.vocab_size, model.arch.hidden_size, model.arch.intermediate_size, model.arch.num_layers,
            model.arch.num_heads, model.arch.max_seq_len) == arch
    assert model.pretrain is None


def test_bad_paths_and_unknown_families_are_one_line_each(tmp_path):
    with pytest.raises(ConfigError, match=r"^model.path=/no/such/dir: no such folder$"):
        resolve_own_model(own("/no/such/dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no config.json"):
        resolve_own_model(own(tmp_path / "empty"))
    (tmp_path / "mamba").mkdir()
    (tmp_path / "mamba" / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(ConfigError, match=r"model_type 'mamba'; known families: bloom, .*gpt2.*llama.*roberta"):
        resolve_own_model(own(tmp_path / "mamba"))
    with pytest.raises(ConfigError, match="no such folder, and the hub id's config.json could not be read"):
        resolve_own_model(own("nobody-here/no-model"))  # HF_HUB_OFFLINE=1 in the tests


def test_command_line_mistakes_about_the_model_are_one_line_before_launch(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    cases = {
        f"model.path={tmp_path / 'absent'}": f"error: model.path={tmp_path / 'absent'}: no such folder",
        f"model={folder}": f"error: model={folder}: expected one of ",  # key and value as typed
        f"model.name={folder}": f"error: model.name={folder}: the model config's own label",
    }
    for override, said in cases.items():
        proc = run_cli(override, cwd=tmp_path, timeout=120)
        assert proc.returncode == 2 and proc.stderr.startswith(said), proc.stderr[-500:]
        assert len(proc.stderr.strip().splitlines()) == 1
    assert f"model.path={folder}" in run_cli(f"model={folder}", cwd=tmp_path, timeout=120).stderr  # the way round


def test_own_folders_train_and_the_record_says_what_was_loaded(tmp_path):
    """A GPT-2 built here (Conv1D) on the bitsandbytes and lab backends, and a copy of the tiny
    Llama under another name: each trains, and its record names and describes that folder."""
    gpt2 = gpt2_folder(tmp_path)
    llama = tmp_path / "my-llama"
    shutil.copytree(tiny_base_dir(), llama)
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", f"model.path={gpt2},{llama}", "dtype.backend=bnb,lab", "train.max_steps=2",
                   "eval.n_generate=1", "train.report_to=none", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [r for r in records_under(sweep).values()]
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)
    for record in records:
        model, config = record["model"], record["config"]["model"]
        folder = gpt2 if "my-gpt2" in model["path"] else llama
        assert model["name"] == config["name"] == folder.name and model["path"] == str(folder)
        checkpoint = json.loads((folder / "config.json").read_text())
        assert model["model_type"] == checkpoint["model_type"]
        assert config["arch"]["num_layers"] == checkpoint.get("n_layer", checkpoint.get("num_hidden_layers"))
        assert record["memory"]["estimate"]["total_mb"] > 0  # from that architecture
        assert record["metrics"]["train_steps"] == 2
        if folder == gpt2:
            assert model["architecture"] == "GPT2LMHeadModel" and config["family"] == "gpt2"
            assert model["quantized_layers"] == 8  # 2 blocks x c_attn, attn.c_proj, c_fc, mlp.c_proj
            assert model["bits_per_param"] == pytest.approx(4.13, abs=0.01)
        else:
            assert model["architecture"] == "LlamaForCausalLM" and model["quantized_layers"] == 28


def test_peft_says_nothing_of_our_registered_layer():
    """peft warns of any layer type it does not know; ours is registered with it (lab backend)."""
    import warnings

    from qlora_lab.config import DTypeConfig, LoraConfig
    from qlora_lab.model.build import build_model
    from hydra import compose, initialize_config_dir

    from qlora_lab.config import run_config
    from qlora_lab.sweep import CONF_DIR

    tiny_base_dir()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = run_config(compose(config_name="config", overrides=["dtype.backend=lab"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        built = build_model(config.model, DTypeConfig(**{**vars(config.dtype), "compute_dtype": "fp32"}),
                            LoraConfig(), seed=0, gradient_checkpointing=False)
    assert built.info.quantized_layers == 28
    assert not [w for w in caught if "Unsupported layer type" in str(w.message)]
