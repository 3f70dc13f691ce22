"""Warm start for local sweeps: the libraries a run needs are imported once per launch, and
each local job's run is forked from the process that holds them.

Importing torch, transformers, peft, bitsandbytes and the Trainer takes about 10 s on a
2-core machine, more than a small run's own work; submitit's local executor starts every job
as a fresh interpreter that pays it again. So `hydra/launcher=local` starts one server per
launching process (`shared_server()`) and submits its jobs once the server has imported;
each job's process (submitit's own, which keeps its signals, requeue and result files) hands
its run to it (`call()`): the server forks a child that takes the
job's working folder, environment, stdout and stderr, runs the run and sends back its result.

Nothing runs twice and nothing outlives its job: a job falls back to running in its own
process only while no child has taken its run; the child kills itself when the job's process
goes away (kill -9 included), and the job kills the child when it is signalled (timeout,
preemption, cancel) before submitit's handler requeues it. Forking after these imports is
what torch's DataLoader workers do; CUDA cannot be forked, so the server refuses on a machine
with a visible GPU (its jobs then start cold). `QLORA_LAB_WARM_START=0` turns it off.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import importlib
import logging
import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

SOCKET_ENV = "QLORA_LAB_WARM_SOCKET"  # set by the launching process for its jobs
SWITCH_ENV = "QLORA_LAB_WARM_START"  # "0": every job imports its own libraries
START_ENV = "QLORA_LAB_PROCESS_START"  # the job process's start (Unix time), for start-up timing
READY_TIMEOUT_S = 600.0  # the launch waits this long for the server's imports, then its jobs start cold
HANDSHAKE_TIMEOUT_S = 60.0  # a job waits this long for a child to take its run, then runs it itself

# What a run imports before its first step and after (evaluation), heaviest first.
PRELOAD = ("torch", "bitsandbytes", "transformers", "transformers.trainer", "peft", "accelerate", "datasets",
           "rouge_score.rouge_scorer", "transformers.models.llama.modeling_llama", "qlora_lab.run", "qlora_lab.fit",
           "qlora_lab.model.build", "qlora_lab.data.load", "qlora_lab.data.tokens", "qlora_lab.evaluate.loss",
           "qlora_lab.evaluate.rouge", "qlora_lab.memory_estimate")


class NotStarted(Exception):
    """No child took the run: running it in the job's own process is safe."""


class WarmServer:
    """The launch's server process: started first, so its imports overlap the launch's own work."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="qlora-warm-")  # 0700: only this user may hand it code
        self.path = os.path.join(self.folder, "socket")
        self.log_path = os.path.join(self.folder, "server.log")
        with open(self.log_path, "w") as errors:
            self.process = subprocess.Popen([sys.executable, "-m", "qlora_lab.warm_start", self.path, str(os.getpid())],
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors)
        self.previous = os.environ.get(SOCKET_ENV)
        self.serving: bool | None = None  # known once ready() has waited

    def ready(self, timeout_s: float = READY_TIMEOUT_S) -> bool:
        """Wait for its imports; then the jobs submitted from here on hand their runs to it.
        If it cannot serve (a GPU, an import error), say why once: the jobs start cold."""
        if self.serving is None:
            self.serving = self._wait(timeout_s)
        return self.serving

    def _wait(self, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while not os.path.exists(self.path) and self.process.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        if os.path.exists(self.path):
            os.environ[SOCKET_ENV] = self.path  # submitit's local executor passes it to its jobs
            return True
        lines = open(self.log_path, errors="replace").read().strip().splitlines()
        why = lines[-1] if lines else f"no answer in {timeout_s:.0f} s"
        log.warning("warm start not used (%s): each job imports its own libraries", why)
        return False

    def stop(self) -> None:
        if self.previous is None:
            os.environ.pop(SOCKET_ENV, None)
        else:
            os.environ[SOCKET_ENV] = self.previous
        self.process.terminate()
        self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


_SHARED: WarmServer | None = None


def switched_off() -> bool:
    return os.environ.get(SWITCH_ENV, "1") == "0"


def shared_server() -> WarmServer | None:
    """This process's server, started on first use and kept for its later launches (a sweeper's
    batches, `hydra.sweeper.max_batch_size`), stopped when the process exits; None when off."""
    global _SHARED
    if switched_off():
        return None
    if _SHARED is None or _SHARED.process.poll() is not None:
        _SHARED = WarmServer()
        atexit.register(_SHARED.stop)
    return _SHARED


def call(function: Callable[..., Any], *args: Any) -> Any:
    """function(*args), in a child of the launch's warm server when there is one."""
    path = os.environ.get(SOCKET_ENV)
    if not path or switched_off():  # also in this job's own environment
        return function(*args)
    try:
        conn, pid = _hand_over(path, function, args)
    except NotStarted as why:
        log.warning("warm start not used (%s): this job imports its own libraries", why)
        return function(*args)
    finished = False
    try:
        try:
            kind, value = _receive(conn)
        except KeyboardInterrupt:  # Ctrl-C: the run gets it too and writes its record before it ends
            kind, value = _after_interrupt(conn, pid)
        finished = True
    except (OSError, EOFError):
        raise RuntimeError(f"the run's process (pid {pid}, forked by the warm server) ended without a result")
    finally:
        if not finished:  # this job was signalled or its wait broke: the run stops with it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        conn.close()
    if kind == "error":
        raise value
    return value


