"""SIGTERM and SIGINT stop a long-running command through a thread of their own, never by
setting the stop event inside the signal handler (which could deadlock the main thread
waiting on that event): joblife.signals.stop_on_signals."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from joblife.signals import stop_on_signals


def test_a_stop_signal_sets_the_event_and_the_handlers_are_restored_after() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for signum in (signal.SIGTERM, signal.SIGINT):
        stop = threading.Event()
        with stop_on_signals(stop):
            os.kill(os.getpid(), signum)
            assert stop.wait(10), signal.Signals(signum).name
            os.kill(os.getpid(), signum)  # a second one changes nothing
        assert not [t for t in threading.enumerate() if t.name == "joblife-signals"]
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_second_interrupt_aborts_when_asked() -> None:
    stop = threading.Event()
    with pytest.raises(KeyboardInterrupt), stop_on_signals(stop, second_interrupt_aborts=True):
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.wait(10)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # interrupted by the KeyboardInterrupt long before


@pytest.mark.timeout(60)  # a deadlock fails here rather than after the suite's 300 s
def test_signals_in_a_tight_wait_loop_never_block_the_main_thread() -> None:
    """The main thread spins in Event.wait(0), holding the event's lock most of the time:
    a handler that set the event itself deadlocked there (16 runs in 30, in a review).
    Twenty signals from another thread; the loop must see the stop each time."""
    for _ in range(20):
        stop = threading.Event()
        with stop_on_signals(stop):
            threading.Timer(0.005, os.kill, (os.getpid(), signal.SIGINT)).start()
            deadline = time.monotonic() + 10
            while not stop.wait(0):
                assert time.monotonic() < deadline, "the stop never came"


def test_outside_the_main_thread_it_installs_nothing() -> None:
    stop = threading.Event()
    seen: list[object] = []

    def in_a_thread() -> None:
        with stop_on_signals(stop):
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    worker = threading.Thread(target=in_a_thread)
    worker.start()
    worker.join(10)
    assert seen == [before]


def test_a_forked_child_does_not_hold_the_watcher() -> None:
    """Workers are forked while the block runs: nothing they inherit (a pipe's end, with
    signal.set_wakeup_fd, kept the watcher from ending for as long as they lived: every
    demo took 5 s more) keeps the block from ending at once."""
    stop = threading.Event()
    with stop_on_signals(stop):
        child = os.fork()
        if child == 0:  # pragma: no cover - the child
            time.sleep(30)
            os._exit(0)
    try:
        assert not [t for t in threading.enumerate() if t.name == "joblife-signals"]
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_a_signal_just_before_the_block_ends_still_stops() -> None:
    """Recorded by the handler, not yet seen by the watcher when the block ends: the stop
    is set all the same (a Ctrl-C as the demo's loop ends must not be lost)."""
    for _ in range(20):
        stop = threading.Event()
        with stop_on_signals(stop):
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.is_set()
