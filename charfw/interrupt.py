"""Stopping a training cleanly: a signal asks, the loop saves its state at the next step and stops.

Entry points (the build's train action, `charfw train`) run training inside
`deferred_signals()`: SIGINT (Ctrl-C) or SIGTERM (a killed or interrupted `doit`, whose
workers get SIGTERM when it dies: `die_with_parent`) only sets a flag that the loop polls
between steps, so the state it saves is whole; Ctrl-C twice interrupts at once.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from contextlib import contextmanager

from charfw.errors import CharfwError

_requested: list[str] = []
PR_SET_PDEATHSIG = 1


class Interrupted(CharfwError):
    """Training stopped on request; the message says where it was saved."""

    def __init__(self, message: str):
        super().__init__(message)
        self.signal = requested()


def requested() -> str | None:
    """The name of the signal that asked training to stop, if one did."""
    return _requested[0] if _requested else None


@contextmanager
def deferred_signals(twice_stops_now: bool = True):
    """SIGINT/SIGTERM set the stop flag instead of killing the process (main thread only).

    `twice_stops_now`: a second Ctrl-C interrupts at once. A cluster task says False: Ray repeats its
    cancellation (a SIGINT) every few seconds until the task ends, and each is the same request.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ask(signum, frame):
        name = signal.Signals(signum).name
        if twice_stops_now and _requested and name == "SIGINT" and _requested[0] == "SIGINT":
            raise KeyboardInterrupt  # Ctrl-C twice: stop now
        if not _requested:  # a dying doit may deliver SIGTERM more than once: one request
            _requested.append(name)

    # A SIGINT ignored from the start (a job started in the background by a script) stays ignored, as
    # Python itself leaves it: doit's main process ignores it too, and a worker that stopped on it alone
    # would leave doit waiting for a result forever.
    taken = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
    old = {s: signal.signal(s, ask) for s in taken}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        _requested.clear()


def die_with_parent() -> None:
    """Linux: get SIGTERM when the parent process dies (a killed `doit -n N` takes its workers along)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