INTERRUPT_GRACE_S = 10.0  # how long an interrupted job waits for its run to write its record


def _after_interrupt(conn: socket.socket, pid: int) -> tuple[str, Any]:
    """The run's answer after SIGINT: it is sent SIGINT too (a launcher's cancel reaches only
    the job), and given INTERRUPT_GRACE_S to record where it stopped."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # submitit's controller forwards a second one
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    conn.settimeout(INTERRUPT_GRACE_S)
    try:
        return _receive(conn)
    except (OSError, EOFError):
        raise KeyboardInterrupt from None


def _hand_over(path: str, function: Callable[..., Any], args: tuple) -> tuple[socket.socket, int]:
    """Connect, send the run with this job's stdout and stderr; the child's pid once it took it."""
    import psutil

    request = {"function": function, "args": args, "cwd": os.getcwd(), "env": dict(os.environ),
               "started": psutil.Process().create_time(), "logging": _logging_spec()}
    try:
        data = pickle.dumps(request)
    except (pickle.PicklingError, AttributeError, TypeError) as err:
        raise NotStarted(f"the run cannot be sent: {err}") from None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(HANDSHAKE_TIMEOUT_S)
        conn.connect(path)
        sys.stdout.flush()
        sys.stderr.flush()
        _send(conn, data, fds=(sys.stdout.fileno(), sys.stderr.fileno()))
        pid = _receive(conn)["pid"]
    except (OSError, EOFError) as err:
        conn.close()
        raise NotStarted(f"{type(err).__name__}: {err}" if str(err) else type(err).__name__) from None
    conn.settimeout(None)
    return conn, pid


def _send(conn: socket.socket, message: Any, fds: tuple[int, ...] = ()) -> None:
    """A length-prefixed pickle (`message` may come pickled already), `fds` passed with it."""
    data = message if isinstance(message, bytes) else pickle.dumps(message)
    header = struct.pack("!Q", len(data))
    if fds:
        socket.send_fds(conn, [header], list(fds))
    else:
        conn.sendall(header)
    conn.sendall(data)


def _receive(conn: socket.socket, fds: list[int] | None = None) -> Any:
    """One message; with `fds`, the file descriptors that came with it are appended there."""
    header = b""
    while len(header) < 8:
        if fds is not None and not header:
            chunk, got, _, _ = socket.recv_fds(conn, 8, 4)
            fds.extend(got)
        else:
            chunk = conn.recv(8 - len(header))
        if not chunk:
            raise EOFError("connection closed")
        header += chunk
    size, data = struct.unpack("!Q", header)[0], bytearray()
    while len(data) < size:
        chunk = conn.recv(min(size - len(data), 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return pickle.loads(data)


def _logging_spec() -> dict:
    """The job's log set-up (Hydra's: console and `<job>.log`), for the child to repeat."""
    root = logging.getLogger()
    handlers = []
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler):
            handlers.append(("file", handler.baseFilename))
        elif isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr):
            handlers.append(("stream", "stdout" if handler.stream is sys.stdout else "stderr"))
    formats = [h.formatter._fmt for h in root.handlers if h.formatter is not None]
    return {"level": root.level, "format": formats[0] if formats else None, "handlers": handlers}


def _apply_logging(spec: dict) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = logging.Formatter(spec["format"])
    for kind, where in spec["handlers"]:
        handler = logging.FileHandler(where) if kind == "file" else logging.StreamHandler(getattr(sys, where))
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(spec["level"])


def serve(path: str, parent_pid: int) -> None:
    """Import, then listen at `path` (its appearing says: ready) and fork a child per job until the
    launching process is gone."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # asking must not start CUDA here
    import torch

    if torch.cuda.is_available():
        sys.exit("a GPU is visible, and CUDA cannot be forked")
    for name in PRELOAD:
        importlib.import_module(name)
    # Python's recipe for pre-fork servers: the children's collections then leave the imported
    # objects (and their pages) alone, and their scans for live tensors (the CPU peak's baseline)
    # skip them; importing leaves 144 bytes of tensors, which those scans no longer count.
    gc.freeze()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".binding")
    listener.listen(128)
    os.rename(path + ".binding", path)  # listening before anyone can see it
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    listener.settimeout(1.0)
    while os.getppid() == parent_pid:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        conn.settimeout(None)
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _child(conn)
        conn.close()


