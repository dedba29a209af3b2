"""The dashboard's Overview, Timeliness, Failures and Publication reads on real PostgreSQL:
the figures are those of the jobs, the history and the outbox, read within their bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from joblife.config import Settings, get_settings
from joblife.db.status import set_job_status
from joblife.jobtypes.test_job import TestJob
from joblife.lifecycle.common import utc_now
from joblife.model import JobStatus, Priority
from joblife.publication.timeliness import timeliness_summary
from joblife.web.overview_reads import (
    bucket_starts,
    failure_groups,
    flavor_cap,
    late_jobs,
    message_pattern,
    overview,
    publication_state,
    throughput,
    timeliness,
)
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from tests.support.factories import make_jobs, move_to

S = JobStatus
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)


def at_half_past(moment: datetime) -> datetime:
    """``moment``'s hour plus 30 minutes: a ``now`` whose hour buckets are all cut in two
    by the window's ends."""
    return moment.replace(minute=30, second=0, microsecond=0)


def set_changed_at(engine: Engine, changed: dict[int, datetime], history: bool = False) -> None:
    """Date the jobs' last status change (and, with ``history``, their history rows) as
    given (test set-up, as the superuser, past the status door's guard)."""
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        for job_id, when in changed.items():
            conn.execute(
                text("UPDATE jobs SET status_changed_at = :t WHERE id = :id"),
                {"t": when, "id": job_id},
            )
            if history:
                conn.execute(
                    text(
                        "UPDATE job_status_changes SET time = :t WHERE job_id = :id "
                        "AND id = (SELECT max(id) FROM job_status_changes WHERE job_id = :id)"
                    ),
                    {"t": when, "id": job_id},
                )


def ids(jobs: list[Any]) -> list[int]:
    return [job.id for job in jobs]


# -- buckets and patterns -------------------------------------------------------------------


def test_buckets_are_aligned_and_cut_by_the_window() -> None:
    now = datetime(2026, 12, 5, 12, 30, tzinfo=UTC)
    hours = bucket_starts(now - timedelta(hours=24), now, HOUR)
    assert len(hours) == 25
    assert hours[0] == datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    assert hours[-1] == datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    days = bucket_starts(now - timedelta(days=7), now, timedelta(days=1))
    assert days[0] == datetime(2026, 11, 28, tzinfo=UTC) and len(days) == 8
    aligned = datetime(2026, 12, 5, 12, tzinfo=UTC)
    assert len(bucket_starts(aligned - timedelta(days=7), aligned, 6 * HOUR)) == 28
    with pytest.raises(ValueError, match="at most"):
        bucket_starts(now - timedelta(days=365), now, timedelta(minutes=1))
    with pytest.raises(ValueError, match="empty"):
        bucket_starts(now, now, HOUR)


def test_messages_differing_in_numbers_ids_and_paths_share_a_pattern() -> None:
    assert message_pattern("job 12 failed at /a/b") == "job <n> failed at <path>"
    assert message_pattern("job 13 failed at /c/d.h5") == "job <n> failed at <path>"
    assert message_pattern(
        "upload of s3://bucket/out/T31/x.tif failed (attempt 2): HTTP 503"
    ) == message_pattern("upload of s3://other/y failed (attempt 3): HTTP 500")
    assert (
        message_pattern("execution 3f2b9c1e-0d4a-4f6e-9b1a-2c3d4e5f6a7b lost, alloc deadbeef01")
        == "execution <uuid> lost, alloc <hex>"
    )
    assert message_pattern("exit code 0x1f after 12.5 s") == "exit code <hex> after <n> s"
    assert message_pattern("3/4 bands  read") == "<n>/<n> bands read"
    assert message_pattern(None) == message_pattern("") == "(no message)"
    assert message_pattern("x" * 1000) == "x" * 300
    assert message_pattern("disk full") != message_pattern("job 1 failed at /a")


# -- Overview ---------------------------------------------------------------------------------


