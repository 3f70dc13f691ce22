"""The compiled CPU codec (cpu_codec.c): the plain-torch codec's bytes and values to the bit, in
its vectorized build and its portable one, and a plain-torch fallback where it cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from qlora_kernels import Codebook, codebook, dequantize, native, quantize
from qlora_kernels.codebooks import sorted_codes

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler here: the compiled codec is not built")

BOOKS = ["nf4", "fp4", "int4", "int4_affine", Codebook("uneven4", tuple(sorted([-1.0, -0.6, -0.3, -0.2, -0.1, -0.05, 0.0, 0.01, 0.02,
                                                                   0.05, 0.1, 0.2, 0.4, 0.7, 0.9, 1.0])))]
# small and odd shapes (the scalar tails), and outputs past the parallel, streaming and huge-page sizes
SHAPES = [(7,), (3, 5, 7), (1001,), (33, 65), (2, 300, 17), (2048, 1025), (4096, 1024)]


PATHS = native.decode_paths()  # the decode paths this CPU executes, widest first (avx512, avx2, portable)


def both_paths(fn):
    with native.enabled(False):
        plain = fn()
    return fn(), plain


def each_path(fn):
    """{decode path: fn()} for every path this CPU executes."""
    out = {}
    for path in PATHS:
        with native.decode_path(path):
            out[path] = fn()
    return out


def test_the_paths_are_picked_from_the_cpu_flags():
    flags = set()
    for line in open("/proc/cpuinfo", encoding="utf-8"):
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    assert PATHS[-1] == "portable"
    assert ("avx2" in PATHS) == ("avx2" in flags)
    assert ("avx512" in PATHS) == ({"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags)
    assert native.bf16_instruction() == ("avx512" in PATHS and "avx512_bf16" in flags)
    with pytest.raises(ValueError, match="decode path 'sse9'"):
        with native.decode_path("sse9"):
            pass


@pytest.mark.parametrize("book", BOOKS, ids=lambda b: codebook(b).name)
@pytest.mark.parametrize("blocksize", [32, 64, 256, 4096])
def test_compiled_codec_matches_plain_torch(book, blocksize):
    torch.manual_seed(blocksize)
    for shape in SHAPES:
        weight = torch.randn(shape) * 0.02
        weight.view(-1)[: min(64, weight.numel())] = 0.0  # an all-zero block
        compiled, plain = both_paths(lambda: quantize(weight, book, blocksize=blocksize))
        assert torch.equal(compiled.packed, plain.packed), shape
        assert torch.equal(compiled.absmax, plain.absmax), shape
        assert (compiled.offsets is None) == (plain.offsets is None) == (not codebook(book).affine)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            with native.enabled(False):
                reference = dequantize(compiled, dtype)
            for path, ours in each_path(lambda: dequantize(compiled, dtype)).items():
                assert ours.dtype == reference.dtype == dtype and ours.shape == weight.shape
                assert torch.equal(ours, reference), (shape, dtype, path)


def test_bfloat16_and_float16_inputs_and_double_quant_take_the_compiled_path_too():
    weight = torch.randn(300, 77)
    for dtype in (torch.bfloat16, torch.float16):
        compiled, plain = both_paths(lambda: quantize(weight.to(dtype), "nf4", blocksize=64, double_quant=True))
        assert torch.equal(compiled.packed, plain.packed) and torch.equal(compiled.nested.codes, plain.nested.codes)
        ours, reference = both_paths(lambda: dequantize(compiled))
        assert ours.dtype == dtype and torch.equal(ours, reference)


def test_the_build_without_march_native_agrees_on_every_path(tmp_path):
    """-O3 alone (no -march=native): the build where the compiler does not know this CPU; its vector
    paths come from target attributes and are picked at run time, the portable one is plain C."""
    portable = native.build(["-O3"], tmp_path)
    assert native.decode_paths(portable) == PATHS
    book = codebook("nf4")
    midpoints, order = sorted_codes(book.values)
    for n in (1, 31, 4097, 300_001):
        flat = torch.randn(n)
        packed, absmax = native.quantize_4bit(flat, midpoints, order, book.zero_code, 64, library=portable)
        reference = quantize(flat, book, blocksize=64)
        assert torch.equal(packed, reference.packed) and torch.equal(absmax, reference.absmax), n
        for dtype in (torch.float32, torch.bfloat16):
            for path, values in each_path(lambda: native.dequantize_4bit(packed, absmax, book.tensor(), n, 64, dtype,
                                                                         library=portable)).items():
                assert torch.equal(values, dequantize(reference, dtype).reshape(-1)), (n, dtype, path)


def test_the_portable_build_adds_affine_offsets_as_torch_does(tmp_path):
    portable = native.build(["-O3"], tmp_path)
    for n, double_quant in ((31, False), (4097, True), (300_001, False)):
        state = quantize(torch.randn(n) * 0.03 + 0.01, "int4_affine", blocksize=64, double_quant=double_quant)
        for dtype in (torch.float32, torch.bfloat16):
            with native.enabled(False):
                reference = dequantize(state, dtype).reshape(-1)
            for path, values in each_path(lambda: native.dequantize_4bit(
                    state.packed, state.block_absmax(), state.codebook.tensor(), n, 64, dtype, library=portable,
                    offsets=state.block_offsets())).items():
                assert torch.equal(values, reference), (n, dtype, path)


def test_bfloat16_rounding_is_to_nearest_even_and_keeps_nan_and_inf():
    state = quantize(torch.randn(4, 64), "nf4", blocksize=64)
    # ties, just above, specials; and subnormal results (AVX512-BF16's instruction would flush them)
    for scale in (1.0 + 2**-8, 1.0 + 3 * 2**-8, 3.0000002, float("inf"), float("nan"), 3e-41, 1e-39):
        scaled = type(state)(**{**state.__dict__, "absmax": torch.full_like(state.absmax, scale)})
        with native.enabled(False):
            reference = dequantize(scaled, torch.bfloat16)
        for path, ours in each_path(lambda: dequantize(scaled, torch.bfloat16)).items():
            assert torch.equal(ours.isnan(), reference.isnan()), (scale, path)
            assert torch.equal(ours[~ours.isnan()], reference[~reference.isnan()]), (scale, path)
    assert (reference != 0).any() and reference.abs().max() < 1.2e-38  # the last scale: subnormal values


def test_dequantize_into_a_given_tensor():
    state = quantize(torch.randn(2048, 1024), "nf4", blocksize=64)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for compiled in (True, False):
            with native.enabled(compiled):
                out = torch.full((2048, 1024), 7.0, dtype=dtype)
                assert dequantize(state, dtype, out=out) is out
                assert torch.equal(out, dequantize(state, dtype))
    with pytest.raises(ValueError, match=r"out must be a contiguous torch.float32 tensor of shape \(2048, 1024\)"):
        dequantize(state, out=torch.empty(1024, 2048))
    with pytest.raises(ValueError, match="out must be"):
        dequantize(state, out=torch.empty(2048, 1024, dtype=torch.bfloat16))


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


CHECK = """
import torch
from qlora_kernels import dequantize, native, quantize
weight = torch.randn(333, 65)
state = quantize(weight, "nf4", blocksize=64)
values = dequantize(state)
with native.enabled(False):
    assert torch.equal(state.packed, quantize(weight, "nf4", blocksize=64).packed)
    assert torch.equal(values, dequantize(state))