def _child(conn: socket.socket) -> None:
    """Become the job: its folder, environment, output and logging; run; answer; exit."""
    code = 1
    try:
        fds: list[int] = []
        request = _receive(conn, fds)
        for fd, target in zip(fds, (1, 2)):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ.pop(SOCKET_ENV, None)  # a run in here never hands itself over again
        os.environ[START_ENV] = repr(request["started"])
        _apply_logging(request["logging"])
        _send(conn, {"pid": os.getpid()})
        interrupted = threading.Event()
        signal.signal(signal.SIGINT, functools.partial(_interrupt_once, interrupted))
        threading.Thread(target=_die_with_job, args=(conn, interrupted), daemon=True).start()
        try:
            answer = ("ok", request["function"](*request["args"]))
        except BaseException as err:  # the job raises it, as if the run had run there
            answer = ("error", err if _picklable(err) else RuntimeError(f"{type(err).__name__}: {err}"))
        sys.stdout.flush()
        sys.stderr.flush()
        _send(conn, answer)
        code = 0
    finally:
        os._exit(code)


def _interrupt_once(interrupted: threading.Event, signum, frame) -> None:
    """Ctrl-C reaches the run once (KeyboardInterrupt); later SIGINTs are ignored."""
    if not interrupted.is_set():
        interrupted.set()
        raise KeyboardInterrupt


def _die_with_job(conn: socket.socket, interrupted: threading.Event) -> None:
    """The job's process went away (or has its answer): so does this child; after Ctrl-C, once
    the run has had INTERRUPT_GRACE_S to write its record (submitit kills an interrupted job
    within a second, before a loaded machine may have let the run record its step)."""
    with contextlib.suppress(OSError):
        conn.recv(1)
    if interrupted.is_set():
        time.sleep(INTERRUPT_GRACE_S)  # the main thread ends this process first when it is done
    os.kill(os.getpid(), signal.SIGKILL)


def _picklable(value: Any) -> bool:
    try:
        pickle.loads(pickle.dumps(value))
        return True
    except Exception:
        return False


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
