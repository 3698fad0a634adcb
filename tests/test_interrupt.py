"""Deferred stop signals: a signal sets the stop flag the training loop polls; an ignored SIGINT stays ignored."""

import os
import signal

from charfw import interrupt


def test_sigint_and_sigterm_ask_the_loop_to_stop_and_handlers_come_back():
    before = signal.getsignal(signal.SIGINT)
    with interrupt.deferred_signals():
        assert interrupt.requested() is None
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)      # a second, different signal: still the one request
        assert interrupt.requested() == "SIGTERM"
    assert interrupt.requested() is None and signal.getsignal(signal.SIGINT) is before


def test_a_sigint_ignored_from_the_start_stays_ignored():
    """A background job's SIGINT is ignored: its doit ignores it too, so a worker must not stop on it alone
    (doit would wait for that worker's result forever)."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupt.deferred_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert interrupt.requested() is None
            os.kill(os.getpid(), signal.SIGTERM)   # SIGTERM (a dying doit) still stops it
            assert interrupt.requested() == "SIGTERM"
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


def test_a_repeated_request_is_one_request_where_twice_must_not_stop_at_once():
    """Ray repeats a cancellation (SIGINT) until the task ends: on a cluster node each is the same request."""
    import pytest

    with interrupt.deferred_signals(twice_stops_now=False):
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGINT)
        assert interrupt.requested() == "SIGINT"
    with interrupt.deferred_signals():
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
