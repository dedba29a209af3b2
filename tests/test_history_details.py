"""Every history row's details are a JSON object (issue 17, item 1; revision 0018), on real
PostgreSQL: whoever writes the history (creation, ``set_job_status`` with no details, empty
or given ones, the worker door, a real worker run, the operator procedures, the monitor's
retries) and whatever the caller passes (nothing, SQL NULL, JSON ``null``, an array, a
scalar), the row holds an object; the migration repairs the rows written before it (JSON
``null`` → ``{}``, ``[null, {"attempt": 1}]`` → ``{"attempt": 1}``), keeps the history
append-only, and its downgrade restores the previous doors."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from joblife.config import Settings
from joblife.db import migrate
from joblife.db.status import (
    acknowledge_jobs,
    cancel_jobs,
    republish_jobs,
    retry_jobs,
    set_job_status,
    worker_set_job_status,
)
from joblife.lifecycle.common import ServiceContext, utc_now
from joblife.lifecycle.monitor import Monitor
from joblife.model import JobStatus
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tests.support.factories import make_jobs, move_to
from tests.support.lifecycle import RecordingExecutor
from tests.test_publication import processed_jobs
from tests.test_roles import give_attempt_secret, login_as, presenting, run

S = JobStatus

#: History rows whose details are not a JSON object.
NOT_OBJECTS = (
    "SELECT count(*) FROM job_status_changes "
    "WHERE details IS NULL OR jsonb_typeof(details) <> 'object'"
)
DETAILS = {"note": "given", "n": 1, "nested": {"k": [1, None]}}
#: What a caller may give as details, and what the row must then hold.
GIVEN: list[tuple[dict[str, Any] | None, dict[str, Any]]] = [
    (None, {}),
    ({}, {}),
    (DETAILS, DETAILS),
]
#: The worker's own path, each step from the previous one.
WORKER_PATH = [
    S.STARTED,
    S.PRE_PROCESSING,
    S.PROCESSING,
    S.POST_PROCESSING,
    S.PROCESSED,
    S.DONE,
]
RUNNING = [S.STARTED, S.PRE_PROCESSING, S.PROCESSING, S.POST_PROCESSING]


def not_objects(engine: Engine) -> int:
    return run(engine, NOT_OBJECTS)[0][0]


def details_of(engine: Engine, job_ids: Sequence[int]) -> list[tuple[int, str, str, Any]]:
    """(job id, previous status, status, details) of the jobs' history rows, in order."""
    return run(
        engine,
        "SELECT c.job_id, p.name, s.name, c.details FROM job_status_changes c "
        "LEFT JOIN job_statuses p ON p.id = c.previous_status "
        "JOIN job_statuses s ON s.id = c.status "
        "WHERE c.job_id = ANY (:ids) ORDER BY c.id",
        ids=list(job_ids),
    )


def last_details(engine: Engine, job_id: int) -> Any:
    return details_of(engine, [job_id])[-1][3]


def at_attempt_one(session: Session, engine: Engine, count: int, prefix: str) -> list[int]:
    """``count`` queued jobs at attempt 1."""
    ids = [job.id for job in make_jobs(session, count, prefix=prefix)]
    move_to(session, ids, S.QUEUED)
    run(engine, "UPDATE jobs SET attempt = 1 WHERE id = ANY (:ids)", ids=ids)
    return ids


# == every door, every transition ===============================================================
def test_set_job_status_stores_an_object_on_every_transition(
    session: Session, engine: Engine
) -> None:
    """Each allowed transition, with no details, empty ones and given ones: the row holds
    an object (``{}`` for none), never JSON ``null``."""
    edges = run(
        engine,
        "SELECT f.name, t.name FROM job_status_transitions tr "
        "JOIN job_statuses f ON f.id = tr.from_status JOIN job_statuses t ON t.id = tr.to_status "
        "ORDER BY tr.from_status, tr.to_status",
    )
    assert len(edges) > 40
    expected: dict[int, Any] = {}
    for source in sorted({S.parse(f) for f, _ in edges}):
        targets = [S.parse(t) for f, t in edges if S.parse(f) is source]
        jobs = make_jobs(session, len(targets) * len(GIVEN), prefix=f"{source.label}-")
        ids = [job.id for job in jobs]
        move_to(session, ids, source)  # with no details: objects too (checked below)
        pairs = iter(ids)
        for target in targets:
            for given, stored in GIVEN:
                job_id = next(pairs)
                set_job_status(session, job_id, target, expected=source, details=given)
                expected[job_id] = stored
        session.commit()
    assert not_objects(engine) == 0
    for job_id, stored in expected.items():
        assert last_details(engine, job_id) == stored, job_id


