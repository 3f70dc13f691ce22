"""The command line is checked before anything runs: one line, exit 2, nothing launched."""

from __future__ import annotations

import pytest

from conftest import run_cli
from qlora_lab.sweep.preflight import check_command_line
from qlora_lab.sweep import CONF_DIR

CASES = [
    (["eval.sampling=beam"], "eval.sampling=beam: expected one of greedy, paper"),
    (["eval.prompts=/no/prompts.jsonl"], "eval.prompts=/no/prompts.jsonl: no such file (or a named set: oasst1, vicuna)"),
    (["eval.prompt_template=hello"], "eval.prompt_template=hello: must contain {prompt}"),
    (["eval.ppl.path=/no/corpus"], "eval.ppl.path=/no/corpus: no such folder"),
    (["eval.mmlu.split=dev"], "eval.mmlu.split=dev: expected one of test, val"),
    (["eval.mmlu.shots=3"], "eval.mmlu.shots=3: expected one of 0, 5"),
    (["eval.mmlu.path=/no/mmlu"], "eval.mmlu.path=/no/mmlu: no such folder (or hub for cais/mmlu, stdlib for the benchmark"),
    (["dtype=nf5"], "dtype=nf5: expected one of bf16, e2m1, fp32, fp4, fp4_e3m0, hqq4, int4, int4_affine, int8, mxfp4, nf2, nf3, nf4, nvfp4, q4_0, q4_k, q8_0"),
    (["dtype=int4", "dtype.backend=bnb"], "dtype.backend=bnb: expected one of lab"),
    (["dtype=nf4", "dtype.backend=lab", "dtype.blocksize=48"], "dtype.blocksize=48: backend lab supports 16, 32, 64"),
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
        "error: dtype=nf5: expected one of bf16, e2m1, fp32, fp4, fp4_e3m0, hqq4, int4, int4_affine, int8, mxfp4, nf2, nf3, nf4, nvfp4, q4_0, q4_k, q8_0"]
    assert not (tmp_path / "sweep").exists()


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody may write: a read-only tmpfs mounted there as root (root passes every
    permission check), a folder without write bits otherwise."""
    import os
    import subprocess

    folder = tmp_path / "readonly"
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                                                   capture_output=True).returncode == 0
    if os.geteuid() == 0 and not mounted:
        pytest.skip("running as root without the right to mount a read-only tmpfs: no folder root cannot write")
    if not mounted:
        folder.chmod(0o555)
    yield folder
    if mounted:
        subprocess.run(["umount", str(folder)], check=False)
    else:
        folder.chmod(0o755)


@pytest.mark.parametrize("how", ["run", "multirun", "cwd"])
def test_an_output_folder_that_cannot_be_written_is_one_line_before_anything_runs(read_only_folder, how):
    args = {"run": [f"hydra.run.dir={read_only_folder / 'out'}"],
            "multirun": ["-m", "dtype=nf4,fp4", f"hydra.sweep.dir={read_only_folder / 'sweep'}"],
            "cwd": []}[how]  # the default outputs/DATE/TIME under a read-only working folder
    proc = run_cli(*args, cwd=read_only_folder, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write in" in lines[0] and str(read_only_folder) in lines[0], lines
    assert ("hydra.sweep.dir=" if how == "multirun" else "hydra.run.dir=") in lines[0]
