"""``joblife stats`` and ``joblife jobs stale`` on real PostgreSQL: the figures are those of
the history, and a stale job's reason is the one the monitor gives when it acts on it."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from joblife.cli.main import app
from joblife.config import get_settings
from joblife.db.status import set_job_status
from joblife.lifecycle.common import ServiceContext, utc_now
from joblife.lifecycle.monitor import Monitor
from joblife.model import JobStatus
from joblife.ops.stale import stale_jobs
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from tests.support.factories import make_jobs, move_to
from tests.support.lifecycle import RecordingExecutor

S = JobStatus
RUNNING_PATH = [S.READY, S.QUEUED, S.STARTED, S.PRE_PROCESSING, S.PROCESSING]


def cli_json(*args: str) -> Any:
    get_settings.cache_clear()
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def walk(session: Session, ids: list[int], steps: list[JobStatus], **kw: Any) -> None:
    for step in steps:
        set_job_status(session, ids, step, **kw)
    session.commit()


def test_stats_per_type_from_the_history(session: Session, joblife_env: str) -> None:
    jobs = make_jobs(session, 5)
    ok, failing = [j.id for j in jobs[:3]], [j.id for j in jobs[3:]]
    walk(session, [j.id for j in jobs], RUNNING_PATH[:3])  # ready, queued, started
    for job_id, seconds in zip(ok, (2.0, 4.0, 6.0), strict=True):
        walk(session, [job_id], [S.PRE_PROCESSING, S.PROCESSING, S.POST_PROCESSING])
        set_job_status(
            session,
            job_id,
            S.PROCESSED,
            details={"durations": {"pre_processing": 1.0, "processing": seconds}},
        )
        set_job_status(session, job_id, S.DONE)
        session.commit()
    set_job_status(session, failing[0], S.INTERNAL_ERROR)
    set_job_status(session, failing[1], S.EXTERNAL_ERROR)
    session.commit()

    (stats,) = cli_json("stats", "--since", "1h")["job_types"]
    assert stats["job_type"] == "example"
    assert (stats["created"], stats["done"], stats["cancelled"]) == (5, 3, 0)
    assert stats["failed"] == {"internal_error": 1, "external_error": 1}
    attempts = stats["attempts"]
    assert (attempts["started"], attempts["succeeded"], attempts["failed"]) == (5, 3, 2)
    assert attempts["success_rate"] == 0.6
    assert stats["durations"]["processing"] == {"p50": 4.0, "p90": 5.6}
    assert stats["durations"]["pre_processing"] == {"p50": 1.0, "p90": 1.0}
    assert stats["durations"]["post_processing"] == {"p50": None, "p90": None}
    assert stats["durations"]["turnaround"]["p50"] is not None
    # A period before any of it, or another type: nothing.
    assert cli_json("stats", "--since", "3h", "--until", "2h")["job_types"] == []
    assert cli_json("stats", "--type", "test")["job_types"] == []


def test_stats_table_and_bad_period(joblife_env: str) -> None:
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["stats", "--since", "1h", "--until", "2h"])
    assert result.exit_code == 2  # a usage error
    msg = " ".join(result.stderr.replace("│", " ").split())
    assert "Invalid value for '--until': empty period" in msg
    result = CliRunner().invoke(app, ["stats"])
    assert result.exit_code == 0 and "no status change in that period" in result.stdout


def _message_into(engine: Engine, job_id: int, status: JobStatus) -> str:
    """The message of the job's last change into ``status``."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT message FROM job_status_changes WHERE job_id = :id AND status = :s "
                "ORDER BY id DESC LIMIT 1"
            ),
            {"id": job_id, "s": int(status)},
        ).scalar_one()


