"""The one door for status changes, on real PostgreSQL: every allowed transition passes,
every other one is refused with a typed error naming both statuses; compare-and-set under
concurrency; direct writes refused; batches all-or-nothing; history append-only."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from joblife.db.engine import create_joblife_engine
from joblife.db.status import (
    acknowledge_jobs,
    cancel_jobs,
    retry_jobs,
    set_job_status,
)
from joblife.errors import (
    InvalidTransition,
    JobNotFound,
    StatusConflict,
    UnknownStatus,
)
from joblife.model import ALLOWED_TRANSITIONS, JobStatus
from joblife.model.status import is_allowed
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tests.support.example_type import ExampleJob
from tests.support.factories import PATH_TO, make_jobs, move_to

S = JobStatus


def _history(engine: Engine, job_id: int) -> list[tuple[str | None, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT previous_status, status FROM job_status_history(ARRAY[:id]::bigint[])"),
            {"id": job_id},
        ).all()
    return [(r.previous_status, r.status) for r in rows]


def _status(engine: Engine, job_id: int) -> JobStatus:
    with engine.connect() as conn:
        value = conn.execute(text("SELECT status FROM jobs WHERE id = :id"), {"id": job_id})
        return JobStatus(value.scalar_one())


def test_every_pair_of_statuses_is_allowed_or_refused_as_specified(
    session: Session, engine: Engine
) -> None:
    """All 16 x 16 pairs: one job per source status, every target tried in a savepoint."""
    jobs = make_jobs(session, len(JobStatus))
    for job, source in zip(jobs, JobStatus, strict=True):
        move_to(session, [job.id], source)
    accepted, refused = set(), set()
    for job, source in zip(jobs, JobStatus, strict=True):
        for target in JobStatus:
            savepoint = session.begin_nested()
            try:
                [change] = set_job_status(session, job.id, target)
            except InvalidTransition as error:
                savepoint.rollback()
                assert error.job_id == job.id
                assert (error.from_status, error.to_status) == (source.label, target.label)
                assert source.label in str(error) and target.label in str(error)
                refused.add((source, target))
            else:
                assert (change.previous_status, change.status) == (source, target)
                savepoint.rollback()  # back to the source status for the next target
                accepted.add((source, target))
    assert accepted == set(ALLOWED_TRANSITIONS)
    assert len(accepted) + len(refused) == 16 * 16
    # Spot checks straight from the list, independent of ALLOWED_TRANSITIONS.
    assert (S.PROCESSED, S.DONE) in accepted
    assert (S.DONE, S.START_PUBLICATION) in accepted
    assert (S.READY, S.DONE) in refused
    assert (S.DONE, S.INTERNAL_ERROR) in refused
    assert (S.CANCELLED, S.READY) in refused
    assert (S.INTERNAL_ERROR, S.READY) in refused
    assert (S.STARTED, S.CANCELLED) in accepted
    assert (S.PROCESSED, S.CANCELLED) in refused


def test_python_enum_and_transitions_match_the_database(engine: Engine) -> None:
    with engine.connect() as conn:
        statuses = conn.execute(text("SELECT id, name FROM job_statuses ORDER BY id")).all()
        pairs = conn.execute(
            text("SELECT from_status, to_status FROM job_status_transitions")
        ).all()
    assert [(s.value, s.label) for s in JobStatus] == [tuple(r) for r in statuses]
    db_pairs = {(JobStatus(a), JobStatus(b)) for a, b in pairs if a is not None}
    creation = {JobStatus(b) for a, b in pairs if a is None}
    assert db_pairs == set(ALLOWED_TRANSITIONS)
    assert creation == {S.INITIALIZED, S.CANCELLED}
    assert all(is_allowed(None, s) for s in creation)


def test_creation_records_history_and_refuses_other_initial_statuses(
    session: Session, engine: Engine
) -> None:
    [job] = make_jobs(session, 1)
    assert job.status is S.INITIALIZED
    assert _history(engine, job.id) == [(None, "initialized")]
    with engine.connect() as conn, pytest.raises(DBAPIError) as raised:
        conn.execute(
            text(
                "INSERT INTO jobs (job_type, input_product_id, worker_flavor, status) "
                "VALUES ('example', 'X', 'small', :status)"
            ),
            {"status": int(S.STARTED)},
        )
    assert raised.value.orig.pgcode == "JL002"
    assert "cannot be created in status started" in str(raised.value)


def test_compare_and_set_refuses_a_stale_expectation(session: Session) -> None:
    [job] = make_jobs(session, 1)
    set_job_status(session, job.id, S.READY, expected=S.INITIALIZED)
    session.commit()
    with pytest.raises(StatusConflict) as raised:
        set_job_status(session, job.id, S.CONFIGURED, expected=[S.INITIALIZED])
    session.rollback()
    error = raised.value
    assert (error.job_id, error.actual, error.expected) == (job.id, "ready", ["initialized"])
    assert "ready" in str(error) and "initialized" in str(error)


def test_unknown_status_and_unknown_job_are_typed_errors(session: Session) -> None:
    [job] = make_jobs(session, 1)
    with pytest.raises(UnknownStatus, match="bogus"):
        set_job_status(session, job.id, "bogus")
    session.rollback()
    with pytest.raises(UnknownStatus, match="nope"):
        set_job_status(session, job.id, S.READY, expected="nope")
    session.rollback()
    with pytest.raises(JobNotFound) as raised:
        set_job_status(session, [job.id, 987654], S.READY)
    session.rollback()
    assert raised.value.job_ids == [987654]


@pytest.mark.parametrize("expect_current", [True, False])
def test_twenty_threads_racing_on_one_job(
    db_url: str, engine: Engine, session: Session, expect_current: bool
) -> None:
    """20 writers race different transitions out of ``ready`` on one job.

    With compare-and-set (expected=ready) exactly one wins and 19 get StatusConflict.
    Without it, writers are serialised by the row lock: each one either applies a transition
    that is legal from the status it finds, or is refused; the history is a legal path.
    """
    [job] = make_jobs(session, 1)
    move_to(session, [job.id], S.READY)
    targets = [S.QUEUED, S.CANCELLED, S.INTERNAL_ERROR, S.EXTERNAL_ERROR, S.STARTED] * 4
    barrier = threading.Barrier(len(targets), timeout=30)
    racers = create_joblife_engine(db_url, pool_size=len(targets), max_overflow=0)
    outcomes: list[tuple[JobStatus, str]] = []
    lock = threading.Lock()

    def writer(target: JobStatus) -> None:
        with Session(racers) as own:
            own.execute(text("SELECT 1"))  # connect before the barrier
            barrier.wait()
            try:
                set_job_status(
                    own,
                    job.id,
                    target,
                    expected=S.READY if expect_current else None,
                    message=f"race to {target}",
                )
                own.commit()
                result = "won"
            except StatusConflict:
                result = "conflict"
            except InvalidTransition:
                result = "invalid"
            with lock:
                outcomes.append((target, result))

    threads = [threading.Thread(target=writer, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    racers.dispose()
    counts = Counter(result for _, result in outcomes)
    assert sum(counts.values()) == 20
    history = _history(engine, job.id)
    # Every step of the history is legal and chained.
    steps = [(None if p is None else JobStatus.parse(p), JobStatus.parse(s)) for p, s in history]
    for index, (previous, status) in enumerate(steps):
        assert is_allowed(previous, status), f"illegal step {previous} -> {status}"
        if index:
            assert previous == steps[index - 1][1], "history is not a chain"
    assert steps[-1][1] == _status(engine, job.id)
    if expect_current:
        # Only ready -> started is illegal from the status every writer expects.
        assert all(t is S.STARTED for t, result in outcomes if result == "invalid")
        # The one winner; each loser saw either the new status (conflict) or, if it got
        # the lock first, a transition illegal from ready (ready -> started).
        assert counts["won"] == 1
        assert counts["conflict"] + counts["invalid"] == 19
        assert len(history) == len(PATH_TO[S.READY]) + 2
    else:
        assert counts["won"] >= 1
        assert len(history) == len(PATH_TO[S.READY]) + 1 + counts["won"]


def test_direct_writes_of_status_and_history_are_refused(session: Session, engine: Engine) -> None:
    job, other, kept = make_jobs(session, 3)
    statements = {
        "UPDATE jobs SET status = 12 WHERE id = :id": "JL005",
        "UPDATE jobs SET status_changed_at = now() - interval '1 day' WHERE id = :id": "JL005",
        "INSERT INTO job_status_changes (job_id, status) VALUES (:id, 3)": "JL005",
        "UPDATE job_status_changes SET message = 'rewritten' WHERE job_id = :id": "JL006",
        "DELETE FROM job_status_changes WHERE job_id = :id": "JL006",
        "TRUNCATE job_status_changes": "JL006",
        # It would leave the history behind (migration 0009: no foreign key to cascade).
        "TRUNCATE jobs CASCADE": "JL006",
    }
    for statement, code in statements.items():
        with engine.connect() as conn, pytest.raises(DBAPIError) as raised:
            conn.execute(text(statement), {"id": job.id})
        assert raised.value.orig.pgcode == code, statement
    # Other columns stay writable, and deleting jobs removes their history with them (a
    # statement trigger, migration 0009), and nobody else's.
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE jobs SET attempt = 2, exit_code = 0 WHERE id = :id"), {"id": job.id}
        )
    assert _status(engine, job.id) is S.INITIALIZED
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM jobs WHERE id = ANY(:ids)"), {"ids": [job.id, other.id]})
        left = dict(
            conn.execute(
                text("SELECT job_id, count(*) FROM job_status_changes GROUP BY job_id")
            ).all()
        )
    assert left == {kept.id: 1}


def test_orm_cannot_overwrite_status_with_a_stale_object(session: Session, engine: Engine) -> None:
    [job] = make_jobs(session, 1)
    with Session(engine) as other:
        set_job_status(other, job.id, S.READY)
        other.commit()
    # The stale object still believes "initialized"; writing other fields must not
    # touch the stored status, and setting it is impossible from Python.
    assert job.status is S.INITIALIZED
    job.exit_code = 7
    session.commit()
    assert _status(engine, job.id) is S.READY
    with pytest.raises(AttributeError):
        job.status = S.DONE  # type: ignore[misc]
    job.status_id = int(S.DONE)
    with pytest.raises(DBAPIError, match="written only by set_job_status"):
        session.commit()
    session.rollback()
    assert _status(engine, job.id) is S.READY


def test_a_change_through_the_session_refreshes_its_objects(session: Session) -> None:
    [job] = make_jobs(session, 1)
    set_job_status(session, job.id, S.READY)
    assert job.status is S.READY  # reloaded, not stale


def test_batch_change_is_all_or_nothing(session: Session, engine: Engine) -> None:
    jobs = make_jobs(session, 50)
    ids = [j.id for j in jobs]
    move_to(session, ids[:49], S.READY)
    move_to(session, ids[49:], S.CANCELLED)
    with pytest.raises(InvalidTransition) as raised:
        set_job_status(session, ids, S.QUEUED, message="batch")
    session.rollback()
    assert raised.value.job_id == ids[49]
    assert {_status(engine, i) for i in ids[:49]} == {S.READY}
    with engine.connect() as conn:
        queued = conn.execute(
            text("SELECT count(*) FROM job_status_changes WHERE message = 'batch'")
        ).scalar()
    assert queued == 0
    changes = set_job_status(session, ids[:49], S.QUEUED, expected=S.READY, message="batch")
    session.commit()
    assert [c.job_id for c in changes] == sorted(ids[:49])
    assert {_status(engine, i) for i in ids[:49]} == {S.QUEUED}


def test_history_keeps_message_details_and_time_order(session: Session, engine: Engine) -> None:
    [job] = make_jobs(session, 1)
    set_job_status(session, job.id, S.READY, message="configured ok", details={"deps": [1, 2]})
    set_job_status(session, job.id, S.EXTERNAL_ERROR, message="storage down", details={"code": 503})
    session.commit()
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT status, message, details, time "
                "FROM job_status_history(ARRAY[:id]::bigint[])"
            ),
            {"id": job.id},
        ).all()
    assert [(r.status, r.message, r.details) for r in rows] == [
        ("initialized", "created", {}),
        ("ready", "configured ok", {"deps": [1, 2]}),
        ("external_error", "storage down", {"code": 503}),
    ]
    assert rows[0].time <= rows[1].time <= rows[2].time
    refreshed = session.get(ExampleJob, job.id)
    assert refreshed is not None and refreshed.status_changed_at == rows[2].time


def test_operator_procedures(session: Session, engine: Engine) -> None:
    internal, external, running = make_jobs(session, 3)
    move_to(session, [internal.id], S.INTERNAL_ERROR)
    move_to(session, [external.id], S.EXTERNAL_ERROR)
    move_to(session, [running.id], S.PROCESSING)
    # Out of attempts: retry grants one more.
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE jobs SET attempt = 3, max_attempts = 3 WHERE id = :id"),
            {"id": external.id},
        )

    # A retry including a job that cannot be retried changes nothing.
    with pytest.raises(StatusConflict):
        retry_jobs(session, [internal.id, external.id, running.id])
    session.rollback()
    assert _status(engine, internal.id) is S.INTERNAL_ERROR

    changes = retry_jobs(session, [internal.id, external.id], message="fixed the bucket")
    session.commit()
    assert {c.job_id: c.status for c in changes} == {internal.id: S.READY, external.id: S.READY}
    assert _history(engine, internal.id)[-2:] == [
        ("internal_error", "error_checked"),
        ("error_checked", "ready"),
    ]
    session.refresh(external)
    assert external.max_attempts == 4

    cancel_jobs(session, [running.id])
    session.commit()
    assert _status(engine, running.id) is S.CANCELLED

    with pytest.raises(StatusConflict):
        acknowledge_jobs(session, [internal.id])  # it is ready now
    session.rollback()
    set_job_status(session, internal.id, S.EXTERNAL_ERROR)
    acknowledge_jobs(session, [internal.id], message="seen")
    session.commit()
    assert _status(engine, internal.id) is S.ERROR_CHECKED
