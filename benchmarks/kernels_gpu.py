"""qlora_kernels on a GPU against bitsandbytes' CUDA backend, side by side in one run:

    python benchmarks/kernels_gpu.py [--size 4096] [--tokens 16] [--repeats 50]

- dequantize of a size x size NF4 matrix (DQ, blocksize 64) to bf16, fp16 and fp32: our
  Triton kernel against bitsandbytes' dequantize_4bit, and its bandwidth (bytes read +
  written per second) against a device-to-device copy of the same output;
- forward + backward of a quantized linear layer (tokens x size -> size, bf16 compute, the
  gradient w.r.t. the input): QuantLinear against bitsandbytes' Linear4bit.
Times are triton.testing.do_bench medians (on the CPU, the best of `repeats` calls). It prints
the device, the date and the command, so the figures go into benchmarks/RESULTS.md as they are.

`--device cpu` under TRITON_INTERPRET=1 runs the same code on the CPU (bitsandbytes' CPU
backend, Triton's interpreter): a check of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import datetime
import sys

import torch
from kernels_cpu import best_ms  # the CPU benchmark's timer, beside this file


def timed_ms(fn, repeats: int, device: str) -> float:
    if device == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, rep=repeats, return_mode="median")
    return best_ms(fn, repeats)


def dequantize_rows(size: int, repeats: int, device: str) -> list[tuple[str, float, float]]:
    import bitsandbytes.functional as bnbf

    from qlora_kernels import quantize
    from qlora_kernels.triton_dequant import dequantize_4bit_triton

    rows = []
    weight = torch.randn(size, size, device=device) * 0.02
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        w = weight.to(dtype)
        ours = quantize(w, "nf4", blocksize=64, double_quant=True)
        packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
        rows.append((f"dequantize nf4 -> {str(dtype)[6:]} (ms)", timed_ms(lambda: dequantize_4bit_triton(ours), repeats,
                                                                         device),
                     timed_ms(lambda: bnbf.dequantize_4bit(packed, state), repeats, device)))
    return rows


def bandwidth(size: int, repeats: int, device: str) -> tuple[float, float]:
    """(GB/s of the bf16 Triton dequantize, GB/s of a device-to-device copy of its output)."""
    from qlora_kernels import quantize
    from qlora_kernels.triton_dequant import dequantize_4bit_triton

    state = quantize(torch.randn(size, size, device=device, dtype=torch.bfloat16), "nf4", blocksize=64,
                     double_quant=True)
    src, dst = torch.randn(size, size, device=device, dtype=torch.bfloat16), torch.empty(size, size, device=device,
                                                                                       dtype=torch.bfloat16)
    deq_ms = timed_ms(lambda: dequantize_4bit_triton(state), repeats, device)
    copy_ms = timed_ms(lambda: dst.copy_(src), repeats, device)
    moved = state.packed.numel() + state.nested.codes.numel() + state.nested.absmax.numel() * 4 + dst.numel() * 2
    return moved / deq_ms / 1e6, 2 * dst.numel() * 2 / copy_ms / 1e6


def linear_row(size: int, tokens: int, repeats: int, device: str) -> tuple[str, float, float]:
    import bitsandbytes as bnb

    from qlora_kernels import QuantLinear

    linear = torch.nn.Linear(size, size, bias=False)
    ours = QuantLinear.from_linear(linear, "nf4", 64, True, torch.bfloat16).to(device)
    theirs = bnb.nn.Linear4bit(size, size, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4",
                               compress_statistics=True)
    theirs.weight = bnb.nn.Params4bit(data=linear.weight.detach().clone(), requires_grad=False, quant_type="nf4",
                                      compress_statistics=True)
    theirs = theirs.to(device)
    x = torch.randn(tokens, size, device=device, dtype=torch.bfloat16, requires_grad=True)

    def step(layer):
        def run():
            x.grad = None
            layer(x).float().sum().backward()
        return run

    return (f"forward + backward, {tokens} tokens (ms)", timed_ms(step(ours), repeats, device),
            timed_ms(step(theirs), repeats, device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=50, help="do_bench's rep (ms) on a GPU; calls on the CPU")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here: this benchmark needs a GPU (--device cpu under TRITON_INTERPRET=1 checks it)")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (Triton interpreter: not a measurement)"
    print(f"device: {name}; {datetime.date.today()}; python {' '.join(sys.argv)}\n")
    print(f"{'measure':<42}{'qlora_kernels':>15}{'bitsandbytes':>14}{'speed ratio':>13}")
    rows = dequantize_rows(args.size, args.repeats, args.device)
    rows.append(linear_row(args.size, args.tokens, args.repeats, args.device))
    for label, ours, theirs in rows:
        print(f"{label:<42}{ours:>15.3f}{theirs:>14.3f}{theirs / ours:>13.2f}")
    ours_gbs, copy_gbs = bandwidth(args.size, args.repeats, args.device)
    print(f"\nbf16 dequantize {ours_gbs:.1f} GB/s vs device copy {copy_gbs:.1f} GB/s: "
          f"{ours_gbs / copy_gbs:.2f} of copy")


if __name__ == "__main__":
    main()