def test_overview_counts_in_flight_caps_oldest_and_rejected(
    session: Session, engine: Engine, joblife_env: str
) -> None:
    settings = get_settings().model_copy(
        update={
            "max_in_flight": 7,
            "max_in_flight_per_type": {"example": 5},
            "max_in_flight_per_flavor": {"small": 2},
            "local_slots": {"large": 1},
            "local_default_slots": 4,
        }
    )
    small = make_jobs(session, 6, "S")  # example jobs run on 'small'
    large = make_jobs(session, 2, "L", worker_flavor="large")
    tests = [TestJob(input_product_id=f"T{i}") for i in range(3)]  # 'extra_small'
    session.add_all(tests)
    session.commit()
    move_to(session, ids(small[:2]), S.QUEUED)
    move_to(session, ids(large[:1]), S.PROCESSING)
    move_to(session, ids(small[2:5]), S.READY)
    move_to(session, ids(tests[:1]), S.STARTED)
    move_to(session, ids(tests[1:2]), S.DONE)
    now = utc_now() + timedelta(minutes=1)
    set_changed_at(engine, {small[2].id: now - 2 * HOUR, small[3].id: now - HOUR})
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO rejected_products (job_type, name, reason_class, reason, "
                "first_seen, last_seen) VALUES ('example', 'in/../a', 'unsafe_key', 'r', "
                "now(), now()), ('example', 'in/../b', 'unsafe_key', 'r', now(), now())"
            )
        )

    view = overview(session, settings, now)
    counts = view.summary.counts
    assert counts["example"] == {S.INITIALIZED: 2, S.READY: 3, S.QUEUED: 2, S.PROCESSING: 1}
    assert counts["test"] == {S.INITIALIZED: 1, S.STARTED: 1, S.DONE: 1}
    assert view.rejected == {"example": 2}
    assert (view.in_flight, view.in_flight_cap) == (4, 7)
    by_type = {row.name: (row.jobs, row.cap) for row in view.in_flight_by_type}
    assert by_type == {"example": (3, 5), "test": (1, None)}
    by_flavor = {row.name: (row.jobs, row.cap) for row in view.in_flight_by_flavor}
    assert by_flavor["small"] == (2, 2)  # max_in_flight_per_flavor under the local slots
    assert by_flavor["large"] == (1, 1)  # the local executor's slots
    assert by_flavor["extra_small"] == (1, 4)
    assert by_flavor["medium"] == (0, 4)  # a flavor of the catalogue without jobs

    ready = view.oldest_by_status[S.READY]
    assert (ready.job_type, ready.age_seconds) == ("example", 2 * 3600)
    assert view.oldest_by_type_status[("example", S.READY)] == ready
    started = view.oldest_by_type_status[("test", S.STARTED)]
    assert 0 < started.age_seconds < 600
    assert set(view.oldest_by_status) == {
        S.INITIALIZED,
        S.READY,
        S.QUEUED,
        S.STARTED,
        S.PROCESSING,
        S.DONE,
    }


def test_flavor_caps_under_nomad_are_the_configured_ones(joblife_env: str) -> None:
    settings = get_settings().model_copy(
        update={"nomad_addr": "http://127.0.0.1:4646", "max_in_flight_per_flavor": {"small": 3}}
    )
    assert flavor_cap(settings, "small") == 3
    assert flavor_cap(settings, "large") is None
    local = Settings(local_default_slots=2, max_in_flight_per_flavor={"small": 0})
    assert (flavor_cap(local, "small"), flavor_cap(local, "large")) == (0, 2)


# -- Throughput -------------------------------------------------------------------------------


