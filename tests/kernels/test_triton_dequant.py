"""The Triton dequantize kernel against the plain-torch reference, run on the CPU by Triton's
interpreter (TRITON_INTERPRET=1) in a child process, and on a GPU where there is one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton", reason="triton is not installed: `pip install triton` to test the GPU kernel")

CHECK = textwrap.dedent("""
    import torch
    from qlora_kernels import dequantize, native, quantize
    from qlora_kernels.triton_dequant import dequantize_4bit_triton

    device = "{device}"
    torch.manual_seed(0)
    shapes = [(7,), (1001,), (33, 65), (3, 5, 7), (64, 96)]
    checked = 0
    for book in ("nf4", "fp4", "int4", "fp4_e3m0", "int4_affine"):
        for blocksize in (32, 64, 256, 4096):
            for double_quant in (False, True):
                for dtype in (torch.float32, torch.bfloat16):
                    for shape in shapes:
                        weight = torch.randn(shape, dtype=dtype, device=device)
                        state = quantize(weight, book, blocksize=blocksize, double_quant=double_quant)
                        ours = dequantize_4bit_triton(state)
                        with native.enabled(False):  # plain torch: on a GPU dequantize() is the kernel itself
                            ref = dequantize(state)
                        if device == "cuda":
                            assert torch.equal(dequantize(state), ours)
                        assert ours.shape == ref.shape and ours.dtype == ref.dtype, (shape, dtype)
                        assert torch.equal(ours, ref), (book, blocksize, double_quant, dtype, shape)
                        checked += 1
    # the 2026 formats: decoded block constants, a zero point first (HQQ), an offset after (Q4_K), blocks of 16
    for book, blocksize, scale in (("e2m1", 32, "e8m0"), ("e2m1", 16, "e4m3"), ("int4_grid", 32, "fp16"),
                                   ("uint4", 32, "q4_k"), ("uint4", 64, "hqq"), ("nf4", 16, "e8m0_rceil")):
        for dtype in (torch.float32, torch.bfloat16):
            for shape in shapes:
                state = quantize(torch.randn(shape, dtype=dtype, device=device), book, blocksize=blocksize,
                                 scale=scale)
                ours = dequantize_4bit_triton(state)
                with native.enabled(False):
                    ref = dequantize(state)
                assert torch.equal(ours, ref), (book, blocksize, scale, dtype, shape)
                checked += 1
    # NVFP4 in compressed-tensors' layout: the block scale divided by the tensor's (a release's)
    from qlora_kernels.compressed_blocks import quantize_nvfp4
    for dtype in (torch.float32, torch.bfloat16):
        for shape in ((64, 96), (5, 32)):
            state = quantize_nvfp4(torch.randn(shape, dtype=dtype, device=device))
            ours = dequantize_4bit_triton(state)
            with native.enabled(False):
                ref = dequantize(state)
            assert torch.equal(ours, ref), ("nvfp4 released", dtype, shape)
            checked += 1
    print("checked", checked)
""")


def run_check(device: str, interpret: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "1"} if interpret else dict(os.environ)
    return subprocess.run([sys.executable, "-c", CHECK.format(device=device)], capture_output=True, text=True,
                          env=env, timeout=600)


def test_triton_kernel_equals_the_reference_under_the_interpreter():
    proc = run_check("cpu", interpret=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "checked 464"


@pytest.mark.gpu
def test_triton_kernel_equals_the_reference_on_the_gpu():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine: the kernel is checked under the interpreter above")
    proc = run_check("cuda", interpret=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_non_4bit_codebooks_are_refused():
    import torch

    from qlora_kernels import quantize
    from qlora_kernels.triton_dequant import dequantize_4bit_triton

    with pytest.raises(ValueError, match="decodes 4-bit codes; codebook 'nf3' has 3"):
        dequantize_4bit_triton(quantize(torch.randn(64), "nf3"))


def test_the_gpu_benchmark_runs_its_code_on_the_cpu_under_the_interpreter():
    """benchmarks/kernels_gpu.py end to end at a small size (its figures mean nothing here)."""
    import re
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels_gpu.py"
    proc = subprocess.run([sys.executable, str(script), "--device", "cpu", "--size", "128", "--repeats", "2"],
                          capture_output=True, text=True, env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("device: cpu (Triton interpreter: not a measurement)")
    rows = re.findall(r"^(dequantize nf4 -> \w+|forward \+ backward, 16 tokens) \(ms\)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$",
                      proc.stdout, flags=re.M)
    assert [r[0] for r in rows] == ["dequantize nf4 -> bfloat16", "dequantize nf4 -> float16",
                                    "dequantize nf4 -> float32", "forward + backward, 16 tokens"]
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows)
    assert re.search(r"^bf16 dequantize [\d.]+ GB/s vs device copy [\d.]+ GB/s: [\d.]+ of copy$", proc.stdout, re.M)
