"""The paper's studies as sweep files: every run of every study composes into a valid config
(planned, never loaded), their total is the paper's 1,000+ models, a bad study is named with
its file, and micro-scale versions of three studies run for real and give their tables."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import FIXTURES, REPO, records_under, run_cli
from qlora_lab.sweep.files import SWEEPS_DIR, paper_studies

STUDIES = {"ptq_perplexity", "sni_t5", "glue_roberta", "mmlu_dtypes", "datasets", "lora_targets", "zero_shot_bits",
           "guanaco", "hparam_search"}


def declared_runs(name: str) -> int:
    """The product of the study file's axes, counted from the file itself."""
    params = OmegaConf.load(SWEEPS_DIR / f"{name}.yaml").hydra.sweeper.params
    return math.prod(len(str(values).split(",")) for values in params.values())


def test_the_plan_over_every_study_resolves_each_run_and_totals_the_papers_thousand_models():
    proc = subprocess.run([sys.executable, "-m", "qlora_lab.plan", "--studies"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]  # plan composes and validates every run of every file
    lines = proc.stdout.strip().splitlines()
    per_study = {line.split()[0]: (int(line.split()[1]), float(line.split()[3])) for line in lines[:-1]}
    assert set(per_study) == STUDIES == set(paper_studies())
    for name, (runs, gpu_hours) in per_study.items():
        assert runs == declared_runs(name), name
        assert gpu_hours > 0, name
    total_runs = sum(runs for runs, _ in per_study.values())
    assert total_runs >= 1000
    assert lines[-1] == f"{total_runs} runs, {sum(h for _, h in per_study.values()):.1f} GPU-hours"
    assert "will not fit" not in proc.stdout  # each job asks for GPUs enough for its estimate


def test_the_fast_composition_is_hydras_for_runs_of_every_study():
    """plan --studies composes through shared_config_files() and CachedComposer (parsed files and
    group compositions reused, plain values set on a copy): every sampled run's RunConfig is the
    one Hydra's own compose gives."""
    import random

    from hydra import compose, initialize_config_dir

    from qlora_lab.config import run_config
    from qlora_lab.sweep import CONF_DIR
    from qlora_lab.sweep.compose import CachedComposer, shared_config_files, sweep_grid
    from qlora_lab.sweep.files import register_sweep_files

    register_sweep_files()
    rng = random.Random(0)
    checked = 0
    for name in sorted(STUDIES):
        grid = sweep_grid([f"+sweep={name}"], CONF_DIR)
        sample = rng.sample(grid, min(4, len(grid)))
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            own = [run_config(compose(config_name="config", overrides=run)).to_dict() for run in sample]
            with shared_config_files():
                composer = CachedComposer(CONF_DIR, compose)
                fast = [run_config(composer(run)).to_dict() for run in grid[:2] + sample]
        assert fast[2:] == own, name
        checked += len(own)
    assert checked >= 30


def test_per_size_settings_resolve_as_the_paper_set_them():
    from hydra import compose, initialize_config_dir

    from qlora_lab.config import run_config
    from qlora_lab.sweep.files import register_sweep_files
    from qlora_lab.sweep import CONF_DIR

    register_sweep_files()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        small = run_config(compose(config_name="config", overrides=["+sweep=guanaco", "model=llama_13b"]))
        large = run_config(compose(config_name="config", overrides=["+sweep=guanaco", "model=llama_33b"]))
        ptq = run_config(compose(config_name="config", overrides=["+sweep=ptq_perplexity", "dtype=fp4_e3m0"]))
    assert (small.train.learning_rate, small.lora.dropout) == (2e-4, 0.1)
    assert (large.train.learning_rate, large.lora.dropout) == (1e-4, 0.05)
    assert (large.train.batch_size * large.train.grad_accum_steps, large.train.max_steps) == (16, 1875)
    assert (large.train.source_max_len, large.train.target_max_len, large.lora.r, large.lora.alpha) == (16, 512, 64, 16)
    assert ptq.dtype.double_quant is False and ptq.dtype.backend == "lab" and ptq.train.max_steps == 0


BAD_STUDIES = [  # (what the file says, what is wrong with it)
    ("      model: llama_7b,llama_9b", "model=llama_9b: expected one of bloom_1b1"),
    ("      dataset: alpaca,alpaca_gpt5", "dataset=alpaca_gpt5: expected one of alpaca, alpaca_clean"),
    ("      dtype: nf4,nf5", "dtype=nf5: expected one of bf16, e2m1, fp32, fp4"),
]


@pytest.mark.parametrize("axis,message", BAD_STUDIES, ids=[b[1].split(":")[0] for b in BAD_STUDIES])
def test_a_study_naming_what_does_not_exist_fails_at_plan_time_with_file_key_and_allowed(tmp_path, axis, message):
    from qlora_lab.sweep.preflight import check_command_line
    from qlora_lab.sweep.files import register_sweep_files
    from qlora_lab.sweep import CONF_DIR

    (tmp_path / "zz_bad_study.yaml").write_text(f"# @package _global_\nhydra:\n  sweeper:\n    params:\n{axis}\n")
    register_sweep_files(tmp_path)
    said = check_command_line(["+sweep=zz_bad_study"], CONF_DIR)
    assert said is not None and said.startswith(f"sweeps/zz_bad_study.yaml: {message}"), said


def analysed(sweep_dir, tmp_path) -> str:
    """`python -m qlora_analysis DIR` with no further arguments; the report's text."""
    proc = subprocess.run([sys.executable, "-m", "qlora_analysis", str(sweep_dir)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return (sweep_dir / "report" / "report.md").read_text()


def test_micro_ptq_perplexity_study_runs_and_gives_table_2(tmp_path):
    proc = run_cli("-m", "+sweep=ptq_perplexity", "model=tiny", "eval.ppl.hub_id=null",
                   f"eval.ppl.path={FIXTURES / 'corpus'}", "eval.ppl.seq_len=256",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = records_under(tmp_path / "sweep")
    assert sorted(r["config"]["dtype"]["name"] for r in records.values()) == ["fp4", "fp4_e3m0", "int4", "nf4"]
    assert all(r["status"] == "ok" and r["metrics"]["ppl_on"] == "corpus" for r in records.values())
    report = analysed(tmp_path / "sweep", tmp_path)
    assert "Table 2: post-training quantization perplexity" in report
    for label in ("Int4", "FP4", "FP4-E3M0", "NF4+DQ"):
        assert f"| {label} " in report or f" {label} |" in report, label
    table = (tmp_path / "sweep" / "report" / "tables" / "ptq_perplexity.csv").read_text()
    assert "tiny" in table


def test_micro_glue_roberta_study_runs_full_and_quantized_and_gives_table_3(tmp_path):
    proc = run_cli("-m", "+sweep=glue_roberta", "model=tiny_roberta", "dataset.task=sst2",
                   f"dataset.path={FIXTURES / 'datasets' / 'glue_sst2.jsonl'}", "dataset.n_eval=16",
                   "+variant=bf16_full,qlora_nf4_dq", "train.seed=0", "train.max_steps=4", "train.batch_size=4",
                   "train.report_to=none", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = records_under(tmp_path / "sweep")
    assert len(records) == 2 and all(r["status"] == "ok" for r in records.values())
    assert {r["config"]["lora"]["enabled"] for r in records.values()} == {True, False}
    report = analysed(tmp_path / "sweep", tmp_path)
    assert "Table 3: RougeL (seq2seq) and accuracy (classifier)" in report
    assert "BF16 full" in report and "NF4+DQ" in report
    runs = (tmp_path / "sweep" / "report" / "runs.csv").read_text()
    assert "variant" in runs.splitlines()[0] and "bf16_full" in runs


def test_micro_sni_t5_study_runs_and_scores_rouge(tmp_path):
    proc = run_cli("-m", "+sweep=sni_t5", "model=tiny_t5", f"dataset.path={FIXTURES / 'datasets' / 'super_natural.jsonl'}",
                   "dataset.n_eval=1", "+variant=qlora_fp4,qlora_nf4_dq", "train.seed=0", "train.max_steps=3",
                   "train.batch_size=2", "eval.n_generate=1", "eval.max_new_tokens=4", "train.report_to=none",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = records_under(tmp_path / "sweep")
    assert len(records) == 2 and all(r["status"] == "ok" and "rougeL" in r["metrics"] for r in records.values())
    assert {r["config"]["model"]["kind"] for r in records.values()} == {"seq2seq"}
    report = analysed(tmp_path / "sweep", tmp_path)
    assert "seq2seq (rougeL)" in report
    assert json.loads((tmp_path / "sweep" / "0" / "record.json").read_text())["config"]["train"]["learning_rate"] == 3e-4
