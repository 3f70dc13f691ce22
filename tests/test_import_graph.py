"""The architecture's import rules, checked on the code (AST, lazy imports included):
no cycle in qlora_lab, qlora_kernels or qlora_analysis; nothing imports the entry module
`qlora_lab.train`; the run side imports nothing from the launch side; qlora_analysis imports
nothing of qlora_lab but the record schema; config and records load no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGES = {"qlora_lab": REPO / "qlora_lab", "qlora_kernels": REPO / "kernels" / "qlora_kernels", "qlora_analysis": REPO / "analysis" / "qlora_analysis"}
RUN_SIDE = ("qlora_lab.run", "qlora_lab.fit", "qlora_lab.records", "qlora_lab.config", "qlora_lab.model",
            "qlora_lab.data", "qlora_lab.evaluate", "qlora_lab.measure")
LAUNCH_SIDE = ("qlora_lab.launch", "qlora_lab.sweep", "qlora_lab.train")


def modules() -> dict[str, Path]:
    found = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that `name` imports anywhere in its body (functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
            targets = submodules or [base]  # `from pkg import mod` imports mod; `from mod import name`, mod
        else:
            continue
        out |= {t for t in targets if t in known}
    return out - {name}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle's members (Tarjan's strongly connected components of more than one module)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_anywhere():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_imports_the_entry_module_and_the_run_imports_no_launch_code():
    edges = graph()
    assert not [name for name, deps in edges.items() if "qlora_lab.train" in deps]
    run_side = {n: d for n, d in edges.items() if n.startswith(RUN_SIDE)}
    leaks = {n: sorted(d for d in deps if d.startswith(LAUNCH_SIDE)) for n, deps in run_side.items()}
    assert {n: d for n, d in leaks.items() if d} == {}


def test_the_run_reads_no_launch_environment_variable():
    for name, path in modules().items():
        if name.startswith(RUN_SIDE):
            text = path.read_text(encoding="utf-8")
            assert "QLORA_LAB_LAUNCH" not in text and "QLORA_LAB_WARM" not in text, name


def test_analysis_imports_only_the_record_schema_of_qlora_lab():
    edges = graph()
    used = {d for n, deps in edges.items() if n.startswith("qlora_analysis") for d in deps if d.startswith("qlora_lab")}
    assert used <= {"qlora_lab.records"}, used


def test_config_and_the_model_package_do_not_depend_on_each_other():
    """The registries both read sit below them (qlora_lab.catalog): config imports nothing of model/."""
    edges = graph()
    config_side = {n: d for n, d in edges.items() if n in ("qlora_lab.config", "qlora_lab.config_eval",
                                                           "qlora_lab.config_checks", "qlora_lab.catalog")}
    assert {n: sorted(x for x in d if x.startswith("qlora_lab.model")) for n, d in config_side.items()
            if any(x.startswith("qlora_lab.model") for x in d)} == {}
    assert "qlora_lab.catalog" in edges["qlora_lab.config"]


def test_config_and_records_load_no_torch():
    code = "import sys, qlora_lab.config, qlora_lab.records; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr[-1000:]


def test_the_analysis_starts_without_hydra_omegaconf_scipy_or_matplotlib():
    """A report's serial start-up: importing `qlora_lab` registered Hydra's schemas (0.28 s of
    its 0.97 s); the t quantiles imported scipy.special in both of its processes."""
    code = ("import sys, qlora_analysis.report, qlora_analysis.tables as t; t._load(); "
            "print(sorted(m for m in ('hydra', 'omegaconf', 'scipy', 'matplotlib', 'torch') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_importing_the_sweep_package_registers_what_composing_needs():
    code = ("import sys, qlora_lab; print('hydra' in sys.modules); import qlora_lab.sweep; "
            "from omegaconf import OmegaConf; from hydra.core.config_store import ConfigStore; "
            "print(OmegaConf.has_resolver('pick'), OmegaConf.has_resolver('hours_to_min'), "
            "'dtype.yaml' in ConfigStore.instance().list('schema'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True", "True", "True"]
