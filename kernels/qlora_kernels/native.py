"""The compiled paths of the 4-bit codec. On the CPU: `cpu_codec.c`, built on first use with the
system C compiler for this CPU and cached, called through ctypes on torch's threads' worth of
Python threads (ctypes lets go of the GIL). On a GPU: the Triton dequantize kernel. The
plain-torch codec is the reference and the fallback: without a compiler or Triton, or with
QLORA_KERNELS_NATIVE=0, nothing changes but speed.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu_codec.c")
FLAG_SETS = (["-O3", "-march=native"], ["-O3"])  # the second where the compiler knows no -march=native
COMMON_FLAGS = ["-std=c11", "-ffp-contract=off", "-fPIC", "-shared"]
PARALLEL_MIN_NUMEL = 1 << 18  # below this, one thread: starting the others costs more than they save
HUGE_PAGE_MIN_BYTES = 8 << 20  # smaller outputs are reused from the heap, already faulted in

_enabled = os.environ.get("QLORA_KERNELS_NATIVE", "1") != "0"
_huge_pages = os.environ.get("QLORA_KERNELS_HUGE_PAGES", "1") != "0"
PATHS = {"best": 0, "portable": 1, "avx2": 2, "avx512": 3}  # cpu_codec.c's decode paths
_path = "best"


@contextlib.contextmanager
def enabled(flag: bool):
    """Turn the compiled paths on or off inside a block (the tests compare them with plain torch)."""
    global _enabled
    before, _enabled = _enabled, flag
    try:
        yield
    finally:
        _enabled = before


@contextlib.contextmanager
def decode_path(name: str):
    """Run the compiled decode on one path inside a block (`avx512`, `avx2`, `portable`; `best`: the
    widest this CPU runs): the tests check each path this CPU can execute."""
    global _path
    if name not in PATHS:
        raise ValueError(f"decode path {name!r}: expected one of {', '.join(PATHS)}")
    before, _path = _path, name
    try:
        yield
    finally:
        _path = before


@contextlib.contextmanager
def huge_pages(flag: bool):
    """Advise fresh outputs onto transparent huge pages (default on; QLORA_KERNELS_HUGE_PAGES=0 turns
    it off): off, the benchmark compares with a library whose outputs get none on equal terms."""
    global _huge_pages
    before, _huge_pages = _huge_pages, flag
    try:
        yield
    finally:
        _huge_pages = before


def decode_paths(library: ctypes.CDLL | None = None) -> list[str]:
    """The decode paths this build runs on this CPU, widest first; [] without a compiled codec."""
    library = library or (_library() if _enabled else None)
    if library is None:
        return []
    mask = library.decode_paths()
    return [name for name in ("avx512", "avx2", "portable") if mask >> PATHS[name] & 1]


def bf16_instruction(library: ctypes.CDLL | None = None) -> bool:
    """Whether the AVX-512 path converts to bfloat16 with the CPU's own instruction (AVX512-BF16)."""
    library = library or _library()
    return library is not None and bool(library.native_bf16())


def available() -> bool:
    return _enabled and _library() is not None


def triton_available() -> bool:
    return _enabled and _has_triton()


@lru_cache(maxsize=1)
def _has_triton() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def cache_dir() -> Path:
    root = os.environ.get("QLORA_KERNELS_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(root) / "qlora_kernels"


def _cpu_key() -> str:
    """What -march=native compiles for: the CPU's model and flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    errors = []
    for flags in FLAG_SETS:
        try:
            return build(flags)
        except (OSError, RuntimeError) as error:
            errors.append(str(error))
    warnings.warn(f"qlora_kernels: the compiled CPU codec could not be built ({errors[-1]}); it runs in plain "
                  f"torch (slower)", stacklevel=3)
    return None


def build(flags: list[str], directory: Path | None = None) -> ctypes.CDLL:
    """The codec compiled with `flags` (cached by source, flags, compiler and CPU), loaded."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC)")
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), " ".join(flags + COMMON_FLAGS).encode(), compiler.encode(),
                                     _cpu_key().encode()])).hexdigest()[:16]
    target = (directory or cache_dir()) / f"cpu_codec-{key}.so"
    if not target.exists():
        _compile(compiler, flags, target)
    return _bind(ctypes.CDLL(str(target)))


