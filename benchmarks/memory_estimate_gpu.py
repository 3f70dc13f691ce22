"""The planner's memory estimate against the measured training peak on larger models (a GPU
benchmark; the tests hold the estimate within 25% on the tiny models on the CPU).

Each size is a Llama shape built locally from its config (random weights, `pretrain.steps=0`;
nothing downloaded), quantized to NF4 with double quantization and trained for a few QLoRA
steps by the ordinary run command, with and without gradient checkpointing. The record holds
both numbers: `memory.peak_tensor_mb` (CUDA's peak allocation on a GPU, torch's tensor
allocations on the CPU) and `memory.estimate.total_mb`.

    python benchmarks/memory_estimate_gpu.py                      # on a GPU: every size below
    python benchmarks/memory_estimate_gpu.py --sizes 20m --steps 2   # a check that runs on the CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

# name -> (hidden_size, intermediate_size, num_layers, num_heads): Llama / OPT-like shapes.
SIZES = {
    "20m": (384, 1024, 6, 6),
    "125m": (768, 2048, 12, 12),
    "350m": (1024, 2816, 24, 16),
    "1.3b": (2048, 5504, 24, 16),
    "2.7b": (2560, 6912, 32, 20),
    "6.7b": (4096, 11008, 32, 32),
}


def measure(size: str, checkpointing: bool, steps: int, vocab: int, out: Path) -> dict:
    hidden, inter, layers, heads = SIZES[size]
    run_dir = out / f"{size}-{'gc' if checkpointing else 'nogc'}"
    overrides = ["model=tiny", f"model.name=llama_shape_{size}", f"model.arch.vocab_size={vocab}",
                 f"model.arch.hidden_size={hidden}", f"model.arch.intermediate_size={inter}",
                 f"model.arch.num_layers={layers}", f"model.arch.num_heads={heads}", "model.pretrain.steps=0",
                 "dtype=nf4", "lora.targets=all", f"train.max_steps={steps}", "train.report_to=none",
                 f"train.gradient_checkpointing={checkpointing}", "eval.n_generate=0", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run([sys.executable, "-m", "qlora_lab.train", *overrides], capture_output=True, text=True)
    record = json.loads((run_dir / "record.json").read_text())
    if record["status"] != "ok":
        raise SystemExit(f"{size}: the run failed: {record['error']}\n{proc.stderr[-2000:]}")
    measured, estimate = record["memory"]["peak_tensor_mb"], record["memory"]["estimate"]["total_mb"]
    return {"size": size, "gradient_checkpointing": checkpointing, "device": record["env"]["device"],
            "n_params": record["model"]["n_params"], "measured_mb": measured, "estimate_mb": round(estimate, 1),
            "error": round(estimate / measured - 1, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=[s for s in SIZES if s != "20m"], choices=list(SIZES))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--vocab", type=int, default=2048, help="the locally trained tokenizer's size")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for checkpointing in (True, False):
                rows.append(measure(size, checkpointing, args.steps, args.vocab, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    print("| size | params | gradient checkpointing | measured peak | estimate | error |")
    print("|---|---:|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['size']} ({row['device']}) | {row['n_params'] / 1e6:.0f}M | {row['gradient_checkpointing']} | "
              f"{row['measured_mb']:.0f} MB | {row['estimate_mb']:.0f} MB | {row['error']:+.1%} |")


if __name__ == "__main__":
    main()
