"""A multiple-choice benchmark in MMLU's layout, generated from the standard library itself, so
the MMLU evaluator can score an offline model (the micro-study's Table 4 measure).

Two subjects, written as dev/<subject>_dev.csv (5 shots) and test/ and val/ CSVs:
- `stdlib_module_of_function`: which module defines a top-level function (from the modules the
  built bases were pretrained on: the question asks what the base has read);
- `stdlib_module_of_function_finetune`: the same for the modules the stdlib instruction pairs
  come from, whose instruction names the module (fine-tuning can teach it).
Distractors are other modules, drawn with a fixed seed; a function name defined in more than
one module, or rebound by its module (deleted, reassigned), is never asked. Built once, cached on disk per
Python version.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import random
import sys
from pathlib import Path

from qlora_lab.cache import atomic_write_text, build_lock, cache_dir
from qlora_lab.data.stdlib import module_part, stdlib_files, stdlib_root

MC_VERSION = 4  # bump when the questions change
N_DEV, N_VAL, N_TEST = 5, 40, 60  # per subject
SUBJECTS = {"stdlib_module_of_function": "pretrain", "stdlib_module_of_function_finetune": "finetune"}


def stdlib_mmlu_dir() -> Path:
    """The benchmark's folder (dev/, val/, test/), generated on first use."""
    key = hashlib.sha256(f"{sys.version}|{stdlib_root()}|{MC_VERSION}".encode()).hexdigest()[:12]
    target = cache_dir() / "stdlib_mmlu" / key
    if (target / "test").is_dir():
        return target
    with build_lock(f"stdlib_mmlu-{key}"):
        if not (target / "test").is_dir():
            _write(target)
    return target


def _write(target: Path) -> None:
    definitions = _top_level_functions()
    for subject, part in SUBJECTS.items():
        rows = _questions([d for d in definitions if d[2] == part], seed=len(subject))
        splits = {"dev": rows[:N_DEV], "val": rows[N_DEV : N_DEV + N_VAL],
                  "test": rows[N_DEV + N_VAL : N_DEV + N_VAL + N_TEST]}
        for split, chunk in splits.items():
            buffer = io.StringIO()
            csv.writer(buffer).writerows(chunk)
            atomic_write_text(target / split / f"{subject}_{split}.csv", buffer.getvalue())


def _top_level_functions() -> list[tuple[str, str, str]]:
    """(function, module, part) for public top-level functions whose name is unique in the library."""
    found: dict[str, list[tuple[str, str]]] = {}
    root = stdlib_root()
    for path in stdlib_files():
        module = path.relative_to(root).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
        if any(part.startswith("_") for part in module.split(".")):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            continue
        rebound = _rebound_names(tree)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_") and node.name not in rebound:
                found.setdefault(node.name, []).append((module, module_part(path)))
    return sorted((name, places[0][0], places[0][1]) for name, places in found.items() if len(places) == 1)


def _rebound_names(tree: ast.Module) -> set[str]:
    """Top-level names a module deletes or assigns after all (sqlite3.dbapi2 deletes a helper it
    defined; distutils.cygwinccompiler sets a deprecated function to None): not asked about."""
    names = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else \
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _questions(definitions: list[tuple[str, str, str]], seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    modules = sorted({module for _, module, _ in definitions})
    picked = rng.sample(definitions, min(len(definitions), N_DEV + N_VAL + N_TEST))
    rows = []
    for name, module, _ in picked:
        options = rng.sample([m for m in modules if m != module], 3) + [module]
        rng.shuffle(options)
        rows.append([f"Which Python standard library module defines the function `{name}`?", *options,
                     "ABCD"[options.index(module)]])
    return rows


def heldout_source_texts() -> list[str]:
    """The source of the modules the built bases were not pretrained on: held-out text for
    perplexity (the stdlib instruction pairs come from these modules too)."""
    return [p.read_text(encoding="utf-8", errors="replace") for p in stdlib_files() if module_part(p) == "finetune"]