def test_the_worker_door_stores_the_attempt_in_an_object(session: Session, engine: Engine) -> None:
    """Every worker transition (its path to done, and each error from each running
    status), with no details and with given ones: ``{..., "attempt": 1}``, never
    ``[null, {"attempt": 1}]``."""
    given = {"host": "h", "pid": 7}
    plain, detailed = at_attempt_one(session, engine, 2, "path-")
    failing = at_attempt_one(session, engine, len(RUNNING) * 2, "fail-")
    secrets = {
        job_id: give_attempt_secret(engine, job_id) for job_id in [plain, detailed, *failing]
    }

    def worker(job_id: int, status: JobStatus, details: dict[str, Any] | None) -> None:
        with presenting(engine, secrets[job_id]) as attempt, attempt.begin() as conn:
            worker_set_job_status(conn, job_id, 1, status, details=details)

    for status in WORKER_PATH:
        worker(plain, status, None)
        worker(detailed, status, given)
    jobs = iter(failing)
    for running in RUNNING:
        for error in (S.EXTERNAL_ERROR, S.INTERNAL_ERROR):
            job_id = next(jobs)
            for status in WORKER_PATH[: WORKER_PATH.index(running) + 1]:
                worker(job_id, status, None)
            worker(job_id, error, given if error is S.INTERNAL_ERROR else None)

    assert not_objects(engine) == 0
    by_job = details_of(engine, [plain, detailed, *failing])
    worker_rows = [row for row in by_job if row[1] not in (None, "initialized", "ready")]
    assert len(worker_rows) == 2 * len(WORKER_PATH) + sum(
        2 * (WORKER_PATH.index(r) + 2) for r in RUNNING
    )
    for job_id, previous, status, details in worker_rows:
        with_details = job_id == detailed or (job_id in failing and status == "internal_error")
        assert details == ({**given, "attempt": 1} if with_details else {"attempt": 1}), (
            job_id,
            previous,
            status,
        )


def test_a_real_worker_run_records_objects(
    session: Session, engine: Engine, admin_engine: Engine, db_url: str, tmp_path: Path
) -> None:
    """The rows of the bug report: a worker's started → pre_processing and
    pre_processing → processing rows carry ``{"attempt": 1, ...}`` as an object."""
    from joblife.jobtypes.test_job import TestJob
    from joblife.lifecycle.creation import insert_jobs
    from joblife.worker.runner import EXIT_DO_NOT_RELAUNCH, run_worker

    insert_jobs(session, TestJob, [TestJob(input_product_id="D1")], S.INITIALIZED)
    session.commit()
    job_id = run(engine, "SELECT id FROM jobs WHERE input_product_id = 'D1'")[0][0]
    move_to(session, [job_id], S.QUEUED)
    run(engine, "UPDATE jobs SET attempt = 1 WHERE id = :id", id=job_id)
    secret = give_attempt_secret(engine, job_id)
    with login_as(admin_engine, db_url, "joblife_worker") as login:
        settings = Settings(
            database_url=login.url.render_as_string(hide_password=False), data_dir=tmp_path
        )
        assert run_worker(job_id, 1, settings, attempt_secret=secret) == EXIT_DO_NOT_RELAUNCH

    rows = {
        (previous, status): details for _, previous, status, details in details_of(engine, [job_id])
    }
    assert ("processed", "done") in rows  # the whole run
    for step in (("started", "pre_processing"), ("pre_processing", "processing")):
        assert isinstance(rows[step], dict), rows[step]
        assert rows[step]["attempt"] == 1
    assert not_objects(engine) == 0


