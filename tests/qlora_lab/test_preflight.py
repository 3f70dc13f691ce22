"""The command line is checked before anything runs: one line, exit 2, nothing launched."""

from __future__ import annotations

import pytest

from conftest import run_cli
from qlora_lab.preflight import check_command_line
from qlora_lab.train import CONF_DIR

CASES = [
    (["eval.sampling=beam"], "eval.sampling=beam: expected one of greedy, paper"),
    (["eval.prompts=/no/prompts.jsonl"], "eval.prompts=/no/prompts.jsonl: no such file (or a named set: oasst1, vicuna)"),
    (["eval.prompt_template=hello"], "eval.prompt_template=hello: must contain {prompt}"),
    (["eval.ppl.path=/no/corpus"], "eval.ppl.path=/no/corpus: no such folder"),
    (["eval.mmlu.split=dev"], "eval.mmlu.split=dev: expected one of test, val"),
    (["eval.mmlu.shots=3"], "eval.mmlu.shots=3: expected one of 0, 5"),
    (["eval.mmlu.path=/no/mmlu"], "eval.mmlu.path=/no/mmlu: no such folder (or hub for cais/mmlu, stdlib for the benchmark"),
    (["dtype=nf5"], "dtype=nf5: expected one of bf16, fp32, fp4, fp4_e3m0, int4, int8, nf2, nf3, nf4"),
    (["dtype=int4", "dtype.backend=bnb"], "dtype.backend=bnb: expected one of lab"),
    (["dtype=nf4", "dtype.backend=lab", "dtype.blocksize=48"], "dtype.blocksize=48: backend lab supports 32, 64"),
    (["dtype=nf4", "dtype.codebook={kind: posit}"], "dtype.backend=bnb: a dtype.codebook needs backend lab"),
    (["dtype=nf4", "dtype.backend=lab", "+dtype.codebook={kind: posit}"], "dtype.codebook={'kind': 'posit'}: codebook 'nf4': kind 'posit' is not one of"),
    (["-m", "dtype=nf4,nf5"], "dtype=nf5: expected one of"),
    (["model=llama_9b"], "model=llama_9b: expected one of bloom_1b1, bloom_1b7,"),
    (["lora.modulez=[q_proj]"], "lora.modulez: unknown key; expected one of r, alpha, dropout, targets"),
    (["+lora.modulez=[q_proj]"], "lora.modulez: unknown key; expected one of r, alpha, dropout, targets"),
    (["-m", "lora.r=8,0"], "lora.r=0: expected an integer > 0"),
    (["-m", "lora.targets=all,[q_proj,nope]"], "lora.targets=nope: family llama has"),
    (["train.learning_rate=abc"], "train.learning_rate=abc: expected a number"),
    (["dtype=bf16", "dtype.double_quant=true"], "dtype.double_quant=true: has no effect with dtype=bf16"),
    (["+foo=1"], "foo: unknown top-level key"),
    (["dataset=alpaca", "dataset.path=/no/such.jsonl"], "dataset.path=/no/such.jsonl: no such file"),
    (["-m", "train.seed=1,2", "eval.batch_size=0"], "eval.batch_size=0: expected an integer > 0"),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_command_line_is_named_in_one_line(argv, message):
    said = check_command_line(argv, CONF_DIR)
    assert said is not None and said.startswith(message), said
    assert "\n" not in said


def test_good_sweep_passes():
    argv = ["-m", "dtype=nf4,fp4,bf16", "lora.targets=all,qv,[q_proj,v_proj]", "hydra/launcher=local",
            "hydra.sweep.dir=/tmp/x", "train.max_steps=5"]
    assert check_command_line(argv, CONF_DIR) is None


def test_cli_exits_2_with_one_line_and_runs_nothing(tmp_path):
    proc = run_cli("-m", "dtype=nf4,nf5", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: dtype=nf5: expected one of bf16, fp32, fp4, fp4_e3m0, int4, int8, nf2, nf3, nf4"]
    assert not (tmp_path / "sweep").exists()
