"""qlora_kernels on the CPU against bitsandbytes' CPU backend, side by side in one run:

    python benchmarks/kernels_cpu.py [--size 4096] [--repeats 7]

- dequantize of a size x size NF4 matrix into a fresh output (fp32 and bf16), on each of our
  compiled decode paths this CPU runs (AVX-512, AVX2, portable C), our plain-torch codec (the
  reference, and the fallback without a C compiler) and bitsandbytes, on equal terms first:
  - huge pages on neither: our advice of transparent huge pages for fresh outputs turned off
    (bitsandbytes' outputs get none), in this process;
  - huge pages on both: a child process with torch's transparent-huge-page switch
    (THP_MEM_ALLOC_ENABLE=1), which both libraries' fresh outputs then get;
  then the default mode beside them: ours advised onto huge pages, theirs not;
- bandwidth (bytes read + written per second) of our fp32 dequantize into a preallocated output,
  per path, against a memory copy;
- quantize: compiled, plain torch, bitsandbytes;
- the 4-bit formats of 2026 (MXFP4, NVFP4, Q4_0, Q4_K, HQQ) beside NF4 + DQ: quantize time, and
  each compiled path's fp32 decode into a preallocated output (as a fraction of copy bandwidth)
  and into a fresh one (against `fill`); `--formats-only` runs this table alone;
- peak memory of a QLoRA run (tiny model, 5 steps) with dtype.backend=lab vs bnb: its training
  steps' peak of tensor allocations (the record's peak_tensor_mb) and the whole run's peak RSS.
Times are the best of `repeats` after a warm-up call. The CPU's model and vector flags head the output.
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
DTYPES = (torch.float32, torch.bfloat16)


def best_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def cpu_line() -> str:
    model, flags = "?", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    vector = sorted(f for f in flags if f.startswith(("avx", "amx")))
    return f"CPU: {model}; {' '.join(vector)}"


def _check_native():
    from qlora_kernels import native

    if not native.available():
        sys.exit("the compiled codec could not be built here (see the warning above)")
    return native


def dequant_times(size: int, repeats: int, advise: bool, rounds: int = 3) -> dict:
    """{(output dtype, implementation): ms} for a fresh output; implementations: each compiled
    path, `torch` (plain torch), `bnb`, and `fill` (torch.empty(...).fill_: what writing a fresh
    output of that size costs at all, the floor). Each is timed `rounds` times in a rotating
    order (the allocator reuses freed memory differently by order) and the best is kept."""
    import bitsandbytes.functional as bnbf

    from qlora_kernels import dequantize, quantize

    native = _check_native()
    weight, times = torch.randn(size, size), {}
    for dtype in DTYPES:
        w = weight.to(dtype)
        state = quantize(w, "nf4", blocksize=64)
        packed, their_state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")

        def ours(path):
            def call():
                with native.decode_path(path):
                    return dequantize(state)
            return call

        def plain():
            with native.enabled(False):
                return dequantize(state)

        calls = {**{path: ours(path) for path in native.decode_paths()}, "torch": plain,
                 "bnb": lambda: bnbf.dequantize_4bit(packed, their_state),
                 "fill": lambda: torch.empty(size * size, dtype=dtype).fill_(1.0)}
        names = list(calls)
        with native.huge_pages(advise):
            for round_ in range(rounds):
                for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                    ms = best_ms(calls[name], repeats)
                    times[(dtype, name)] = min(ms, times.get((dtype, name), ms))
    return times


def print_dequant(title: str, times: dict) -> None:
    native = _check_native()
    paths = native.decode_paths()
    best = paths[0]
    print(f"{title}\n{'output':<10}" + "".join(f"{p:>10}" for p in paths) + f"{'torch':>10}{'bnb':>10}{'fill':>10}"
          + f"{best + ' vs bnb':>16}")
    for dtype in DTYPES:
        row = [times[(dtype, p)] for p in paths] + [times[(dtype, k)] for k in ("torch", "bnb", "fill")]
        ratio = times[(dtype, "bnb")] / times[(dtype, best)]
        print(f"{str(dtype)[6:]:<10}" + "".join(f"{t:>10.2f}" for t in row) + f"{ratio:>15.2f}x")
    sys.stdout.flush()


def bandwidth(size: int, repeats: int) -> dict[str, tuple[float, float]]:
    """{path: (GB/s of our fp32 dequantize into a preallocated output, GB/s of a memory copy)}."""
    from qlora_kernels import dequantize, quantize

    native = _check_native()
    state = quantize(torch.randn(size, size), "nf4", blocksize=64)
    out, src = torch.empty(size, size), torch.randn(size, size)
    moved_dequant = state.packed.numel() + state.absmax.numel() * 4 + out.numel() * 4
    copy_gbs = 2 * out.numel() * 4 / best_ms(lambda: out.copy_(src), repeats) / 1e6
    rates = {}
    for path in native.decode_paths():
        with native.decode_path(path):
            rates[path] = (moved_dequant / best_ms(lambda: dequantize(state, out=out), repeats) / 1e6, copy_gbs)
    return rates


def quantize_row(size: int, repeats: int) -> tuple[float, float, float]:
    import bitsandbytes.functional as bnbf

    from qlora_kernels import quantize

    native = _check_native()
    weight, few = torch.randn(size, size), max(2, repeats // 2)
    compiled = best_ms(lambda: quantize(weight, "nf4", blocksize=64), few)
    with native.enabled(False):
        plain = best_ms(lambda: quantize(weight, "nf4", blocksize=64), few)
    return compiled, plain, best_ms(lambda: bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4"), few)


FORMATS = {"nf4+dq8": ("nf4", 64, "dq8"), "mxfp4": ("e2m1", 32, "e8m0"), "nvfp4": ("e2m1", 16, "e4m3"),
           "q4_0": ("int4_grid", 32, "fp16"), "q4_k": ("uint4", 32, "q4_k"), "hqq4": ("uint4", 64, "hqq")}


def formats_table(size: int, repeats: int) -> None:
    """Per format: quantize ms; per decode path, fp32 decode into a preallocated output as a fraction
    of a memory copy's bandwidth (bytes read + written), and into a fresh output against `fill`."""
    from qlora_kernels import dequantize, quantize

    native = _check_native()
    paths = native.decode_paths()
    weight, src, out = torch.randn(size, size), torch.randn(size, size), torch.empty(size, size)
    copy_gbs = 2 * out.numel() * 4 / best_ms(lambda: out.copy_(src), repeats) / 1e6
    fill = best_ms(lambda: torch.empty(size * size).fill_(1.0), repeats)
    print(f"\nthe 4-bit formats of 2026, {size}x{size}, fp32 output (copy {copy_gbs:.1f} GB/s, fill {fill:.2f} ms):")
    print(f"{'format':<9}{'bits':>6}{'quantize ms':>13}" + "".join(f"{p + ' /copy':>16}{p + ' /fill':>16}"
                                                                    for p in paths))
    for name, (book, blocksize, scale) in FORMATS.items():
        quantize_ms = best_ms(lambda: quantize(weight, book, blocksize, scale=scale), max(2, repeats // 3))
        state = quantize(weight, book, blocksize, scale=scale)
        moved = state.stored_bits / 8 + out.numel() * 4
        cells = ""
        for path in paths:
            with native.decode_path(path):
                into = best_ms(lambda: dequantize(state, torch.float32, out=out), repeats)
                fresh = best_ms(lambda: dequantize(state, torch.float32), repeats)
            cells += f"{moved / into / 1e6 / copy_gbs:>16.2f}{fresh / fill:>16.2f}"
        print(f"{name:<9}{state.bits_per_param:>6.2f}{quantize_ms:>13.1f}" + cells)
        sys.stdout.flush()


def peak_memory(backend: str, work: Path) -> tuple[float, float]:
    """(peak of tensor allocations over the training steps, peak RSS of the whole run) in MB."""
    run_dir = work / backend
    subprocess.run([sys.executable, "-m", "qlora_lab.train", "dtype=nf4", f"dtype.backend={backend}",
                    "train.max_steps=5", "train.report_to=none", "train.save_steps=0", "eval.n_generate=0", "train.cpu_tensor_peak=true",
                    f"hydra.run.dir={run_dir}"], check=True, capture_output=True, text=True)
    memory = json.loads((run_dir / "record.json").read_text())["memory"]
    return memory["peak_tensor_mb"], memory["peak_rss_mb"]


EQUAL_TERMS = {  # child process environments: fresh outputs are mapped and faulted anew on both sides
    "neither": ("equal terms, huge pages on neither, ms:", {"QLORA_KERNELS_HUGE_PAGES": "0"}),
    "both": ("equal terms, huge pages on both (THP_MEM_ALLOC_ENABLE=1: torch's allocator asks for them), ms:",
             {"THP_MEM_ALLOC_ENABLE": "1"}),
}
# glibc's default mmap threshold moves up after the first large free, and later "fresh" outputs then
# come from memory an earlier call already faulted in: which library profits depends on the order
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--equal-terms", choices=EQUAL_TERMS, help="one equal-terms table alone (a child)")
    parser.add_argument("--formats-only", action="store_true", help="the 2026 formats' table alone")
    args = parser.parse_args()
    if args.formats_only:
        print(cpu_line())
        formats_table(args.size, args.repeats)
        return
    if args.equal_terms:
        title, _ = EQUAL_TERMS[args.equal_terms]
        print_dequant(title, dequant_times(args.size, args.repeats, advise=args.equal_terms == "both"))
        return
    native = _check_native()
    print(f"{cpu_line()}\ntorch threads: {torch.get_num_threads()}, matrix {args.size}x{args.size}, decode paths "
          f"{', '.join(native.decode_paths())} (AVX512-BF16 conversion: {native.bf16_instruction()})\n")
    print(f"dequantize nf4 into a fresh output; ratio = bitsandbytes' time / our {native.decode_paths()[0]} path's "
          f"(> 1: ours faster); fill = writing a fresh output of that size at all\n")
    sys.stdout.flush()
    for mode, (_, env) in EQUAL_TERMS.items():
        subprocess.run([sys.executable, __file__, "--equal-terms", mode, "--size", str(args.size), "--repeats",
                        str(args.repeats)], env={**os.environ, **FIXED_MMAP, **env}, check=True)
        print()
    print_dequant("default mode (ours advised onto huge pages, theirs not; glibc's own mmap threshold), ms:",
                  dequant_times(args.size, args.repeats, advise=True))
    print("\nfp32 dequantize into a preallocated output, against a memory copy:")
    for path, (ours_gbs, copy_gbs) in bandwidth(args.size, args.repeats).items():
        print(f"  {path:<9} {ours_gbs:.1f} GB/s vs copy {copy_gbs:.1f} GB/s: {ours_gbs / copy_gbs:.2f} of copy")
    compiled, plain, theirs = quantize_row(args.size, args.repeats)
    print(f"\nquantize nf4: compiled {compiled:.1f} ms, plain torch {plain:.1f} ms, bitsandbytes {theirs:.1f} ms "
          f"({theirs / compiled:.1f}x)")
    formats_table(args.size, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        lab = [peak_memory("lab", Path(tmp) / f"a{i}") for i in range(2)]
        bnb = [peak_memory("bnb", Path(tmp) / f"b{i}") for i in range(2)]
    print("\na 5-step tiny QLoRA run (nf4 + DQ, LoRA on all layers), lowest of 2 runs each:")
    for label, index in (("peak of tensor allocations over the training steps", 0), ("peak RSS of the whole run", 1)):
        ours, theirs = min(m[index] for m in lab), min(m[index] for m in bnb)
        print(f"  {label}: lab {ours:.1f} MB, bnb {theirs:.1f} MB ({ours / theirs:.2f}x)")


if __name__ == "__main__":
    main()
