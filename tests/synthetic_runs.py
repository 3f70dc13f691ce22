"""Run records in the real schema (qlora_lab.records.Record), written where a sweep would
write them, for the analysis tests and benchmark: the analysis reads nothing else."""

from __future__ import annotations

import json
from pathlib import Path

from qlora_lab.records import Record, run_id, write_record

DEFAULT_CONFIG = {
    "model": {"name": "tiny", "source": "build"},
    "dataset": {"name": "stdlib"},
    "dtype": {"name": "nf4", "backend": "bnb", "double_quant": True, "blocksize": 64, "compute_dtype": "fp32"},
    "lora": {"r": 64, "alpha": 16.0, "dropout": 0.1, "targets": "all"},
    "train": {"max_steps": 30, "seed": 0, "learning_rate": 2e-4},
    "eval": {"loss": True},
}


def write_run(run_dir: Path, overrides: dict, metrics: dict, status: str = "ok", n_params: int = 4_000_000,
              bits: float = 4.127, schema: int | None = None, peak_mb: float = 100.0, train_s: float = 10.0,
              rehearsal: bool = False) -> Record:
    """One run folder: `overrides` are config paths (dtype -> dtype.name) and become both the
    record's overrides and its config."""
    config = json.loads(json.dumps(DEFAULT_CONFIG))
    for key, value in overrides.items():
        path = key.split(".")
        if len(path) == 1:
            config[key]["name"] = value
        else:
            config[path[0]][path[1]] = value
    record = Record(run_id=run_id(config), status=status, config=config,
                    overrides=[f"{k}={v}" for k, v in overrides.items()], metrics=metrics,
                    model={"n_params": n_params, "bits_per_param": bits, "total_bits": int(n_params * bits)}, timing={"train_s": train_s},
                    memory={"peak_tensor_mb": peak_mb}, error=None if status == "ok" else "ValueError: boom",
                    rehearsal=rehearsal)
    if schema is not None:
        record.schema = schema
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".launches").write_text(" started\n")
    write_record(run_dir, record)
    return record


def write_judgments(sweep_dir: Path, rows: list[dict]) -> Path:
    path = sweep_dir / "judgments.jsonl"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt_id": str(i), "judge": "reference", **row}) + "\n"
                            for i, row in enumerate(rows)))
    return path
