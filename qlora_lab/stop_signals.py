"""Ctrl-C (SIGINT) and SIGTERM (what a scheduler, `timeout` or `kill` sends) stop a run the same
way: at the end of the training step, with a `failed` record saying where, the launch's summary,
and the shell's exit status for the signal (130, 143). Torch-free: the entry imports it first.

A handler is installed only over the signal's default, so a handler someone else installed stays:
on SLURM, submitit's own (USR2 requeues and resumes; its SIGTERM handler only logs)."""

from __future__ import annotations

import signal
import threading

STOP_SEEN = threading.Event()  # set by the handler; the training stops at its next step's end
_seen = {"signal": None}
NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
EXIT_STATUS = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as a shell reports it


class Stopped(KeyboardInterrupt):
    """A run stopped by a signal, with the optimizer step reached: the record's error line."""

    def __init__(self, signal_name: str, step: int):
        verb = "interrupted" if signal_name == "SIGINT" else "terminated"
        super().__init__(f"{verb} ({signal_name}) at step {step}")
        self.signal_name, self.step = signal_name, step

    def __reduce__(self):  # a warm-started run sends it to its job
        return Stopped, (self.signal_name, self.step)


def signal_seen() -> str:
    """The stopping signal's name; SIGINT for a KeyboardInterrupt no handler of ours saw."""
    return _seen["signal"] or "SIGINT"


def exit_status() -> int:
    return EXIT_STATUS[signal_seen()]


def _stop(signum, frame):
    for sig in NAMES:  # later signals (a second Ctrl-C, a launcher forwarding the first) cannot cut the record short
        signal.signal(sig, signal.SIG_IGN)
    _seen["signal"] = NAMES[signum]
    STOP_SEEN.set()  # should this KeyboardInterrupt be swallowed by a library, the training stops at its next step
    raise KeyboardInterrupt


def catch_stop_signals() -> None:
    """In the main thread: SIGINT and SIGTERM raise KeyboardInterrupt once, then are ignored."""
    STOP_SEEN.clear()
    _seen["signal"] = None
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, _stop):
        signal.signal(signal.SIGINT, _stop)
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, _stop):
        signal.signal(signal.SIGTERM, _stop)
