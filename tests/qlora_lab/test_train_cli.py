"""The run end to end through the real command line: real 4-bit training, real records."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from conftest import FIXTURES, records_under, run_cli

RECORD_FIELDS = ["status", "error", "run_id", "overrides", "metrics.train_loss_first", "metrics.train_loss_last",
                 "metrics.eval_loss", "metrics.ppl", "metrics.rougeL", "model.n_params", "model.n_trainable",
                 "model.bits_per_param", "data.fingerprint", "timing.tokens_per_s", "timing.wall_s",
                 "memory.peak_rss_mb"]


def field(record: dict, dotted: str):
    node = record
    for part in dotted.split("."):
        node = node[part]
    return node


def tiny_nf4_dq_bits() -> float:
    """The tiny Llama's quantized layers (4 x [4 attn 256x256, 3 mlp 256x704]) by the paper's sums."""
    sizes = [256 * 256] * 4 + [256 * 704] * 3
    bits = sum(4 * n + 8 * math.ceil(n / 64) + 32 * math.ceil(math.ceil(n / 64) / 256) + 32 for n in sizes)
    return bits / sum(sizes)


def test_demo_sweep_runs_four_ok_records(demo_sweep):
    proc, sweep_dir = demo_sweep
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = records_under(sweep_dir)
    assert len(records) == 4 and all(r["status"] == "ok" for r in records.values())
    for record in records.values():
        for name in RECORD_FIELDS:
            field(record, name)  # every interface field is present
        assert record["error"] is None and record["schema"] == 1
        assert 0 < record["timing"]["train_s"] < record["timing"]["wall_s"]  # times are benchmarks' business
    by_overrides = {" ".join(r["overrides"]): r for r in records.values()}
    assert set(by_overrides) == {f"dtype={d} lora.targets={t} train.max_steps=30" for d in ("nf4", "fp4")
                                 for t in ("all", "qv")}


def test_training_loss_falls_within_30_steps(demo_sweep):
    for record in records_under(demo_sweep[1]).values():
        metrics = record["metrics"]
        assert metrics["train_steps"] == 30
        assert metrics["train_loss_last"] < metrics["train_loss_first"] - 0.1, record["overrides"]


def test_record_reports_real_quantization_and_adapter_sizes(demo_sweep):
    records = {" ".join(r["overrides"]): r for r in records_under(demo_sweep[1]).values()}
    nf4_all = records["dtype=nf4 lora.targets=all train.max_steps=30"]
    nf4_qv = records["dtype=nf4 lora.targets=qv train.max_steps=30"]
    assert nf4_all["model"]["bits_per_param"] == pytest.approx(tiny_nf4_dq_bits(), abs=1e-6)
    assert nf4_all["model"]["n_params"] == nf4_qv["model"]["n_params"]
    # r=64 adapters: all = 4 layers x (4 x (256+256) + 3 x (256+704)) x 64; qv = 4 x 2 x 512 x 64
    assert nf4_all["model"]["n_trainable"] == 4 * (4 * 512 + 3 * 960) * 64
    assert nf4_qv["model"]["n_trainable"] == 4 * 2 * 512 * 64
    assert nf4_all["run_id"] != nf4_qv["run_id"]
    assert nf4_all["data"]["fingerprint"] == nf4_qv["data"]["fingerprint"]
    # every stored bit of the base: linear layers as stored, embeddings, head and norms at the
    # compute dtype (fp32 where bf16 is not native), independent arithmetic from the shapes
    linear = 4 * (4 * 256 * 256 + 3 * 256 * 704)
    width = 16 if nf4_all["config"]["dtype"]["compute_dtype"] == "bf16" else 32
    rest = (2 * 2048 * 256 + (2 * 4 + 1) * 256) * width
    assert nf4_all["model"]["total_bits"] == pytest.approx(linear * tiny_nf4_dq_bits() + rest, rel=1e-9)


def test_summary_prints_one_line_per_run(demo_sweep):
    proc, _ = demo_sweep
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "4 runs: 4 ok, 0 failed"
    header = next(i for i, line in enumerate(lines) if line.startswith("run  status"))
    rows = lines[header + 1 : header + 5]
    assert [row.split()[0] for row in rows] == ["0", "1", "2", "3"]
    assert all(row.split()[1] == "ok" and "dtype=" in row for row in rows)


def test_summary_names_the_sweep_folder_and_the_console_stays_quiet(demo_sweep):
    proc, sweep_dir = demo_sweep
    assert f"sweep folder: {sweep_dir}" in proc.stdout.splitlines()
    console = proc.stdout + proc.stderr
    assert "Failed to load CPU gemm_4bit_forward" not in console  # our kernels/ folder answered bnb's probe
    assert "Run history:" not in console and "Run summary:" not in console  # wandb's block: in the run's files


def test_records_say_what_really_ran_and_are_readable_by_others(demo_sweep):
    """Under umask 022 (pytest's here) a record and the adapter are 0644, not mkstemp's 0600; the
    optimizer is what ran after bitsandbytes' CPU fallback; a later run of an in-process sweep
    counts its start-up from its own start."""
    import os
    import stat

    os.umask(mask := os.umask(0o022))
    records = records_under(demo_sweep[1])
    for name, record in records.items():
        mode = stat.S_IMODE((demo_sweep[1] / name / "record.json").stat().st_mode)
        assert mode == 0o666 & ~mask, oct(mode)
        assert record["env"]["optimizer"] == {"asked": "paged_adamw_32bit", "ran": "bitsandbytes.AdamW",
                                              "paged": False}
        assert isinstance(record["env"]["git_dirty"], bool) or record["env"]["git_dirty"] is None
    timing = [records[str(i)]["timing"] for i in range(4)]
    assert timing[0]["process_to_first_step_s"] > timing[0]["first_step_s"]  # the imports count for the first
    for later in timing[1:]:
        assert later["process_to_first_step_s"] == later["first_step_s"]


def test_each_run_leaves_generations_adapter_and_offline_wandb(demo_sweep):
    for run_dir in (demo_sweep[1] / str(i) for i in range(4)):
        rows = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
        assert len(rows) == 4 and all({"id", "prompt", "reference", "generation"} <= row.keys() for row in rows)
        assert (run_dir / "adapter" / "adapter_config.json").exists()
        assert list((run_dir / "wandb").glob("offline-run-*"))


def test_wandb_runs_make_a_sweep_dashboard(demo_sweep):
    """Read back from each offline run's log with wandb's own records: a short name, the sweep
    folder as group, a job type, the overrides as tags, and every number the record holds at
    the end in the summary under its record name."""
    from wandb_records import offline_run

    names = set()
    for run_dir in (demo_sweep[1] / str(i) for i in range(4)):
        record = json.loads((run_dir / "record.json").read_text())
        run = offline_run(run_dir)
        config = record["config"]
        names.add(run["name"])
        dtype = config["dtype"]["name"].upper() + ("+DQ" if config["dtype"]["double_quant"] else "")
        assert run["name"] == f"{dtype} · {config['lora']['targets']} · r{config['lora']['r']} · seed {config['train']['seed']}"
        assert run["group"] == demo_sweep[1].name and run["job_type"] == "finetune"
        assert set(run["tags"]) == set(record["overrides"]) and not any("/" in tag for tag in run["tags"])
        summary = run["summary"]
        for name in ("eval_loss", "rougeL", "train_loss_last"):
            assert summary[name] == pytest.approx(record["metrics"][name]), name
        assert summary["bits_per_param"] == pytest.approx(record["model"]["bits_per_param"])
        assert summary["peak_rss_mb"] == pytest.approx(record["memory"]["peak_rss_mb"])
        assert summary["status"] == "ok"
    assert len(names) == 4


def test_same_config_and_seed_give_identical_numbers(demo_sweep, tmp_path):
    proc = run_cli("dtype=nf4", "lora.targets=all", "train.max_steps=30", f"hydra.run.dir={tmp_path / 'again'}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads((tmp_path / "again" / "record.json").read_text())
    first = next(r for r in records_under(demo_sweep[1]).values()
                 if r["overrides"][:2] == ["dtype=nf4", "lora.targets=all"])
    assert again["run_id"] == first["run_id"]
    for key in ("train_loss_first", "train_loss_last", "eval_loss", "ppl", "rougeL"):
        assert again["metrics"][key] == first["metrics"][key], key


def load_with_adapter(model_cfg, dtype, adapter: Path):
    """A freshly quantized base with a saved adapter on top, prepared as in training: what a
    user does with a run's `adapter/` folder, through peft's own loading."""
    from peft import PeftConfig, PeftModel

    from qlora_lab.model.build import load_base, load_tokenizer, model_path, prepare_base
    from qlora_lab.model.lab_backend import register_with_peft
    from qlora_lab.model.quantize import to_compute_dtype

    path = model_path(model_cfg)
    base = prepare_base(to_compute_dtype(load_base(path, dtype, model_cfg.kind), dtype), dtype,
                        gradient_checkpointing=False)
    saved = PeftConfig.from_pretrained(str(adapter))
    if dtype.backend == "lab":
        register_with_peft(saved)
    return PeftModel.from_pretrained(base, str(adapter), config=saved), load_tokenizer(path)


def test_saved_adapter_reloads_onto_a_fresh_base_with_the_same_eval_loss(demo_sweep):
    from qlora_lab.config import run_config
    from qlora_lab.data.load import load_splits
    from qlora_lab.data.tokens import encode_pairs
    from qlora_lab.evaluate.loss import heldout_loss
    from qlora_lab.model.quantize import compute_autocast

    run_dir = demo_sweep[1] / "0"
    record = json.loads((run_dir / "record.json").read_text())
    config = run_config(record["config"])
    model, tokenizer = load_with_adapter(config.model, config.dtype, run_dir / "adapter")
    tc = config.train
    examples = encode_pairs(load_splits(config.dataset).eval, tokenizer, tc.source_max_len,
                            tc.target_max_len, tc.train_on_source)
    with compute_autocast(config.dtype.compute_dtype):
        loss, _ = heldout_loss(model, examples, tokenizer.pad_token_id, config.eval.batch_size)
    assert loss == pytest.approx(record["metrics"]["eval_loss"], rel=1e-6)


def test_a_failed_run_leaves_a_failed_record_and_the_sweep_goes_on(tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = (FIXTURES / "datasets" / "alpaca.jsonl").read_text().splitlines()
    bad.write_text("\n".join(lines[:10] + ["{not json"] + lines[10:]) + "\n")
    good = tmp_path / "good.jsonl"
    shutil.copy(FIXTURES / "datasets" / "alpaca.jsonl", good)
    proc = run_cli("-m", "dataset=alpaca", f"dataset.path={bad},{good}", "dataset.n_eval=8", "train.max_steps=3",
                   "eval.n_generate=1", "train.report_to=none", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 1
    records = records_under(tmp_path / "sweep")
    assert records["0"]["status"] == "failed"
    assert records["0"]["error"] == f"DataError: {bad}:11: not valid JSON (Expecting property name enclosed in double quotes)"
    assert (tmp_path / "sweep" / "0" / "traceback.txt").exists()
    assert records["1"]["status"] == "ok" and records["1"]["metrics"]["train_steps"] == 3
    assert f"FAILED {tmp_path / 'sweep' / '0'}: DataError" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "2 runs: 1 ok, 1 failed"


def test_eval_only_run_measures_the_quantized_base(tmp_path):
    proc = run_cli("train.max_steps=0", "dtype=fp4", "eval.n_generate=1", f"hydra.run.dir={tmp_path / 'ptq'}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "ptq" / "record.json").read_text())
    assert record["status"] == "ok" and record["metrics"]["eval_loss"] > 0
    assert "train_loss_first" not in record["metrics"] and not (tmp_path / "ptq" / "adapter").exists()


def test_int8_and_fp32_bases_train_and_report_their_storage(tmp_path):
    proc = run_cli("-m", "dtype=int8,fp32", "train.max_steps=3", "eval.n_generate=0", "train.report_to=none",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = records_under(tmp_path / "sweep")
    assert all(r["status"] == "ok" and r["metrics"]["train_steps"] == 3 for r in records.values())
    # LLM.int8(): int8 codes + one float32 scale per output row (in_features weights each).
    layers = [(256, 256)] * 4 + [(256, 704), (256, 704), (704, 256)]  # (in, out): q k v o, gate up, down
    int8_bits = sum(i * o * 8 + o * 32 for i, o in layers) / sum(i * o for i, o in layers)
    assert records["0"]["model"]["bits_per_param"] == pytest.approx(int8_bits, abs=1e-6)
    assert records["1"]["model"]["bits_per_param"] == 32.0


def test_the_issues_dtype_sweep_runs_int4_on_our_own_kernels(tmp_path):
    proc = run_cli("-m", "dtype=nf4,fp4,int4", "train.max_steps=10", "eval.n_generate=1",
                   "train.report_to=none", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = list(records_under(tmp_path / "sweep").values())
    assert len(records) == 3 and all(r["status"] == "ok" for r in records)
    backends = {r["config"]["dtype"]["name"]: r["config"]["dtype"]["backend"] for r in records}
    assert backends == {"nf4": "bnb", "fp4": "bnb", "int4": "lab"}
    int4 = [r for r in records if r["config"]["dtype"]["name"] == "int4"]
    assert all(r["model"]["bits_per_param"] == pytest.approx(tiny_nf4_dq_bits(), abs=1e-6) for r in int4)
    assert all(r["metrics"]["train_loss_last"] < r["metrics"]["train_loss_first"] for r in int4)


def test_a_paper_dataset_from_a_local_file_trains_end_to_end(tmp_path):
    proc = run_cli("dataset=oasst1", f"dataset.path={FIXTURES / 'datasets' / 'oasst1.jsonl'}", "dataset.n_eval=1",
                   "train.max_steps=2", "eval.n_generate=1", "train.report_to=none",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["status"] == "ok" and record["data"]["name"] == "oasst1"
    assert (record["data"]["n_train"], record["data"]["n_eval"]) == (2, 1)
    assert record["metrics"]["train_steps"] == 2 and record["data"]["fingerprint"].startswith("sha256:")
