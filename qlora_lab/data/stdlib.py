"""Real text that ships with every Python: the standard library's own source.

Two disjoint parts, split by a stable hash of each module's path, so a base pretrained on one
part is fine-tuned and evaluated on functions it never saw:
- `pretrain_text()`: the source of the pretraining modules (for the locally built bases);
- `instruction_rows()`: every documented function of the other modules, as
  (signature + docstring -> body) rows, in file and line order.
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
import textwrap
import sys
from pathlib import Path

from qlora_lab.cache import cached_json

_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "__pycache__", "turtledemo"}
MAX_BODY_LINES = 30
MAX_DOC_CHARS = 800
ROWS_VERSION = 1  # bump when the extraction rules change


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """The library's modules, sorted: tests and tools left out, as they are not the library."""
    root = stdlib_root()
    return sorted(p for p in root.rglob("*.py") if not _SKIP_DIRS & set(p.relative_to(root).parts))


def module_part(path: Path) -> str:
    """'pretrain' or 'finetune', from a hash of the module's path: stable across machines."""
    rel = path.relative_to(stdlib_root()).as_posix()
    return "pretrain" if hashlib.sha256(rel.encode()).digest()[0] < 128 else "finetune"


def pretrain_text() -> str:
    parts = [p.read_text(encoding="utf-8", errors="replace") for p in stdlib_files() if module_part(p) == "pretrain"]
    return "\n\n".join(parts)


def instruction_rows() -> list[dict]:
    """Rows {module, line, prompt, body}: a documented function's header + docstring, its body.

    Parsing the library takes seconds, so the rows are cached on disk per Python version.
    """
    key = hashlib.sha256(f"{sys.version}|{stdlib_root()}|{ROWS_VERSION}".encode()).hexdigest()[:16]
    return cached_json(f"stdlib/rows-{key}.json", _extract_rows)


def _extract_rows() -> list[dict]:
    rows = []
    root = stdlib_root()
    for path in stdlib_files():
        if module_part(path) != "finetune":
            continue
        module = path.relative_to(root).with_suffix("").as_posix().replace("/", ".")
        rows.extend(_function_rows(path.read_text(encoding="utf-8", errors="replace"), module))
    return rows


def _function_rows(text: str, module: str) -> list[dict]:
    try:
        tree = ast.parse(text)
    except SyntaxError:  # a few stdlib files are templates, not Python
        return []
    lines = text.splitlines()
    rows = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or len(node.body) < 2:
            continue
        doc = node.body[0]
        if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)):
            continue
        if len(doc.value.value) > MAX_DOC_CHARS or node.end_lineno - doc.end_lineno > MAX_BODY_LINES:
            continue
        segment = textwrap.dedent("\n".join(lines[node.lineno - 1 : node.end_lineno]))
        split = doc.end_lineno - node.lineno + 1
        seg_lines = segment.splitlines()
        prompt, body = "\n".join(seg_lines[:split]), "\n".join(seg_lines[split:])
        if body.strip():
            rows.append({"module": module, "line": node.lineno, "prompt": prompt, "body": body})
    rows.sort(key=lambda r: r["line"])
    return rows
