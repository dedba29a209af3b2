"""Stopping a long-running command on SIGTERM or SIGINT, without doing anything in the
signal handler that could block.

A Python signal handler runs in the main thread between two bytecodes, wherever that
thread was. Setting a ``threading.Event`` there can deadlock: ``Event.set()`` takes the
event's lock, which the main thread may hold at that moment inside ``Event.wait()`` (the
services' idle waits), and the handler then waits for its own thread forever; a log line
written there can interleave with one being written. So the handler only records the
signal, and a thread of its own notices it within :data:`POLL_SECONDS`, logs, and sets
the stop event. (Not a pipe and ``signal.set_wakeup_fd``: the workers this process forks
would inherit both, and a worker's SIGTERM would then reach this process's pipe.)
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger("joblife")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: How soon the watcher notices a recorded signal (seconds).
POLL_SECONDS = 0.05


@contextmanager
def stop_on_signals(
    stop: threading.Event, what: str = "stopping", *, second_interrupt_aborts: bool = False
) -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT set ``stop`` (and log ``SIGTERM: what``).
    ``second_interrupt_aborts``: a SIGINT once ``stop`` is set raises KeyboardInterrupt
    (Ctrl-C twice: a user who will not wait for the current cycle); else further signals
    change nothing (a supervisor's second SIGTERM must not cut a clean shutdown short).

    Outside the main thread (where no handler can be installed), a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []  # list.append is atomic: nothing in the handler can block

    def handler(signum: int, _frame: FrameType | None) -> None:
        if second_interrupt_aborts and signum == signal.SIGINT and stop.is_set():
            raise KeyboardInterrupt  # is_set() reads a flag, without the event's lock
        received.append(signum)

    done = threading.Event()
    watcher = threading.Thread(
        target=_watch, args=(received, stop, what, done), name="joblife-signals", daemon=True
    )
    watcher.start()
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        done.set()
        watcher.join(timeout=5)


def _watch(received: list[int], stop: threading.Event, what: str, done: threading.Event) -> None:
    """Set ``stop`` (once per signal, logged) as signals are appended to ``received``,
    and for those still unread once ``done`` (a signal just before the block ended)."""
    seen = 0
    while True:
        finished = done.wait(POLL_SECONDS)
        while seen < len(received):
            log.info("%s: %s", signal.Signals(received[seen]).name, what)
            seen += 1
            stop.set()
        if finished:
            return