def test_operator_procedures_and_the_monitor_store_objects(
    session: Session, engine: Engine, db_url: str, tmp_path: Path
) -> None:
    """acknowledge, retry, cancel and republish (their own details), and the monitor's
    retries after backoff and exhausted attempts (no details)."""
    failed = [job.id for job in make_jobs(session, 3, prefix="op-")]
    move_to(session, failed, S.INTERNAL_ERROR)
    acknowledge_jobs(session, failed[0], operator="ann")
    retry_jobs(session, failed[1], operator="bob")
    cancel_jobs(session, failed[2])
    done = processed_jobs(session, 1, prefix="republish-")
    for step in (S.START_PUBLICATION, S.PUBLISHED, S.DONE):
        set_job_status(session, done, step)
    republish_jobs(session, done)
    session.commit()

    retried, exhausted = (job.id for job in make_jobs(session, 2, prefix="monitor-"))
    move_to(session, [retried, exhausted], S.EXTERNAL_ERROR)
    run(engine, "UPDATE jobs SET attempt = 1, max_attempts = 3 WHERE id = :id", id=retried)
    run(engine, "UPDATE jobs SET attempt = 3, max_attempts = 3 WHERE id = :id", id=exhausted)
    settings = Settings(database_url=db_url, data_dir=tmp_path, retry_backoff_seconds=0)
    report = Monitor(ServiceContext(engine, settings), RecordingExecutor()).run_cycle(
        utc_now() + timedelta(hours=1)
    )
    assert (report.retried, report.exhausted) == (1, 1)

    assert not_objects(engine) == 0
    assert last_details(engine, failed[0])["operator"] == "ann"
    assert last_details(engine, failed[1])["action"] == "retry"
    assert last_details(engine, done[0])["action"] == "republish"
    assert last_details(engine, retried) == {}
    assert last_details(engine, exhausted) == {}


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("NULL", {}),
        ("'null'::jsonb", {}),
        ('\'[null, {"a": 1}, {"a": 2, "b": 3}]\'::jsonb', {"a": 2, "b": 3}),
        ("'[]'::jsonb", {}),
        ("'\"text\"'::jsonb", {"value": "text"}),
        ('\'["x", 4, null, {"a": 1}]\'::jsonb', {"a": 1, "value": ["x", 4]}),
        ("'{\"kept\": [null]}'::jsonb", {"kept": [None]}),
    ],
    ids=["sql-null", "json-null", "array", "empty-array", "scalar", "mixed-array", "object"],
)
def test_the_doors_called_in_sql_store_an_object(
    session: Session, engine: Engine, given: str, stored: dict[str, Any]
) -> None:
    """Whatever a caller in SQL passes as details, the doors store an object: nothing is
    dropped but JSON nulls (other non-objects are kept under ``"value"``)."""
    ids = [job.id for job in make_jobs(session, 1, prefix="sql-")]
    run(
        engine,
        f"SELECT * FROM set_job_status(CAST(:ids AS bigint[]), 'ready', NULL, 'sql', {given})",
        ids=ids,
    )
    assert last_details(engine, ids[0]) == stored
    [job_id] = at_attempt_one(session, engine, 1, "sqlw-")
    secret = give_attempt_secret(engine, job_id)
    with presenting(engine, secret) as attempt:
        run(
            attempt,
            f"SELECT * FROM worker_set_job_status(:id, 1, 'started', NULL, 'w', {given})",
            id=job_id,
        )
    assert last_details(engine, job_id) == {**stored, "attempt": 1}
    assert not_objects(engine) == 0


# == the migration ==============================================================================
#: Bad shapes written before revision 0018 (by its doors, or by anything else), and what
#: the repair makes of them.
REPAIRS: list[tuple[str, dict[str, Any]]] = [
    ("null", {}),
    ('[null, {"attempt": 1}]', {"attempt": 1}),
    ('[{"a": 1}, null, {"a": 2, "b": 3}, "x"]', {"a": 2, "b": 3, "value": ["x"]}),
    ("[]", {}),
    ("[null]", {}),
    ('"text"', {"value": "text"}),
    ("7", {"value": 7}),
]
DOORS = ("set_job_status", "worker_set_job_status")
_FUNCTIONS = (
    "SELECT p.proname, p.prosecdef, p.proconfig, p.proacl::text FROM pg_proc p "
    "WHERE p.proname = ANY (:names) ORDER BY p.proname"
)


def downgrade(engine: Engine, revision: str) -> None:
    with engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn), revision)


@pytest.fixture
def at_0017(engine: Engine) -> Iterator[Engine]:
    downgrade(engine, "0017")
    yield engine
    migrate.upgrade(engine)


def write_bad_rows(engine: Engine, job_id: int) -> list[int]:
    """History rows of ``job_id`` in every bad shape of :data:`REPAIRS` (as the owner,
    through the insert guard as the doors pass it); their ids in that order."""
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('joblife.status_door', 'open', true)"))
        return [
            conn.execute(
                text(
                    "INSERT INTO job_status_changes (job_id, previous_status, status, message, "
                    "details) SELECT :id, status, status, 'bad', CAST(:details AS jsonb) "
                    "FROM jobs WHERE id = :id RETURNING id"
                ),
                {"id": job_id, "details": shape},
            ).scalar_one()
            for shape, _ in REPAIRS
        ]


