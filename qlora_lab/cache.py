"""The on-disk cache for things every run of a sweep would otherwise rebuild.

Keyed by the caller (a hash of whatever decides the content); written atomically under a file
lock, so parallel jobs of one sweep build a thing once and never read half of it.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def cache_dir() -> Path:
    """QLORA_LAB_CACHE, else ~/.cache/qlora_lab."""
    root = os.environ.get("QLORA_LAB_CACHE") or Path.home() / ".cache" / "qlora_lab"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
    """Exclusive lock across processes, held while the block runs."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_lock(name: str):
    """Lock on `name` in the cache (parallel jobs building the same thing)."""
    return file_lock(cache_dir() / f"{name}.lock")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """`write(temp_path)` into a temp file in the same folder, then rename: readers see all or
    nothing, a failed write leaves nothing behind. The file gets the user's umask, as an ordinary
    write would (mkstemp's own 0600 would hide records from the rest of a group sharing a sweep
    folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.close(fd)
        write(tmp)  # a writer may replace the file (safetensors does): its mode is set after
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """atomic_write of a text file (UTF-8)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def cached_json(name: str, build: Callable[[], object]) -> object:
    """The JSON value cached as `name`, built (once, under a lock) when missing."""
    path = cache_dir() / name
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    with build_lock(name):
        if not path.exists():
            atomic_write_text(path, json.dumps(build()))
    return json.loads(path.read_text(encoding="utf-8"))
