"""The orchestrator's wait during a database outage (issue 14, item 4): doubled per failed
cycle from 1 s, never above ``outage_backoff_max_seconds``, back to 1 s after a good cycle;
and its one "first cycle done" log line. No database and no real waiting: the cycles are
scripted and the stop event records the waits it is asked for."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence

import pytest
from joblife.config import Settings
from joblife.lifecycle.common import ServiceContext
from joblife.lifecycle.orchestrator import CycleReport, Orchestrator
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from tests.support.lifecycle import RecordingExecutor

DOWN = "down"
UP = "up"


class RecordingStop(threading.Event):
    """A stop event whose waits return at once and are recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None, "the orchestrator waited without a timeout"
        self.waits.append(timeout)
        return self.is_set()


def backoff_waits(settings: Settings, script: Sequence[str]) -> tuple[list[float], int]:
    """Run the orchestrator's loop through ``script`` (a database that is DOWN or UP per
    cycle), then stop it; the waits it asked for and how many cycles it ran."""
    stop = RecordingStop()
    # A lazy engine that is never connected: the loop only disposes of it.
    context = ServiceContext(create_engine("sqlite://"), settings, job_types={"unused": object})
    orchestrator = Orchestrator(context, RecordingExecutor(), ["monitor"], stop_event=stop)
    cycles: Iterator[str] = iter(script)
    ran = 0

    def run_once(only: Sequence[str] | None = None) -> CycleReport:
        nonlocal ran
        ran += 1
        state = next(cycles, None)
        if state is None:
            stop.set()
        elif state == DOWN:
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))
        # Busy: the next cycle follows at once (no idle wait among the recorded ones).
        report = CycleReport(busy=True)
        report.results["monitor"] = {"checked": 2}
        return report

    orchestrator.run_once = run_once  # type: ignore[method-assign]
    orchestrator.run_forever()
    return stop.waits, ran


def settings(**values: float) -> Settings:
    return Settings(amqp_url=None, publication_spool=None, **values)  # type: ignore[arg-type]


def test_the_outage_backoff_is_capped_by_the_setting_and_reset_by_a_good_cycle():
    waits, ran = backoff_waits(
        settings(outage_backoff_max_seconds=4), [*[DOWN] * 7, UP, *[DOWN] * 3]
    )
    assert waits == [1, 2, 4, 4, 4, 4, 4, *[1, 2, 4]]  # capped, then reset by the good cycle
    assert ran == 12  # every scripted cycle, then the one that stopped


def test_the_default_cap_is_ten_seconds():
    waits, _ = backoff_waits(settings(), [DOWN] * 30)
    assert settings().outage_backoff_max_seconds == 10
    assert waits[:5] == [1, 2, 4, 8, 10]
    assert max(waits) == 10 and waits[-1] == 10


def test_a_cap_below_the_first_wait_holds_from_the_first_wait():
    waits, _ = backoff_waits(settings(outage_backoff_max_seconds=0.5), [DOWN, DOWN, UP, DOWN])
    assert waits == [0.5, 0.5, 0.5]


def test_the_first_good_cycle_is_logged_once(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="joblife"):
        backoff_waits(settings(), [DOWN, UP, UP, DOWN, UP])
    lines = [r.getMessage() for r in caplog.records if "first cycle done" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].endswith(": monitor checked 2 in-flight jobs"), lines
