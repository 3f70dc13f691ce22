"""Typed config: every bad value is refused in one line naming key, value and what is allowed."""

from __future__ import annotations

import copy

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from qlora_lab.config import ConfigError, run_config
from qlora_lab.sweep import CONF_DIR


@pytest.fixture(scope="module")
def default_tree() -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config")
    return OmegaConf.to_container(cfg, resolve=True)


def test_defaults_are_the_papers_recipe(default_tree):
    config = run_config(default_tree)
    assert (config.lora.r, config.lora.alpha, config.lora.dropout, config.lora.targets) == (64, 16.0, 0.1, "all")
    assert (config.dtype.name, config.dtype.double_quant, config.dtype.blocksize) == ("nf4", True, 64)
    assert config.train.learning_rate == 2e-4 and config.train.max_grad_norm == 0.3
    assert config.train.optimizer == "paged_adamw_32bit" and config.train.warmup_ratio == 0.03


BAD = [
    (("lora", "r"), 0, "lora.r=0: expected an integer > 0"),
    (("lora", "alpha"), -1, "lora.alpha=-1.0: expected a number > 0"),
    (("lora", "dropout"), 1.5, "lora.dropout=1.5: expected a number in [0, 1)"),
    (("lora", "targets"), "everything", "lora.targets=everything: expected one of attn, mlp, qv, all"),
    (("lora", "targets"), ["q_proj", "wq"], "lora.targets=wq: family llama has q_proj"),
    (("dtype", "name"), "nf5", "dtype=nf5: expected one of"),
    (("dtype", "blocksize"), 128, "dtype.blocksize=128: backend bnb supports 64"),
    (("dtype", "double_quant"), "yes", "dtype.double_quant=yes: expected true or false"),
    (("dtype", "compute_dtype"), "int3", "dtype.compute_dtype=int3: expected one of auto, bf16, fp16, fp32"),
    (("train", "max_steps"), -5, "train.max_steps=-5: expected an integer >= 0"),
    (("train", "learning_rate"), "fast", "train.learning_rate=fast: expected a number"),
    (("train", "optimizer"), "sgd", "train.optimizer=sgd: expected one of paged_adamw_32bit"),
    (("train", "warmup_ratio"), 1.0, "train.warmup_ratio=1.0: expected a number in [0, 1)"),
    (("eval", "n_generate"), -1, "eval.n_generate=-1: expected an integer >= 0"),
    (("model", "family"), "gpt5", "model.family=gpt5: expected one of bloom, gpt2, gpt_neox, llama, opt"),
    (("dataset", "path"), "/no/such/file.jsonl", "dataset.path=/no/such/file.jsonl: no such file"),
    (("lora", "modulez"), ["q_proj"], "lora.modulez: unknown key; expected one of r, alpha, dropout, targets"),
    (("train", "warmup_ratoi"), 0.1, "train.warmup_ratoi: unknown key"),
    (("eval", "fidelity_reference"), "/no/such/original",
     "eval.fidelity_reference=/no/such/original: is what eval.fidelity=true compares with; set that too"),
]


@pytest.mark.parametrize("path,value,message", BAD, ids=[".".join(b[0]) + "=" + str(b[1]) for b in BAD])
def test_bad_value_is_one_line_naming_key_value_and_allowed(default_tree, path, value, message):
    tree = copy.deepcopy(default_tree)
    tree[path[0]][path[1]] = value
    with pytest.raises(ConfigError) as err:
        run_config(tree)
    said = str(err.value)
    assert said.startswith(message), said
    assert "\n" not in said


def test_unquantized_dtype_refuses_quantization_settings(default_tree):
    tree = copy.deepcopy(default_tree)
    tree["dtype"] = {"name": "bf16", "backend": "none", "double_quant": True, "blocksize": None,
                     "compute_dtype": "bf16"}
    with pytest.raises(ConfigError, match="dtype.double_quant=true: has no effect with dtype=bf16"):
        run_config(tree)


def test_int4_and_friends_run_on_the_lab_backend_only(default_tree):
    for name in ("int4", "nf3", "nf2", "fp4_e3m0"):
        tree = copy.deepcopy(default_tree)
        tree["dtype"].update(name=name, backend="lab")
        assert run_config(tree).dtype.name == name
        tree["dtype"]["backend"] = "bnb"
        with pytest.raises(ConfigError, match=rf"^dtype.backend=bnb: expected one of lab"):
            run_config(tree)


def test_a_codebook_of_your_own_is_config(default_tree):
    tree = copy.deepcopy(default_tree)
    tree["dtype"].update(name="nf3_tight", backend="lab", codebook={"kind": "normal_float", "bits": 3, "offset": 0.9})
    assert run_config(tree).dtype.codebook["bits"] == 3


def test_explicit_target_list_is_accepted(default_tree):
    tree = copy.deepcopy(default_tree)
    tree["lora"]["targets"] = ["q_proj", "v_proj"]
    assert run_config(tree).lora.targets == ["q_proj", "v_proj"]


@pytest.mark.parametrize("group", ["model", "dataset", "dtype", "lora", "train", "eval"])
def test_group_yaml_files_hold_only_what_differs_from_the_dataclass_defaults(group):
    """One source of truth: each group's dataclass is its Hydra schema (`/schema/<group>`), and its
    YAML files start from it and write only the values that differ."""
    import dataclasses

    import yaml

    from qlora_lab.config import GROUPS

    defaults = dataclasses.asdict(GROUPS[group]())
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        loaded = yaml.safe_load(path.read_text())
        assert loaded.pop("defaults") == [f"/schema/{group}@_here_", "_self_"], path
        same = [key for key, value in loaded.items() if key in defaults and value == defaults[key]]
        assert not same, f"{path.name} repeats the defaults of {', '.join(same)}"


def test_a_fidelity_reference_must_be_a_checkpoint_folder(default_tree, tmp_path):
    tree = copy.deepcopy(default_tree)
    tree["eval"].update(fidelity=True, fidelity_reference=str(tmp_path))
    with pytest.raises(ConfigError, match=r"no checkpoint folder there \(expected a 16-bit transformers folder"):
        run_config(tree)
    (tmp_path / "config.json").write_text("{}")
    assert run_config(tree).eval.fidelity_reference == str(tmp_path)