def test_stale_jobs_have_the_monitors_reasons(
    session: Session, engine: Engine, joblife_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = get_settings()
    silent, lost, retry, exhausted, fresh = (j.id for j in make_jobs(session, 5))
    walk(session, [silent, fresh], RUNNING_PATH)
    walk(session, [lost], RUNNING_PATH[:2])  # queued, no reference
    walk(session, [retry, exhausted], [*RUNNING_PATH[:3], S.EXTERNAL_ERROR])
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE jobs SET attempt = 1, nomad_job_id = 'ref' WHERE id <> :l"), {"l": lost}
        )
        conn.execute(text("UPDATE jobs SET max_attempts = 1 WHERE id = :id"), {"id": exhausted})
        conn.execute(text("UPDATE jobs SET heartbeat_at = now() WHERE id = :id"), {"id": fresh})
    # Later than every deadline but the fresh job's heartbeat window.
    later = utc_now() + timedelta(seconds=settings.heartbeat_timeout_seconds / 2)
    later = max(later, utc_now() + timedelta(seconds=settings.redispatch_grace_seconds + 1))
    later = max(later, utc_now() + timedelta(seconds=settings.retry_backoff_seconds + 1))
    context = ServiceContext(engine, settings)
    with context.session() as s:
        stale = {job.job_id: job for job in stale_jobs(s, settings, context.job_types, later)}
    heartbeat_limit = timedelta(seconds=settings.heartbeat_timeout_seconds)
    assert set(stale) == {lost, retry, exhausted} | (
        {silent} if later - utc_now() > heartbeat_limit else set()
    )

    # Exactly what the monitor then does, with the same words.
    later_all = utc_now() + heartbeat_limit + timedelta(seconds=1)
    with context.session() as s:
        stale = {job.job_id: job for job in stale_jobs(s, settings, context.job_types, later_all)}
    assert set(stale) == {silent, lost, retry, exhausted, fresh}
    executor = RecordingExecutor()
    report = Monitor(context, executor).run_cycle(later_all)
    # The two stale ones become external_error and, their backoff passed, are retried too.
    assert (report.stale, report.redispatched, report.retried, report.exhausted) == (2, 1, 3, 1)
    for job_id in (silent, fresh):
        assert _message_into(engine, job_id, S.EXTERNAL_ERROR).startswith(stale[job_id].reason)
        assert "heartbeat stale" in stale[job_id].reason
    assert _message_into(engine, exhausted, S.INTERNAL_ERROR).startswith(stale[exhausted].reason)
    assert stale[exhausted].reason == "attempts exhausted (1 of 1)"
    assert stale[lost].reason == "attempt 0: queued without execution"
    assert executor.job_ids == [lost]
    assert "retries it" in stale[retry].action


def test_unpoliced_statuses_use_their_deadline(
    session: Session, engine: Engine, joblife_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBLIFE_STALE_AFTER_SECONDS", '{"processed": 0.0, "ready": 3600}')
    waiting, ready = (j.id for j in make_jobs(session, 2))
    move_to(session, [waiting], S.PROCESSED)
    move_to(session, [ready], S.READY)
    rows = cli_json("jobs", "stale")
    assert [row["job_id"] for row in rows] == [waiting]
    (row,) = rows
    assert row["status"] == "processed" and row["deadline_seconds"] == 0.0
    assert "past its deadline" in row["reason"] and "publication" in row["action"]


def test_a_queued_job_past_its_deadline_is_reported_as_the_monitor_acts_on_it(
    session: Session, engine: Engine, joblife_env: str
) -> None:
    """Queued with a reference, accepted long ago: the monitor's queued deadline (not
    ``stale_after_seconds``) says when it is stale, and the monitor's words say why."""
    settings = get_settings()
    accepted, recent = (j.id for j in make_jobs(session, 2))
    walk(session, [accepted, recent], RUNNING_PATH[:2])  # ready, queued
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE jobs SET nomad_job_id = 'ref-' || id, heartbeat_at = CASE WHEN id = :a "
                "THEN now() - make_interval(secs => :age) ELSE now() END"
            ),
            {"a": accepted, "age": settings.queued_deadline_seconds + 60},
        )
    now = utc_now()
    context = ServiceContext(engine, settings)
    with context.session() as s:
        stale = {job.job_id: job for job in stale_jobs(s, settings, context.job_types, now)}
    assert set(stale) == {accepted}
    assert stale[accepted].deadline == timedelta(seconds=settings.queued_deadline_seconds)
    assert stale[accepted].reason.startswith("execution never started: accepted by the executor")
    executor = RecordingExecutor()
    report = Monitor(context, executor).run_cycle(now)
    assert report.never_started == 1 and executor.stopped == [f"ref-{accepted}"]
    assert _message_into(engine, accepted, S.EXTERNAL_ERROR).startswith(stale[accepted].reason)
