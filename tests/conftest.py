"""Shared test helpers: the real CLI in a subprocess, offline, and small built bases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"

# Never the network: wandb offline, the hub unreachable on purpose.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (`make test`: two workers on two cores) each worker and the runs it starts
# get one torch thread, so the workers share the cores instead of fighting over them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def run_cli(*args: str, cwd: Path, timeout: int = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m qlora_lab.train ARGS` as a user runs it (`env`: variables set on top of ours)."""
    return subprocess.run([sys.executable, "-m", "qlora_lab.train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def records_under(sweep_dir: Path) -> dict[str, dict]:
    """job folder name -> its record.json, parsed."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/record.json"))}


@pytest.fixture(scope="session")
def demo_sweep(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """The issue's 4-run multirun of `tiny`: nf4/fp4 x LoRA on all/qv, 30 steps each.

    The tiny base is built first (once per machine, cached), so the runs time only themselves.
    Run once per test session: under pytest-xdist the workers share it through their common
    base folder (pytest-xdist's recipe, a lock and a marker), so its users only read it."""
    from qlora_lab.cache import file_lock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # this session's, either way
    out, sweep_dir = root / "demo-sweep", root / "demo-sweep" / "sweep"
    done = out / "launch.json"
    with file_lock(root / "demo-sweep.lock"):
        if not done.exists():
            tiny_base_dir()
            out.mkdir(exist_ok=True)
            proc = run_cli("-m", "dtype=nf4,fp4", "lora.targets=all,qv", "train.max_steps=30",
                           f"hydra.sweep.dir={sweep_dir}", cwd=out)
            done.write_text(json.dumps({"args": proc.args, "returncode": proc.returncode, "stdout": proc.stdout,
                                        "stderr": proc.stderr}))
    launched = json.loads(done.read_text())
    return subprocess.CompletedProcess(**launched), sweep_dir


def tiny_base_dir() -> Path:
    """The default `tiny` base, built (a few minutes, once per machine) or read from the cache."""
    from hydra import compose, initialize_config_dir

    from qlora_lab.config import run_config
    from qlora_lab.model.tiny import built_model_dir
    from qlora_lab.sweep import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = run_config(compose(config_name="config"))
    return built_model_dir(config.model)


def fastchat_questions(n: int = 80) -> str:
    """Questions in FastChat's vicuna_bench layout (question_id, category, turns), written here."""
    return "".join(json.dumps({"question_id": i, "category": "generic", "turns": [f"What is question {i} about?"]})
                   + "\n" for i in range(1, n + 1))


@pytest.fixture
def file_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/served; yields (base URL, request paths seen)."""
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    served = tmp_path / "served"
    served.mkdir()
    seen: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
