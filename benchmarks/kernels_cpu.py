"""qlora_kernels on the CPU against bitsandbytes' CPU backend, side by side in one run:

    python benchmarks/kernels_cpu.py [--size 4096] [--repeats 7]

- dequantize of a size x size NF4 matrix (fp32 and bf16 out), and its bandwidth against a
  plain memory copy of the same output (bytes read + written per second);
- quantize of the same matrix;
- peak RSS of a whole QLoRA run (tiny model, 5 steps) with dtype.backend=lab vs bnb.
Times are the best of `repeats` after a warm-up call.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def best_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def codec_rows(size: int, repeats: int) -> list[tuple[str, float, float]]:
    import bitsandbytes.functional as bnbf

    from qlora_kernels import dequantize, quantize

    weight = torch.randn(size, size)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        w = weight.to(dtype)
        ours = quantize(w, "nf4", blocksize=64)
        packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
        rows.append((f"dequantize nf4 -> {str(dtype)[6:]} (ms)", best_ms(lambda: dequantize(ours), repeats),
                     best_ms(lambda: bnbf.dequantize_4bit(packed, state), repeats)))
    rows.append(("quantize nf4 (ms)", best_ms(lambda: quantize(weight, "nf4", blocksize=64), max(2, repeats // 2)),
                 best_ms(lambda: bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4"), max(2, repeats // 2))))
    return rows


def bandwidth(size: int, repeats: int) -> tuple[float, float]:
    """(GB/s of our fp32 dequantize, GB/s of a memory copy of its output), bytes read + written."""
    from qlora_kernels import dequantize, quantize

    state = quantize(torch.randn(size, size), "nf4", blocksize=64)
    out = torch.empty(size, size)
    src = torch.randn(size, size)
    copy_ms = best_ms(lambda: out.copy_(src), repeats)
    deq_ms = best_ms(lambda: dequantize(state), repeats)
    moved_dequant = state.packed.numel() + state.absmax.numel() * 4 + out.numel() * 4
    return moved_dequant / deq_ms / 1e6, 2 * out.numel() * 4 / copy_ms / 1e6


def peak_rss(backend: str, work: Path) -> float:
    run_dir = work / backend
    subprocess.run([sys.executable, "-m", "qlora_lab.train", "dtype=nf4", f"dtype.backend={backend}",
                    "train.max_steps=5", "train.report_to=none", "train.save_steps=0", "eval.n_generate=0",
                    f"hydra.run.dir={run_dir}"], check=True, capture_output=True, text=True)
    return json.loads((run_dir / "record.json").read_text())["memory"]["peak_rss_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}, matrix {args.size}x{args.size}\n")
    print(f"{'measure':<30}{'qlora_kernels':>15}{'bitsandbytes':>14}{'speed ratio':>13}")
    for label, ours, theirs in codec_rows(args.size, args.repeats):
        print(f"{label:<30}{ours:>15.1f}{theirs:>14.1f}{theirs / ours:>13.2f}")
    ours_gbs, copy_gbs = bandwidth(args.size, args.repeats)
    print(f"\nfp32 dequantize {ours_gbs:.1f} GB/s vs memory copy {copy_gbs:.1f} GB/s: {ours_gbs / copy_gbs:.2f} of copy")
    with tempfile.TemporaryDirectory() as tmp:
        lab = [peak_rss("lab", Path(tmp) / f"a{i}") for i in range(2)]
        bnb = [peak_rss("bnb", Path(tmp) / f"b{i}") for i in range(2)]
    print(f"peak RSS of a 5-step tiny QLoRA run: lab {min(lab):.0f} MB, bnb {min(bnb):.0f} MB "
          f"({min(lab) / min(bnb):.2f}x)")


if __name__ == "__main__":
    main()
