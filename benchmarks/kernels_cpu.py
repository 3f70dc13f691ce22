"""qlora_kernels on the CPU against bitsandbytes' CPU backend, side by side in one run:

    python benchmarks/kernels_cpu.py [--size 4096] [--repeats 7]

- dequantize of a size x size NF4 matrix (fp32 and bf16 out) and quantize of it: our compiled
  codec, our plain-torch codec (the reference, and the fallback without a C compiler) and
  bitsandbytes;
- bandwidth (bytes read + written per second) of our fp32 dequantize against a memory copy,
  into a preallocated output and into a fresh one (what `dequantize(state)` returns: a fresh
  67 MB tensor is page-faulted in on first write);
- the same codec table again in a child process with torch's transparent-huge-page switch
  (THP_MEM_ALLOC_ENABLE=1), which both libraries' fresh outputs then get;
- peak memory of a QLoRA run (tiny model, 5 steps) with dtype.backend=lab vs bnb: its training
  steps' peak of tensor allocations (the record's peak_tensor_mb) and the whole run's peak RSS.
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


def codec_rows(size: int, repeats: int) -> list[tuple[str, float, float, float]]:
    """(measure, compiled ms, plain torch ms, bitsandbytes ms)."""
    import bitsandbytes.functional as bnbf

    from qlora_kernels import dequantize, native, quantize

    if not native.available():
        sys.exit("the compiled codec could not be built here (see the warning above)")

    def ours(fn) -> tuple[float, float]:
        compiled = best_ms(fn, repeats)
        with native.enabled(False):
            return compiled, best_ms(fn, repeats)

    weight = torch.randn(size, size)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        w = weight.to(dtype)
        state = quantize(w, "nf4", blocksize=64)
        packed, their_state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
        rows.append((f"dequantize nf4 -> {str(dtype)[6:]} (ms)", *ours(lambda: dequantize(state)),
                     best_ms(lambda: bnbf.dequantize_4bit(packed, their_state), repeats)))
    few = max(2, repeats // 2)
    compiled = best_ms(lambda: quantize(weight, "nf4", blocksize=64), few)
    with native.enabled(False):
        plain = best_ms(lambda: quantize(weight, "nf4", blocksize=64), few)
    rows.append(("quantize nf4 (ms)", compiled, plain,
                 best_ms(lambda: bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4"), few)))
    return rows


def bandwidth(size: int, repeats: int) -> dict[str, tuple[float, float]]:
    """{output: (GB/s of our fp32 dequantize, GB/s of a memory copy)}, bytes read + written."""
    from qlora_kernels import dequantize, quantize

    state = quantize(torch.randn(size, size), "nf4", blocksize=64)
    out, src = torch.empty(size, size), torch.randn(size, size)
    moved_dequant = state.packed.numel() + state.absmax.numel() * 4 + out.numel() * 4
    moved_copy = 2 * out.numel() * 4
    times = {"preallocated": (best_ms(lambda: dequantize(state, out=out), repeats),
                              best_ms(lambda: out.copy_(src), repeats)),
             "fresh": (best_ms(lambda: dequantize(state), repeats), best_ms(lambda: src.clone(), repeats))}
    return {name: (moved_dequant / ours / 1e6, moved_copy / copy / 1e6) for name, (ours, copy) in times.items()}


def print_codec(size: int, repeats: int) -> None:
    print(f"{'measure':<32}{'compiled':>10}{'plain torch':>13}{'bitsandbytes':>14}{'compiled vs bnb':>17}")
    for label, compiled, plain, theirs in codec_rows(size, repeats):
        print(f"{label:<32}{compiled:>10.1f}{plain:>13.1f}{theirs:>14.1f}{theirs / compiled:>16.2f}x")
    for output, (ours_gbs, copy_gbs) in bandwidth(size, repeats).items():
        print(f"fp32 dequantize into a {output} output: {ours_gbs:.1f} GB/s vs memory copy {copy_gbs:.1f} GB/s: "
              f"{ours_gbs / copy_gbs:.2f} of copy")


def peak_memory(backend: str, work: Path) -> tuple[float, float]:
    """(peak of tensor allocations over the training steps, peak RSS of the whole run) in MB."""
    run_dir = work / backend
    subprocess.run([sys.executable, "-m", "qlora_lab.train", "dtype=nf4", f"dtype.backend={backend}",
                    "train.max_steps=5", "train.report_to=none", "train.save_steps=0", "eval.n_generate=0", "train.cpu_tensor_peak=true",
                    f"hydra.run.dir={run_dir}"], check=True, capture_output=True, text=True)
    memory = json.loads((run_dir / "record.json").read_text())["memory"]
    return memory["peak_tensor_mb"], memory["peak_rss_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--codec-only", action="store_true", help="the codec table alone (the THP child)")
    args = parser.parse_args()
    if args.codec_only:
        print_codec(args.size, args.repeats)
        return
    print(f"torch threads: {torch.get_num_threads()}, matrix {args.size}x{args.size}\n")
    print_codec(args.size, args.repeats)
    print("\nwith THP_MEM_ALLOC_ENABLE=1 (torch's CPU allocator asks for transparent huge pages):")
    sys.stdout.flush()
    subprocess.run([sys.executable, __file__, "--codec-only", "--size", str(args.size), "--repeats", str(args.repeats)],
                   env={**os.environ, "THP_MEM_ALLOC_ENABLE": "1"}, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        lab = [peak_memory("lab", Path(tmp) / f"a{i}") for i in range(2)]
        bnb = [peak_memory("bnb", Path(tmp) / f"b{i}") for i in range(2)]
    print("\na 5-step tiny QLoRA run (nf4 + DQ, LoRA on all layers), lowest of 2 runs each:")
    for label, index in (("peak of tensor allocations over the training steps", 0), ("peak RSS of the whole run", 1)):
        ours, theirs = min(m[index] for m in lab), min(m[index] for m in bnb)
        print(f"  {label}: lab {ours:.1f} MB, bnb {theirs:.1f} MB ({ours / theirs:.2f}x)")


if __name__ == "__main__":
    main()