print("available", native.available())
"""


def test_without_a_compiler_the_codec_warns_once_and_runs_in_plain_torch(tmp_path):
    done = run_python(CHECK, CC="/bin/false", QLORA_KERNELS_CACHE=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "available False" in done.stdout
    assert done.stderr.count("the compiled CPU codec could not be built (false -O3") == 1
    assert not list(tmp_path.rglob("*.so"))


def test_processes_building_at_once_into_an_empty_cache_all_load_a_whole_library(tmp_path):
    env = {**os.environ, "QLORA_KERNELS_CACHE": str(tmp_path)}
    runs = [subprocess.Popen([sys.executable, "-c", CHECK], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(3)]
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        assert "available True" in out
    built = list((tmp_path / "qlora_kernels").glob("*.so"))
    assert len(built) == 1 and built[0].name.startswith("cpu_codec-")


FORK = """
import os, torch
from qlora_kernels import dequantize, native, quantize
state = quantize(torch.randn(512, 1024), "nf4", blocksize=64)  # past the parallel size
expected = dequantize(state)  # the parent's decode made its thread pool
assert native._pool.cache_info().currsize == 1
reader, writer = os.pipe()
child = os.fork()
if child == 0:
    values = dequantize(state)
    os.write(writer, b"ok" if values.equal(expected) else b"differ")
    os._exit(0)