def test_throughput_counts_done_and_failed_per_bucket_with_zeros(
    session: Session, engine: Engine, joblife_env: str
) -> None:
    now = at_half_past(utc_now())
    done = make_jobs(session, 4, "D")
    internal, external, retried, acknowledged = make_jobs(session, 4, "E")
    move_to(session, ids(done), S.DONE)
    move_to(session, [internal.id], S.INTERNAL_ERROR)
    move_to(session, [external.id, retried.id], S.EXTERNAL_ERROR)
    move_to(session, [acknowledged.id], S.ERROR_CHECKED)
    set_job_status(session, retried.id, S.READY)  # retried since: not failed any more
    session.commit()
    set_changed_at(
        engine,
        {
            done[0].id: now - 10 * HOUR,  # 02:30 before now's hour: bucket -10 h
            done[1].id: now - 10 * HOUR + timedelta(minutes=29),  # same bucket
            done[2].id: now - timedelta(minutes=5),  # now's hour
            done[3].id: now - 30 * HOUR,  # before the window
            internal.id: now - 10 * HOUR,
            external.id: now - 23 * HOUR - timedelta(minutes=45),  # the first, cut bucket
            retried.id: now - 2 * HOUR,
            acknowledged.id: now - 2 * HOUR,
        },
    )

    buckets = throughput(session, now, timedelta(hours=24), HOUR)
    assert len(buckets) == 25
    assert buckets[0].start == now - 24 * HOUR  # cut by the window
    assert buckets[0].end == now - 23 * HOUR - timedelta(minutes=30)
    assert buckets[-1].end == now
    assert all(b.end - b.start == HOUR for b in buckets[1:-1])
    counted = {
        b.start: (b.done, b.internal_error, b.external_error) for b in buckets if b.done or b.failed
    }
    hour = now.replace(minute=0)
    assert counted == {
        now - 24 * HOUR: (0, 0, 1),
        hour - 10 * HOUR: (2, 1, 0),
        hour: (1, 0, 0),
    }
    assert sum(b.failed for b in buckets) == 2

    days = throughput(session, now, timedelta(days=7), timedelta(days=1))
    assert len(days) == 8
    assert sum(b.done for b in days) == 4  # the job done 30 h ago too
    assert sum(b.failed for b in days) == 2


# -- Timeliness -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def published_jobs(
    session: Session, now: datetime, delays: dict[str, tuple[float, float, int]]
) -> dict[str, int]:
    """Example jobs named by ``delays``: (hours before ``now`` the output was published,
    hours from input to output, priority). Their ids."""
    made = {}
    for name, (ago, delay, priority) in delays.items():
        (job,) = make_jobs(
            session,
            1,
            name,
            priority=priority,
            output_publication_date=now - ago * HOUR,
            input_publication_date=now - (ago + delay) * HOUR,
        )
        made[name] = job.id
    return made


def test_timeliness_per_type_priority_and_bucket(session: Session, joblife_env: str) -> None:
    settings = get_settings().model_copy(update={"timeliness_target_hours": 3.0})
    now = at_half_past(utc_now())
    delays = {  # output published ago (h), delay (h), priority
        "a": (1.0, 1.0, 1),
        "b": (1.2, 2.0, 1),
        "c": (1.4, 4.0, 1),  # late
        "d": (5.0, 0.5, 1),
        "e": (2.0, 3.5, 2),  # late
        "old": (30.0, 9.0, 1),  # before the window
    }
    published_jobs(session, now, delays)
    (pending_late,) = make_jobs(session, 1, "pl", input_publication_date=now - 5 * HOUR)
    make_jobs(session, 1, "pf", input_publication_date=now - HOUR)  # pending, within
    (cancelled,) = make_jobs(session, 1, "pc", input_publication_date=now - 5 * HOUR)
    move_to(session, [cancelled.id], S.CANCELLED)

    result = timeliness(session, settings, now, timedelta(hours=24), HOUR)
    assert result.target == timedelta(hours=3) and len(result.buckets) == 25
    totals = {(p.job_type, p.priority): p for p in result.totals}
    assert set(totals) == {("example", Priority.NRT), ("example", Priority.DELAYED)}
    nrt = totals[("example", Priority.NRT)]
    seconds = [h * 3600 for h in (1.0, 2.0, 4.0, 0.5)]
    assert nrt.published == 4 and nrt.within_target == 3 and nrt.within_target_share == 0.75
    for q, value in ((0.5, nrt.p50_seconds), (0.9, nrt.p90_seconds), (0.99, nrt.p99_seconds)):
        assert value == pytest.approx(percentile(seconds, q))
    assert nrt.max_seconds == pytest.approx(4 * 3600)
    # Every bucket of each (type, priority), the empty ones with nothing.
    points = result.points("example", Priority.NRT)
    assert [p.start for p in points] == result.buckets
    busy = {p.start: p.published for p in points if p.published}
    hour = now.replace(minute=0)
    assert busy == {hour - 1 * HOUR: 3, hour - 5 * HOUR: 1}  # 1.0-1.4 h ago, 5 h ago
    empty = next(p for p in points if not p.published)
    assert empty.p50_seconds is None and empty.within_target_share is None
    (late_bucket,) = [p for p in points if p.published == 3]
    assert late_bucket.within_target == 2
    assert late_bucket.max_seconds == pytest.approx(4 * 3600)
    # The per-type summary (all priorities, with the pending jobs): the CLI's figures.
    (summary,) = result.summary
    assert (summary.published, summary.within_target, summary.pending) == (5, 3, 2)
    assert result.summary == timeliness_summary(session, result.target, result.since, now)
    # Filters.
    delayed = timeliness(
        session, settings, now, timedelta(hours=24), HOUR, priority=Priority.DELAYED
    )
    assert [(p.priority, p.published) for p in delayed.totals] == [(Priority.DELAYED, 1)]
    assert [(r.published, r.pending) for r in delayed.summary] == [(1, 0)]
    assert timeliness(session, settings, now, timedelta(days=7), 6 * HOUR, "test").totals == []

    late = late_jobs(session, settings, now, timedelta(hours=24))
    by_delay = [(job.job_id, round(job.delay_seconds)) for job in late]
    assert by_delay == [
        (pending_late.id, 5 * 3600),  # not published, input 5 h ago
        (late[1].job_id, 4 * 3600),
        (late[2].job_id, int(3.5 * 3600)),
    ]
    assert late[0].output_publication_date is None and late[0].status is S.INITIALIZED
    assert late[1].output_publication_date == now - 1.4 * HOUR
    assert late[2].priority is Priority.DELAYED
    assert late[2].over_target_seconds == pytest.approx(0.5 * 3600)
    assert [job.job_id for job in late_jobs(session, settings, now, 24 * HOUR, limit=2)] == [
        pending_late.id,
        late[1].job_id,
    ]
    assert late_jobs(session, settings, now, 24 * HOUR, job_type="test") == []


