"""What the history says when an attempt fails (issue 17, items 6 and 7).

- A classified failure of the science step (a fatal or a retryable return code) names the
  science's own last log line in its message, redacted and bounded, and records no
  traceback of joblife's: the message is the whole story. Only an unexpected exception (a
  bug) keeps its traceback in the status details and the worker's log.
- The ``published`` status message names what confirmed the messages: the broker, or the
  fsync of the local spool.

Jobs run through ``run_worker`` in this process with a real process-runner science step
(the example type of tests/test_worker_steps.py) against the real PostgreSQL.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from joblife.config import Settings
from joblife.errors import InternalJobError
from joblife.lifecycle.common import ServiceContext, utc_now
from joblife.model import JobStatus, JobStatusChange
from joblife.publication import outbox
from joblife.publication.broker import Delivery, Outcome
from joblife.publication.relay import PublicationService
from joblife.publication.spool import spool_path
from joblife.publication.topology import Topology
from joblife.worker.runner import EXIT_DO_NOT_RELAUNCH, EXIT_RELAUNCH
from joblife.worker.steps import FAILURE_LINE_MAX_CHARS, last_log_line
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.test_publication import processed_jobs
from tests.test_worker_steps import WorkerJob, World

S = JobStatus


@pytest.fixture
def world(engine: Engine, db_url: str, tmp_path: Path) -> Iterator[World]:
    made = World(engine, db_url, tmp_path)
    yield made
    made.assert_clean()


def _science(world: World, monkeypatch: pytest.MonkeyPatch, command: list[str]) -> int:
    """A queued job whose science step is ``command`` run by the process runner."""
    monkeypatch.setattr(WorkerJob, "SCIENCE_RUNNER", "process")
    monkeypatch.setattr(WorkerJob, "EXTERNAL_DEPENDENCIES", {})
    monkeypatch.setattr(WorkerJob, "SCIENCE_COMMAND", command)
    (world.tmp / "storage" / "in").mkdir(parents=True, exist_ok=True)
    (world.tmp / "storage" / "in" / "x").write_bytes(b"x")
    return world.job(input_path="in/x")


def _failed(world: World, job_id: int, status: JobStatus, exit_code: int) -> JobStatusChange:
    assert world.run(job_id) == exit_code
    change = world.last(job_id)
    assert world.load(job_id).status is status, change.message
    assert change.status == status
    return change


# -- item 6: the science's own words, no traceback --------------------------------------------
def test_a_fatal_return_code_quotes_the_science_s_last_line_without_a_traceback(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    job_id = _science(
        world,
        monkeypatch,
        ["sh", "-c", 'echo reading bands; echo "ValueError: band B04 missing" >&2; echo; exit 4'],
    )
    change = _failed(world, job_id, S.INTERNAL_ERROR, EXIT_DO_NOT_RELAUNCH)
    assert change.message == (
        "InternalJobError: science step failed with return code 4: ValueError: band B04 missing"
    )
    assert "Traceback" not in change.message
    assert "traceback" not in change.details
    # The tail is still there, whole (the blank last line included).
    assert change.details["log_tail"] == ["reading bands", "ValueError: band B04 missing", ""]
    assert change.details["processing"]["return_code"] == 4


def test_a_python_science_crash_is_summed_up_by_its_exception_line(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """Python's own traceback is the science's log (in ``log_tail``); the message carries
    its last line only, and joblife adds no traceback of its own."""
    crash = "import sys; print('loading', flush=True); raise ValueError('band B04 missing')"
    job_id = _science(world, monkeypatch, [sys.executable, "-c", crash])
    change = _failed(world, job_id, S.INTERNAL_ERROR, EXIT_DO_NOT_RELAUNCH)
    assert change.message.endswith("return code 1: ValueError: band B04 missing")
    assert "Traceback" not in change.message
    assert "traceback" not in change.details
    assert change.details["log_tail"][0] == "loading"
    assert change.details["log_tail"][1] == "Traceback (most recent call last):"


def test_a_retryable_return_code_quotes_the_line_too(world: World, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(WorkerJob, "RETRYABLE_RETURN_CODES", frozenset({75}))
    job_id = _science(
        world, monkeypatch, ["sh", "-c", "echo 'ndvi: storage busy: try later' >&2; exit 75"]
    )
    change = _failed(world, job_id, S.EXTERNAL_ERROR, EXIT_RELAUNCH)
    assert change.message == (
        "ExternalJobError: science step returned 75, a retryable code for job type "
        "worker_test: ndvi: storage busy: try later"
    )
    assert "traceback" not in change.details


def test_the_quoted_line_is_redacted_one_line_and_bounded(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    long_tail = "x" * (2 * FAILURE_LINE_MAX_CHARS)
    script = (
        r"printf 'progress 10%%\rprogress 90%%\r\033[31mfailed\033[0m to open "
        r"s3://reader:hunter2secret@store/in\tnow %s\n\n' "
        f"{long_tail}; exit 3"
    )
    job_id = _science(world, monkeypatch, ["sh", "-c", script])
    change = _failed(world, job_id, S.INTERNAL_ERROR, EXIT_DO_NOT_RELAUNCH)
    quoted = change.message.split("return code 3: ", 1)[1]
    assert "hunter2secret" not in change.message  # redacted as the tail is
    assert quoted.startswith("failed to open s3://reader:***@store/in now xxx")
    assert "progress" not in quoted and "\x1b" not in quoted and "\t" not in quoted
    assert len(quoted) == FAILURE_LINE_MAX_CHARS and quoted.endswith("\u2026")
    assert "hunter2secret" not in str(change.details)


def test_a_silent_failure_says_it_wrote_nothing(world: World, monkeypatch: pytest.MonkeyPatch):
    job_id = _science(world, monkeypatch, ["sh", "-c", "exit 4"])
    change = _failed(world, job_id, S.INTERNAL_ERROR, EXIT_DO_NOT_RELAUNCH)
    assert change.message == (
        "InternalJobError: science step failed with return code 4 and wrote no log output"
    )


def test_last_log_line_picks_the_last_line_with_text():
    assert last_log_line(["a", "ValueError: x", "", "   ", "\x1b[0m"]) == "ValueError: x"
    assert last_log_line(["done 50%\rdone 100%\r"]) == "done 100%"
    assert last_log_line(["a\x00b\x07c"]) == "a b c"
    # A window title (OSC) goes, and so do the marks that would reorder the text on a page.
    line = "\x1b]0;title\x07error: \u202egnp.exe\u202c bad"
    assert last_log_line([line]) == "error: gnp.exe bad"
    assert last_log_line(["", " \t"]) is None
    assert last_log_line([]) is None


def test_a_classified_failure_of_a_hook_has_no_traceback(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """A type's hook that raises InternalJobError said what went wrong: no traceback."""

    def refuse(self: WorkerJob, context: object) -> None:
        raise InternalJobError("tile T31 is outside the service area")

    monkeypatch.setattr(WorkerJob, "job_pre_processing", refuse)
    job_id = _science(world, monkeypatch, ["true"])
    change = _failed(world, job_id, S.INTERNAL_ERROR, EXIT_DO_NOT_RELAUNCH)
    assert change.message == "InternalJobError: tile T31 is outside the service area"
    assert "traceback" not in change.details