os.waitpid(child, 0)
print(os.read(reader, 16).decode())
"""


def test_a_forked_child_decodes_on_threads_of_its_own():
    """A fork inherits the parent's thread pool without its threads: the child makes its own pool
    (with the parent's, its decode would wait forever). In a fresh process: torch's own OpenMP
    pool, once used by a parent, hangs a forked child by itself."""
    done = subprocess.run([sys.executable, "-c", FORK], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


# the 2026 formats: every scale format's decoded constants (a zero point first for HQQ, an offset
# after for Q4_K, block size 16 for NVFP4) through each compiled path, equal to plain torch
FORMATS = [("e2m1", 32, "e8m0"), ("e2m1", 32, "e8m0_rceil"), ("e2m1", 16, "e4m3"), ("nf4", 16, "e4m3"),
           ("int4", 64, "e8m0"), ("int4_grid", 32, "fp16"), ("uint4", 32, "q4_k"), ("uint4", 64, "hqq"),
           ("uint4", 16, "hqq"), ("e2m1", 64, "fp32"), ("e2m1", 16, "dq8")]


@pytest.mark.parametrize("book, blocksize, scale", FORMATS)
@pytest.mark.parametrize("shape", [(7,), (33, 65), (300, 1001)])
def test_scale_formats_decode_on_every_path_as_torch_does(book, blocksize, scale, shape):
    state = quantize(torch.randn(shape) * 0.05 + 0.01, book, blocksize=blocksize, scale=scale)
    for dtype in (torch.float32, torch.bfloat16):
        with native.enabled(False):
            reference = dequantize(state, dtype)
        for path, values in each_path(lambda: dequantize(state, dtype)).items():
            assert torch.equal(values, reference), (dtype, path)


@pytest.mark.parametrize("book, blocksize, scale", [("nf4", 64, "dq8"), ("e2m1", 16, "e4m3"), ("uint4", 32, "q4_k"),
                                                    ("uint4", 64, "hqq"), ("int4_grid", 32, "fp16"),
                                                    ("e2m1", 32, "e8m0")])
def test_stored_constants_decoded_in_c_over_many_chunks_and_streamed(book, blocksize, scale):
    """The compiled decode reads these formats' constants as stored (cpu_codec.c's decode_scales, 512
    blocks a chunk): an output past the streaming size, a short last block, threads splitting the
    blocks at an odd block (NVFP4's pairs), each path against torch's BlockScales."""
    weight = torch.randn(2049 * 1024 + 40) * 0.05 + 0.01
    state = (quantize(weight, book, blocksize=blocksize, double_quant=True) if scale == "dq8"
             else quantize(weight, book, blocksize=blocksize, scale=scale))
    assert state.stored_scales() is not None  # the C decode of the constants is what runs
    with native.enabled(False):
        reference = dequantize(state, torch.float32)
    for path in PATHS:
        with native.decode_path(path):
            into = torch.empty_like(reference)
            assert dequantize(state, torch.float32, out=into) is into and torch.equal(into, reference), path
            assert torch.equal(dequantize(state, torch.bfloat16), reference.to(torch.bfloat16)), path
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # three threads: ranges of blocks start and end at odd blocks
    try:
        assert torch.equal(dequantize(state, torch.float32), reference)
    finally:
        torch.set_num_threads(threads)


def test_the_build_without_march_native_decodes_stored_halves_bit_for_bit(tmp_path):
    """-O3 alone has no F16C: its fp16 constants (Q4_0, HQQ, Q4_K) go through the bit steps, subnormal
    and tiny scales included."""
    portable = native.build(["-O3"], tmp_path)
    for book, blocksize, scale in (("int4_grid", 32, "fp16"), ("uint4", 64, "hqq"), ("uint4", 32, "q4_k")):
        weight = torch.randn(4096 + 40) * 0.05
        weight[:64] *= 1e-3  # fp16 subnormal scales
        state = quantize(weight, book, blocksize=blocksize, scale=scale)
        stored = state.stored_scales()
        first = stored.tensors[0].float()
        assert ((first != 0) & (first.abs() < 6.1e-5)).any() or scale == "q4_k"  # d: one per 256, not tiny here
        with native.enabled(False):
            reference = dequantize(state, torch.float32)
        for path, values in each_path(lambda: native.dequantize_4bit_stored(
                state.packed.reshape(-1), stored.kind, stored.tensors, stored.table, stored.constant,
                state.codebook.tensor(), state.numel, blocksize, torch.float32, library=portable)).items():
            assert torch.equal(values, reference), (scale, path)