def _compile(compiler: str, flags: list[str], target: Path) -> None:
    """Build into a temporary file and rename: processes compiling at once never load half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(handle)
    done = subprocess.run([compiler, *flags, *COMMON_FLAGS, str(SOURCE), "-o", partial, "-lm"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        os.unlink(partial)
        first_line = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[0]
        raise RuntimeError(f"{Path(compiler).name} {' '.join(flags)}: {first_line}")
    os.replace(partial, target)


def _bind(library: ctypes.CDLL) -> ctypes.CDLL:
    pointer, i64, i32, u8 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_uint8
    library.dequantize_4bit.argtypes = [pointer] * 6 + [i64, i64, i64, i64, i32, i32, i32]
    library.dequantize_4bit.restype = None
    library.dequantize_4bit_stored.argtypes = [pointer, i32] + [pointer] * 4 + [ctypes.c_float] + [pointer] * 2 + \
        [i64, i64, i64, i64, i32, i32, i32]
    library.dequantize_4bit_stored.restype = None
    library.decode_paths.argtypes, library.decode_paths.restype = [], i32
    library.native_bf16.argtypes, library.native_bf16.restype = [], i32
    library.quantize_4bit.argtypes = [pointer, pointer, pointer, u8, pointer, pointer, i64, i64, i64, i64]
    library.quantize_4bit.restype = None
    library.advise_huge_pages.argtypes = [pointer, i64]
    library.advise_huge_pages.restype = None
    return library


@lru_cache(maxsize=1)
def _pool(threads: int, pid: int) -> ThreadPoolExecutor:
    """One pool per process (a forked child inherits the pool but not its threads) and thread count."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="qlora_kernels")


