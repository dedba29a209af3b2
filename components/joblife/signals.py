"""Stopping a long-running command on SIGTERM or SIGINT, without doing anything in the
signal handler itself.

A Python signal handler runs in the main thread between two bytecodes, wherever that
thread was. Setting a ``threading.Event`` there can deadlock: ``Event.set()`` takes the
event's lock, which the main thread may hold at that moment inside ``Event.wait()`` (the
services' idle waits), and the handler then waits for its own thread forever; a log line
written there can interleave with one being written. So the handler does nothing: the
interpreter writes the signal's number to a pipe (``signal.set_wakeup_fd``) and a thread
of its own reads it, logs, and sets the stop event.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger("joblife")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


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

    def handler(signum: int, _frame: FrameType | None) -> None:
        # Lock-free: Event.is_set() reads a flag. The pipe wakes the watcher.
        if second_interrupt_aborts and signum == signal.SIGINT and stop.is_set():
            raise KeyboardInterrupt

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    watcher = threading.Thread(
        target=_watch, args=(read_fd, stop, what), name="joblife-signals", daemon=True
    )
    watcher.start()
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        signal.set_wakeup_fd(previous_fd)
        os.close(write_fd)  # the watcher reads the end of the pipe and returns
        watcher.join(timeout=5)
        os.close(read_fd)


def _watch(read_fd: int, stop: threading.Event, what: str) -> None:
    """Set ``stop`` for each stop signal written to ``read_fd``, until its writer closes."""
    while data := os.read(read_fd, 64):
        for number in data:
            if number in STOP_SIGNALS:
                log.info("%s: %s", signal.Signals(number).name, what)
                stop.set()