def test_the_migration_repairs_the_rows_written_before_it(
    session: Session, engine: Engine, at_0017: Engine
) -> None:
    """At 0017 the doors store JSON ``null`` and ``[null, {"attempt": 1}]`` (as they did);
    upgrading repairs those and every other bad shape, touches no good row, and leaves the
    history append-only with the check on new rows."""
    before = run(engine, _FUNCTIONS, names=list(DOORS))
    good = [job.id for job in make_jobs(session, 2, prefix="good-")]
    set_job_status(session, good, S.READY, details={"keep": True})
    session.commit()
    # The old doors, called as the Python layer called them (JSON null for None).
    [old] = [job.id for job in make_jobs(session, 1, prefix="old-")]
    run(
        engine,
        "SELECT * FROM set_job_status(ARRAY[:id], 'ready', NULL, 'old', 'null'::jsonb)",
        id=old,
    )
    [worker_job] = at_attempt_one(session, engine, 1, "oldw-")
    with presenting(engine, give_attempt_secret(engine, worker_job)) as attempt:
        run(
            attempt,
            "SELECT * FROM worker_set_job_status(:id, 1, 'started', NULL, NULL, 'null'::jsonb)",
            id=worker_job,
        )
    assert last_details(engine, old) is None  # JSON null: the bug, at 0017
    assert last_details(engine, worker_job) == [None, {"attempt": 1}]
    bad = write_bad_rows(engine, good[0])
    assert not_objects(engine) == len(REPAIRS) + 2
    untouched = run(
        engine,
        "SELECT id, xmin::text, details FROM job_status_changes WHERE jsonb_typeof(details) = "
        "'object' ORDER BY id",
    )

    migrate.upgrade(engine)

    assert not_objects(engine) == 0
    repaired = dict(
        run(engine, "SELECT id, details FROM job_status_changes WHERE id = ANY (:ids)", ids=bad)
    )
    assert [repaired[i] for i in bad] == [stored for _, stored in REPAIRS]
    assert last_details(engine, old) == {}
    assert last_details(engine, worker_job) == {"attempt": 1}
    # One UPDATE over the bad shapes only: every good row is the same row version.
    assert (
        run(
            engine,
            "SELECT id, xmin::text, details FROM job_status_changes "
            "WHERE id = ANY (:ids) ORDER BY id",
            ids=[row[0] for row in untouched],
        )
        == untouched
    )
    # The guard is back on every partition, and new rows are checked.
    assert run(
        engine,
        "SELECT DISTINCT tgenabled FROM pg_trigger WHERE tgname = 'job_status_changes_append_only'",
    ) == [("O",)]
    with pytest.raises(DBAPIError) as info:
        run(engine, "UPDATE job_status_changes SET details = '{}' WHERE id = :id", id=bad[0])
    assert info.value.orig.pgcode == "JL006"
    with pytest.raises(DBAPIError) as info:
        write_bad_rows(engine, good[1])
    assert info.value.orig.pgcode == "23514"  # check_violation
    # The doors keep their owner's rights, settings and grants.
    assert run(engine, _FUNCTIONS, names=list(DOORS)) == before


def test_the_downgrade_restores_the_previous_doors(session: Session, engine: Engine) -> None:
    """Downgrading 0018 puts back 0017's doors (with their rights) and drops the check; the
    repaired rows stay repaired."""
    at_head = run(engine, _FUNCTIONS, names=list(DOORS))
    [job_id] = [job.id for job in make_jobs(session, 1, prefix="down-")]
    downgrade(engine, "0017")
    try:
        assert run(engine, _FUNCTIONS, names=list(DOORS)) == at_head
        assert run(
            engine,
            "SELECT count(*) FROM pg_constraint WHERE conname LIKE '%details_object%'",
        ) == [(0,)]
        assert run(
            engine, "SELECT count(*) FROM pg_proc WHERE proname = 'joblife_details_object'"
        ) == [(0,)]
        run(
            engine,
            "SELECT * FROM set_job_status(ARRAY[:id], 'ready', NULL, 'x', 'null'::jsonb)",
            id=job_id,
        )
        assert last_details(engine, job_id) is None  # 0017's door, as it was
    finally:
        migrate.upgrade(engine)
    assert last_details(engine, job_id) == {}  # and repaired again by the upgrade