def test_an_unexpected_exception_keeps_its_traceback(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """A bug (an exception no step classified) is recorded with the end of its traceback in
    the details, and logged with it."""

    def buggy(self: WorkerJob, context: object, return_code: int) -> None:
        {}["missing"]  # the bug under test

    monkeypatch.setattr(WorkerJob, "job_post_processing", buggy)
    job_id = _science(world, monkeypatch, ["true"])
    with caplog.at_level(logging.ERROR, logger="joblife.worker.runner"):
        change = _failed(world, job_id, S.INTERNAL_ERROR, EXIT_DO_NOT_RELAUNCH)
    assert change.message == "KeyError: 'missing'"
    traceback = change.details["traceback"]
    assert traceback[-1] == "KeyError: 'missing'\n"
    assert any("in buggy" in frame for frame in traceback)
    [record] = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[0] is KeyError


# -- item 7: what confirmed the messages ----------------------------------------------------
def _published_message(session: Session, job_id: int) -> str | None:
    return session.scalars(
        select(JobStatusChange.message).where(
            JobStatusChange.job_id == job_id, JobStatusChange.status == int(S.PUBLISHED)
        )
    ).one()


def test_the_published_message_names_what_confirmed_the_products(session: Session):
    """outbox.record says "the broker" by default and what the relay tells it otherwise."""
    topology = Topology.from_settings(Settings())
    spool = "/srv/joblife/spool/publications.jsonl"
    for confirmed_by in (None, outbox.by_the_spool(spool)):
        [job_id] = processed_jobs(session, 1, prefix="B" if confirmed_by is None else "S")
        claimed = outbox.claim(session, 10, topology, {})
        assert [job.id for job in claimed] == [job_id]
        outbox.start_publication(session, claimed)
        answers = [Delivery(Outcome.CONFIRMED, utc_now()) for _ in claimed[0].rows]
        extra = {} if confirmed_by is None else {"confirmed_by": confirmed_by}
        assert outbox.record(session, claimed, answers, {}, **extra).done == 1
        session.commit()
        expected = f"the fsync of the publication spool {spool}" if confirmed_by else "the broker"
        assert _published_message(session, job_id) == f"every product confirmed by {expected}"


def test_a_spool_relay_says_the_spool_s_fsync_confirmed_them(
    session: Session, engine: Engine, tmp_path: Path
):
    [job_id] = processed_jobs(session, 1)
    settings = Settings(amqp_url=None, publication_spool=str(tmp_path / "spool"))
    service = PublicationService(ServiceContext(engine, settings))
    try:
        assert service.run_cycle().result.done == 1
    finally:
        service.close()
    path = spool_path(str(tmp_path / "spool"))
    assert _published_message(session, job_id) == (
        f"every product confirmed by the fsync of the publication spool {path}"
    )