# -- Failures ---------------------------------------------------------------------------------


def fail(session: Session, job_id: int, status: JobStatus, message: str) -> None:
    set_job_status(session, job_id, S.READY)
    set_job_status(session, job_id, status, message=message)
    session.commit()


def test_failures_grouped_by_type_and_message_pattern(
    session: Session, engine: Engine, joblife_env: str
) -> None:
    now = utc_now() + timedelta(minutes=1)
    a, b, c, d, e, f = ids(make_jobs(session, 6, "F"))
    fail(session, a, S.INTERNAL_ERROR, "job 12 failed at /a/b")
    fail(session, b, S.INTERNAL_ERROR, "job 13 failed at /c/d")
    fail(session, c, S.EXTERNAL_ERROR, "job 14 failed at /e/f/g.h5")
    set_job_status(session, c, S.ERROR_CHECKED, message="seen by an operator")
    fail(session, d, S.EXTERNAL_ERROR, "disk full on node 7")
    fail(session, e, S.EXTERNAL_ERROR, "job 15 failed at /x")
    set_job_status(session, e, S.READY)  # retried: not failed any more
    fail(session, f, S.INTERNAL_ERROR, "job 16 failed at /old")
    session.commit()
    # Failures (and history) dated a: 3 h ago, b: 1 h ago, f: before the window; c failed,
    # then was acknowledged in a later transaction (its status change is the latter).
    set_changed_at(engine, {a: now - 3 * HOUR, b: now - HOUR, f: now - 30 * HOUR}, history=True)

    groups = failure_groups(session, now, timedelta(hours=24))
    assert [(g.job_type, g.pattern, g.count) for g in groups] == [
        ("example", "job <n> failed at <path>", 3),
        ("example", "disk full on node <n>", 1),
    ]
    group = groups[0]
    assert group.statuses == {S.INTERNAL_ERROR: 2, S.ERROR_CHECKED: 1}
    assert group.first_seen == now - 3 * HOUR
    failed_c = _time_into(engine, c, S.EXTERNAL_ERROR)
    assert group.last_seen == failed_c  # the failure, not the acknowledgement
    assert group.example_message == "job 14 failed at /e/f/g.h5"
    assert group.example_job_ids == [c, b, a]  # the latest status change first
    assert groups[1].statuses == {S.EXTERNAL_ERROR: 1}

    # Bounded: only the newest `sample` failed jobs are read.
    (newest,) = failure_groups(session, now, timedelta(hours=24), sample=1)
    assert newest.count == 1 and newest.example_job_ids in ([c], [d])
    assert failure_groups(session, now, timedelta(hours=24), limit=1) == groups[:1]
    wider = failure_groups(session, now, timedelta(hours=48))
    assert wider[0].count == 4 and wider[0].first_seen == now - 30 * HOUR