def _over_blocks(call, n: int, blocksize: int) -> None:
    """call(first, last) over all blocks, split evenly across torch's thread count."""
    blocks = -(-n // blocksize)
    threads = min(torch.get_num_threads(), blocks) if n >= PARALLEL_MIN_NUMEL else 1
    if threads <= 1:
        call(0, blocks)
        return
    bounds = [blocks * t // threads for t in range(threads + 1)]
    pool = _pool(torch.get_num_threads(), os.getpid())
    for future in [pool.submit(call, bounds[t], bounds[t + 1]) for t in range(threads)]:
        future.result()


def dequantize_4bit(packed: torch.Tensor, absmax: torch.Tensor, table: torch.Tensor, n: int, blocksize: int,
                    dtype: torch.dtype, out: torch.Tensor | None = None,
                    library: ctypes.CDLL | None = None, offsets: torch.Tensor | None = None,
                    zeros: torch.Tensor | None = None) -> torch.Tensor:
    """Flat values of n 4-bit codes in `dtype` (float32 and bfloat16 written directly; others
    through float32), into `out` where given (flat, contiguous, of `dtype`): per block,
    (table[code] - zeros) x absmax + offsets, `zeros` (HQQ's zero points) and `offsets` (affine
    centres, Q4_K's mins) where given. `library`: another build than the default (the tests run
    the portable one)."""
    library = library or _library()
    absmax = absmax.float().contiguous()
    offsets = None if offsets is None else offsets.float().contiguous()
    zeros = None if zeros is None else zeros.float().contiguous()
    constants = (absmax.data_ptr(), None if offsets is None else offsets.data_ptr(),
                 None if zeros is None else zeros.data_ptr())
    return _decode(library, library.dequantize_4bit, constants, packed, table, n, blocksize, dtype, out)


# cpu_codec.c's kinds of stored block constants (decode_scales)
SCALE_KINDS = {"nested": 1, "byte_table": 2, "half": 3, "half_zero": 4, "k4": 5}


def dequantize_4bit_stored(packed: torch.Tensor, kind: str, tensors: tuple, scale_table: torch.Tensor | None,
                           constant: float, table: torch.Tensor, n: int, blocksize: int, dtype: torch.dtype,
                           out: torch.Tensor | None = None, library: ctypes.CDLL | None = None) -> torch.Tensor:
    """As dequantize_4bit, the block constants given as stored (`kind`, up to three tensors, a
    256-value table, a float32 constant: scale_formats.StoredScales) and decoded in C on the
    decoding threads, a chunk of blocks at a time."""
    library = library or _library()
    kept = [t.contiguous() for t in tensors]  # alive until the decode returns
    pointers = [t.data_ptr() for t in kept] + [None] * (3 - len(kept))
    scale_table = None if scale_table is None else scale_table.float().contiguous()
    constants = (SCALE_KINDS[kind], *pointers, None if scale_table is None else scale_table.data_ptr(),
                 ctypes.c_float(constant))
    return _decode(library, library.dequantize_4bit_stored, constants, packed, table, n, blocksize, dtype, out)


def _decode(library: ctypes.CDLL, entry, constants: tuple, packed: torch.Tensor, table: torch.Tensor, n: int,
            blocksize: int, dtype: torch.dtype, out: torch.Tensor | None) -> torch.Tensor:
    """One of the C decodes over all blocks on the threads: `constants`, its arguments between the
    packed codes and the codebook table."""
    packed, table = packed.contiguous(), table.float().contiguous()
    direct = dtype if dtype in (torch.float32, torch.bfloat16) else torch.float32
    given = out is not None and out.dtype == direct
    target = out if given else _fresh(library, n, direct)
    args = (packed.data_ptr(), *constants, table.data_ptr(), target.data_ptr(), n, blocksize)
    path = PATHS[_path]
    if _path != "best" and _path not in decode_paths(library):
        raise RuntimeError(f"decode path {_path!r}: this CPU or build runs {', '.join(decode_paths(library))}")
    # streaming (non-temporal) stores only into a given output: a fresh one is zeroed page by page by
    # the kernel as it is first written, which leaves each page in the cache for plain stores to hit
    # (measured: streaming into fresh 4096 x 4096 fp32 outputs took 21-25 ms against 15 with plain stores)
    _over_blocks(lambda first, last: entry(*args, first, last, int(direct == torch.bfloat16), path, int(given)), n,
                 blocksize)
    if out is not None and target is not out:
        return out.copy_(target)
    return target.to(dtype)


def _fresh(library: ctypes.CDLL, n: int, dtype: torch.dtype) -> torch.Tensor:
    """An output tensor, large ones advised onto huge pages (advice only: it changes how the
    memory is backed, never what it holds, so memory an allocator reuses is safe too)."""
    tensor = torch.empty(n, dtype=dtype)
    if _huge_pages and tensor.nbytes >= HUGE_PAGE_MIN_BYTES:
        library.advise_huge_pages(tensor.data_ptr(), tensor.nbytes)
    return tensor


def quantize_4bit(flat: torch.Tensor, midpoints: torch.Tensor, order: torch.Tensor, pad_code: int, blocksize: int,
                  library: ctypes.CDLL | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed codes, float32 absmax per block) of a flat float32 tensor."""
    library = library or _library()
    flat = flat.float().contiguous()
    midpoints, order = midpoints.float().contiguous(), order.to(torch.uint8).contiguous()
    n = flat.numel()
    packed = torch.empty(-(-n // 2), dtype=torch.uint8)
    absmax = torch.empty(-(-n // blocksize), dtype=torch.float32)
    args = (flat.data_ptr(), midpoints.data_ptr(), order.data_ptr(), pad_code, packed.data_ptr(), absmax.data_ptr(),
            n, blocksize)
    _over_blocks(lambda first, last: library.quantize_4bit(*args, first, last), n, blocksize)
    return packed, absmax
