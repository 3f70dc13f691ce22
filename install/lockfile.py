"""The lock, read and checked: what `make install` hands pip, and the proof that the venv holds it.

`requirements-lock.txt` (pip-compile's output, committed) pins every package, torch as the CPU
build. `install/torch-cuda.txt` holds what differs on a machine with an NVIDIA GPU: the CUDA
build of the same torch, its nvidia-* libraries and the triton it was built with. Plain stdlib:
it runs before the venv has anything in it.

    python install/lockfile.py requirements {cpu|cuda}   the pins to install into the venv, one per line
    python install/lockfile.py refs                      the test references' pins (pyproject's `refs`), apart
    python install/lockfile.py cuda-delta CPU_LOCK CUDA  the CUDA pins not in the CPU lock
    python install/lockfile.py check {cpu|cuda}          pip freeze == the pins, or exit 1
    python install/lockfile.py drift FREEZE              what a `pip freeze` file holds that the lock does not
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements-lock.txt"
CUDA = ROOT / "install" / "torch-cuda.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(\S+)")
OWN = "qlora-lab"  # installed editable from the checkout, beside the lock


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """name -> version of every `name==version` line (comments and `# via` lines skipped)."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line.strip())
        if match:
            found[canonical(match.group(1))] = match.group(3)
    return found


def requirements(torch: str) -> dict[str, str]:
    """The venv's pins for one torch build: the lock less the test references, with the CUDA
    file's pins over it for `cuda`."""
    if torch not in ("cpu", "cuda"):
        raise SystemExit(f"TORCH={torch!r}: must be cpu or cuda")
    apart = set(refs())
    locked = {name: version for name, version in pins(LOCK).items() if name not in apart}
    return {**locked, **pins(CUDA)} if torch == "cuda" else locked


def vias(path: Path) -> dict[str, set[str]]:
    """name -> what pip-compile's `# via` comments say needs it (`qlora-lab` for a direct one)."""
    needed: dict[str, set[str]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line.strip())
        if match:
            current = canonical(match.group(1))
            needed[current] = set()
            continue
        text = line.strip().lstrip("#").strip().removeprefix("via").strip()
        if current and line.startswith("    #") and text:
            needed[current].add(OWN if text.startswith(OWN) else canonical(text.split()[0]))
    return needed


def refs() -> dict[str, str]:
    """The pins only pyproject's `refs` extra needs: its packages, and what nothing else needs."""
    import tomllib

    roots = {canonical(re.split(r"[<>=!~\[ ;]", spec)[0])
             for spec in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["refs"]}
    needed, locked = vias(LOCK), pins(LOCK)
    apart = set(roots)
    grew = True
    while grew:  # a package all of whose needers are apart is apart too
        grew = False
        for name, by in needed.items():
            if name not in apart and by and by <= apart:
                apart.add(name)
                grew = True
    return {name: locked[name] for name in sorted(apart) if name in locked}


def cuda_delta(cpu_lock: Path, cuda_lock: Path) -> list[str]:
    """The CUDA lock's pins that the CPU lock lacks or pins otherwise (torch, triton, nvidia-*)."""
    cpu, cuda = pins(cpu_lock), pins(cuda_lock)
    return [f"{name}=={version}" for name, version in sorted(cuda.items()) if cpu.get(name) != version]


def frozen(python: str) -> dict[str, str]:
    """What the venv holds, as `pip freeze` says it (pip itself and our own editable install aside)."""
    out = subprocess.run([python, "-m", "pip", "freeze", "--all", "--exclude-editable"], capture_output=True,
                         text=True, check=True).stdout
    held = {}
    for line in out.splitlines():
        match = PIN.match(line.strip())
        if match and canonical(match.group(1)) not in ("pip", OWN):
            held[canonical(match.group(1))] = match.group(3)
    return held


def differences(wanted: dict[str, str], held: dict[str, str]) -> list[str]:
    lines = [f"{name}: locked {version}, installed {held.get(name, 'nothing')}"
             for name, version in sorted(wanted.items()) if held.get(name) != version]
    lines += [f"{name}: installed {version}, not in the lock" for name, version in sorted(held.items())
              if name not in wanted]
    return lines


def main(argv: list[str]) -> int:
    if argv[:1] == ["requirements"] and len(argv) == 2:
        print("\n".join(f"{name}=={version}" for name, version in requirements(argv[1]).items()))
        return 0
    if argv == ["refs"]:
        print("\n".join(f"{name}=={version}" for name, version in refs().items()))
        return 0
    if argv[:1] == ["cuda-delta"] and len(argv) == 3:
        print("\n".join(cuda_delta(Path(argv[1]), Path(argv[2]))))
        return 0
    if argv[:1] == ["check"] and len(argv) == 2:
        wrong = differences(requirements(argv[1]), frozen(sys.executable))
        for line in wrong:
            print(f"lock check: {line}", file=sys.stderr)
        if not wrong:
            print(f"lock check: the venv holds exactly the lock ({len(requirements(argv[1]))} packages, torch {argv[1]})")
        return 1 if wrong else 0
    if argv[:1] == ["drift"] and len(argv) == 2:  # make test-newest: names compared as pip compares them
        moved = differences(pins(LOCK), pins(Path(argv[1])))
        print("\n".join(moved) if moved else "none: the newest versions are the lock's")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