def _time_into(engine: Engine, job_id: int, status: JobStatus) -> datetime:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT time FROM job_status_changes WHERE job_id = :id AND status = :s "
                "ORDER BY id DESC LIMIT 1"
            ),
            {"id": job_id, "s": int(status)},
        ).scalar_one()


# -- Publication ------------------------------------------------------------------------------


def outbox(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        for i, row in enumerate(rows):
            conn.execute(
                text(
                    "INSERT INTO publications (job_id, attempt, product, message_id, body, "
                    "created_at, published_at, error, error_at) VALUES (:job_id, "
                    ":attempt, :product, :message_id, '{}', :created_at, :published_at, "
                    ":error, :error_at)"
                ),
                {
                    "attempt": 0,
                    "product": f"p{i}",
                    "message_id": f"m{i}",
                    "published_at": None,
                    "error": None,
                    "error_at": None,
                    **row,
                },
            )


def test_publication_backlog_failures_and_waiting_jobs(
    session: Session, engine: Engine, joblife_env: str
) -> None:
    now = utc_now() + timedelta(minutes=1)
    waiting, sending, refused, retried, done = ids(make_jobs(session, 5, "O"))
    move_to(session, [waiting, refused, retried], S.PROCESSED)
    move_to(session, [sending], S.START_PUBLICATION)
    move_to(session, [done], S.DONE)
    set_job_status(session, refused, S.START_PUBLICATION)
    set_job_status(session, refused, S.EXTERNAL_ERROR, message="not routed")
    session.commit()
    with engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET attempt = 1 WHERE id = :id"), {"id": retried})
    set_changed_at(engine, {waiting: now - 2 * HOUR})
    outbox(
        engine,
        [
            {"job_id": waiting, "created_at": now - 90 * MINUTE},  # the oldest pending
            {"job_id": waiting, "created_at": now - MINUTE},
            {"job_id": sending, "created_at": now - 30 * MINUTE},
            {"job_id": sending, "created_at": now - 40 * MINUTE, "published_at": now - MINUTE},
            {
                "job_id": refused,
                "created_at": now - 3 * HOUR,
                "error": "NO_ROUTE",
                "error_at": now - 2 * HOUR,
            },
            {"job_id": retried, "created_at": now - 5 * HOUR},  # attempt 0 of attempt 1
            {"job_id": done, "created_at": now - 6 * HOUR, "published_at": now - 5 * HOUR},
        ],
    )

    state = publication_state(session, now)
    assert state.unpublished == 5
    assert (state.unsent, state.unconfirmed, state.pending) == (2, 1, 3)
    assert state.pending_by_job_status == {S.PROCESSED: 2, S.START_PUBLICATION: 1}
    assert state.oldest_pending_age_seconds == pytest.approx(90 * 60)
    assert (state.failed, state.superseded, state.scan_capped) == (1, 1, False)
    (failed,) = state.failed_rows
    assert (failed.job_id, failed.job_status, failed.error) == (
        refused,
        S.EXTERNAL_ERROR,
        "NO_ROUTE",
    )
    assert failed.error_at == now - 2 * HOUR
    assert state.jobs_waiting == {S.PROCESSED: 2, S.START_PUBLICATION: 1, S.PUBLISHED: 0}
    assert state.oldest_waiting[S.PROCESSED].age_seconds == 2 * 3600
    assert S.PUBLISHED not in state.oldest_waiting

    capped = publication_state(session, now, scan=2)
    assert capped.scan_capped and capped.unpublished == 5
    assert capped.pending + capped.failed + capped.superseded == 2
