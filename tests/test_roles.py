"""The least-privilege database roles (migration 0007), on real PostgreSQL: for each role, a
temporary LOGIN user granted only that role tries what the role must do (allowed) and what
it must not (refused with a permission error), including the old bypass of the trigger
guard (setting ``joblife.status_door`` by hand)."""

from __future__ import annotations

import json
import re
import secrets
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from joblife.db.migration_helpers import read_sql_file
from joblife.db.status import translate_status_error
from joblife.db.worker_doors import present_secret, store_attempt_secrets
from joblife.errors import StatusConflict
from joblife.model import JobStatus
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tests.support.factories import make_jobs, move_to

S = JobStatus
DENIED = "42501"  # insufficient_privilege


@contextmanager
def login_as(admin_engine: Engine, db_url: str, role: str) -> Iterator[Engine]:
    """An engine on the test's database as a new LOGIN user that is granted only ``role``;
    the user is dropped afterwards."""
    user = f"jl_u_{uuid.uuid4().hex[:12]}"
    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{user}" LOGIN IN ROLE {role}'))
    engine = create_engine(make_url(db_url).set(username=user, password=None))
    try:
        yield engine
    finally:
        engine.dispose()
        with admin_engine.connect() as conn:
            conn.execute(text(f'DROP ROLE "{user}"'))


def run(engine: Engine, sql: str, **params: Any) -> list[Any]:
    """Execute ``sql`` in its own transaction (committed); the rows it returned."""
    with engine.begin() as conn:
        result = conn.execute(text(sql), params)
        return result.all() if result.returns_rows else []


def denied(engine: Engine, sql: str, code: str = DENIED, **params: Any) -> str:
    """Assert that ``sql`` is refused with SQLSTATE ``code``; the error message."""
    with pytest.raises(DBAPIError) as info:
        run(engine, sql, **params)
    assert info.value.orig.pgcode == code, f"{sql}: {info.value.orig}"
    return str(info.value.orig)


def status(engine: Engine, job_id: int) -> JobStatus:
    return JobStatus(run(engine, "SELECT status FROM jobs WHERE id = :id", id=job_id)[0][0])


def history_count(engine: Engine) -> int:
    return run(engine, "SELECT count(*) FROM job_status_changes")[0][0]


def forbidden_everywhere(engine: Engine, job_id: int) -> None:
    """What no role may do: write the status or the history, delete, truncate, create."""
    denied(engine, "UPDATE jobs SET status = 12 WHERE id = :id", id=job_id)
    with engine.begin() as conn:  # the trigger guard's "door" setting opens nothing
        conn.execute(text("SET LOCAL joblife.status_door = 'open'"))
        with pytest.raises(DBAPIError) as info:
            conn.execute(text("UPDATE jobs SET status = 12 WHERE id = :id"), {"id": job_id})
        assert info.value.orig.pgcode == DENIED
    denied(engine, "UPDATE jobs SET status_changed_at = now() WHERE id = :id", id=job_id)
    denied(
        engine,
        "INSERT INTO job_status_changes (job_id, status, message) VALUES (:id, 12, 'forged')",
        id=job_id,
    )
    denied(engine, "UPDATE job_status_changes SET message = 'x' WHERE job_id = :id", id=job_id)
    denied(engine, "DELETE FROM job_status_changes WHERE job_id = :id", id=job_id)
    denied(engine, "DELETE FROM jobs WHERE id = :id", id=job_id)
    denied(engine, "DELETE FROM publications")
    denied(engine, "TRUNCATE job_status_changes")
    denied(engine, "TRUNCATE jobs CASCADE")
    denied(engine, "CREATE TABLE intruder (id int)")
    denied(engine, "CREATE FUNCTION intruder() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    denied(engine, "SELECT joblife_grant_role_privileges()")


def give_attempt_secret(engine: Engine, job_id: int) -> str:
    """A secret for the job's current attempt, stored as the dispatcher does (its hash and
    its proof key)."""
    secret = secrets.token_hex(32)
    with engine.begin() as conn:
        store_attempt_secrets(conn, {job_id: secret})
    return secret


@contextmanager
def presenting(engine: Engine, secret: str | None) -> Iterator[Engine]:
    """An engine with ``engine``'s login whose connections present ``secret``."""
    attempt = create_engine(engine.url)
    present_secret(attempt, secret)
    try:
        yield attempt
    finally:
        attempt.dispose()


def test_worker_role_moves_only_its_attempt_along_the_worker_path(
    session: Session, engine: Engine, admin_engine: Engine, db_url: str
) -> None:
    job, other, idle = make_jobs(session, 3)
    move_to(session, [job.id, other.id], S.READY)
    move_to(session, [idle.id], S.READY)
    run(engine, "SELECT set_job_status(ARRAY[:a, :b]::bigint[], 'queued')", a=job.id, b=other.id)
    run(engine, "UPDATE jobs SET attempt = 1 WHERE id IN (:a, :b)", a=job.id, b=other.id)
    secret = give_attempt_secret(engine, job.id)
    other_secret = give_attempt_secret(engine, other.id)
    before = history_count(engine)
    door = "SELECT * FROM worker_set_job_status(:id, :attempt, :status)"
    outbox = "SELECT worker_write_publications(:id, 1, CAST(:messages AS jsonb))"

    with (
        login_as(admin_engine, db_url, "joblife_worker") as login,
        presenting(login, secret) as worker,
    ):
        # Reads its job, stamps its heartbeat, walks its attempt to processed.
        assert run(worker, "SELECT attempt FROM jobs WHERE id = :id", id=job.id) == [(1,)]
        assert run(worker, "SELECT behaviour FROM test_jobs LIMIT 1") == []
        for step in ("started", "pre_processing", "processing", "post_processing"):
            (row,) = run(worker, door, id=job.id, attempt=1, status=step)
            assert row.status == step
        assert run(worker, "SELECT worker_heartbeat(:id, 1)", id=job.id) == [("post_processing",)]
        run(
            worker,
            "SELECT worker_record_outcome(:id, 1, 0, 'img', 'out/P1')",
            id=job.id,
        )
        (row,) = run(worker, door, id=job.id, attempt=1, status="processed")
        # The outbox is written with `processed`; with messages, done is the relay's.
        messages = json.dumps([{"product": "p", "body": {}}])  # the door computes the id
        assert run(worker, outbox, id=job.id, messages=messages) == [(1,)]
        message = denied(worker, door, id=job.id, attempt=1, status="done")
        assert "publication" in message
        assert status(engine, job.id) is S.PROCESSED
        assert history_count(engine) == before + 5
        attempt_in_details = run(
            worker,
            "SELECT details->>'attempt' FROM job_status_changes WHERE job_id = :id "
            "ORDER BY id DESC LIMIT 1",
            id=job.id,
        )
        assert attempt_in_details == [("1",)]

        # Another attempt's number: a status conflict, the worker stops.
        with pytest.raises(DBAPIError) as info:
            run(worker, door, id=other.id, attempt=2, status="started")
        assert isinstance(translate_status_error(info.value), StatusConflict)
        # A job not in flight (ready) cannot be taken.
        with pytest.raises(DBAPIError) as info:
            run(worker, door, id=idle.id, attempt=0, status="started")
        assert isinstance(translate_status_error(info.value), StatusConflict)
        # Another in-flight job at its right attempt: refused without that job's secret.
        assert "attempt secret" in denied(worker, door, id=other.id, attempt=1, status="started")
        denied(worker, "SELECT worker_heartbeat(:id, 1)", id=other.id)
        # Transitions that are not the worker's: refused whatever the job's status.
        for target in ("cancelled", "ready", "queued", "error_checked", "start_publication"):
            denied(worker, door, id=other.id, attempt=1, status=target)
        denied(
            worker,
            "SELECT * FROM worker_set_job_status(:id, 1, 'started', ARRAY['ready'])",
            id=other.id,
        )
        # No direct write on any table: not even its own job's heartbeat or outcome.
        for column, value in (
            ("heartbeat_at", "now()"),
            ("exit_code", "0"),
            ("output_path", "'x'"),
            ("output_publication_date", "now()"),
            ("science_image", "'img'"),
            ("attempt_secret_hash", "NULL"),
        ):
            denied(worker, f"UPDATE jobs SET {column} = {value} WHERE id = :id", id=job.id)
        denied(
            worker,
            "INSERT INTO publications (job_id, attempt, product, message_id, body) "
            "VALUES (:id, 1, 'p', :mid, '{}')",
            id=job.id,
            mid=str(uuid.uuid4()),
        )
        # Not the services' or the operators' doors, nor their columns.
        denied(worker, "SELECT set_job_status(ARRAY[:id]::bigint[], 'started')", id=other.id)
        for procedure in ("retry_jobs", "cancel_jobs", "acknowledge_jobs"):
            denied(worker, f"SELECT {procedure}(ARRAY[:id]::bigint[])", id=other.id)
        denied(worker, "SELECT worker_check_attempt_secret(:id, NULL)", id=other.id)
        denied(worker, "UPDATE jobs SET attempt = 5 WHERE id = :id", id=other.id)
        denied(worker, "UPDATE jobs SET max_attempts = 9 WHERE id = :id", id=other.id)
        denied(worker, "UPDATE jobs SET nomad_job_id = 'x' WHERE id = :id", id=other.id)
        denied(
            worker,
            "INSERT INTO jobs (job_type, input_product_id, worker_flavor) "
            "VALUES ('test', 'forged', 'small')",
        )
        denied(worker, "UPDATE publications SET published_at = now()")
        forbidden_everywhere(worker, other.id)
    with (
        login_as(admin_engine, db_url, "joblife_worker") as login,
        presenting(login, other_secret) as other_worker,
    ):
        # A failure of its own running attempt is the worker's to record.
        run(other_worker, door, id=other.id, attempt=1, status="started")
        (row,) = run(other_worker, door, id=other.id, attempt=1, status="external_error")
        assert row.previous_status == "started"
    assert status(engine, other.id) is S.EXTERNAL_ERROR
    assert status(engine, idle.id) is S.READY


def test_worker_role_finishes_a_job_without_publication(
    session: Session, engine: Engine, admin_engine: Engine, db_url: str
) -> None:
    (job,) = make_jobs(session, 1)
    move_to(session, [job.id], S.POST_PROCESSING)
    run(engine, "UPDATE jobs SET attempt = 3 WHERE id = :id", id=job.id)
    secret = give_attempt_secret(engine, job.id)
    with (
        login_as(admin_engine, db_url, "joblife_worker") as login,
        presenting(login, secret) as worker,
    ):
        door = "SELECT * FROM worker_set_job_status(:id, 3, :status)"
        run(worker, door, id=job.id, status="processed")
        run(worker, door, id=job.id, status="done")
        # Done is final: the worker has no way back in.
        with pytest.raises(DBAPIError) as info:
            run(worker, door, id=job.id, status="external_error")
        assert isinstance(translate_status_error(info.value), StatusConflict)
    assert status(engine, job.id) is S.DONE


def test_service_role_runs_the_life_cycle_but_cannot_bypass_the_door(
    session: Session, engine: Engine, admin_engine: Engine, db_url: str
) -> None:
    (job,) = make_jobs(session, 1)
    with login_as(admin_engine, db_url, "joblife_service") as service:
        # Creation: a job and its type row; the first history row is written for it.
        (new_id,) = run(
            service,
            "INSERT INTO jobs (job_type, input_product_id, worker_flavor) "
            "VALUES ('test', 'svc-1', 'small') RETURNING id",
        )[0]
        run(service, "INSERT INTO test_jobs (id) VALUES (:id)", id=new_id)
        assert run(
            service, "SELECT status FROM job_status_history(ARRAY[:id]::bigint[])", id=new_id
        ) == [("initialized",)]
        denied(
            service,
            "INSERT INTO jobs (job_type, input_product_id, worker_flavor, status) "
            "VALUES ('test', 'svc-2', 'small', 12)",
            code="JL002",  # a job is born initialized or cancelled, whoever inserts it
        )
        # Configuration, dispatch, monitor: the door and the bookkeeping columns.
        run(service, "UPDATE jobs SET due_at = now(), waiting_for = 'x' WHERE id = :id", id=job.id)
        run(service, "SELECT set_job_status(ARRAY[:id]::bigint[], 'ready')", id=job.id)
        run(service, "SELECT set_job_status(ARRAY[:id]::bigint[], 'queued')", id=job.id)
        run(
            service,
            "UPDATE jobs SET attempt = attempt + 1, nomad_job_id = 'ref' WHERE id = :id",
            id=job.id,
        )
        run(service, "SELECT id FROM jobs WHERE status = 3 FOR UPDATE SKIP LOCKED")
        run(service, "SELECT pg_advisory_xact_lock(1)")
        run(service, "SELECT set_job_status(ARRAY[:id]::bigint[], 'external_error')", id=job.id)
        run(service, "SELECT retry_jobs(ARRAY[:id]::bigint[])", id=job.id)
        run(service, "SELECT cancel_jobs(ARRAY[:id]::bigint[])", id=new_id)
        # Publication relay.
        run(
            service,
            "INSERT INTO publications (job_id, attempt, product, message_id, body) "
            "VALUES (:id, 1, 'p', :mid, '{}')",
            id=job.id,
            mid=str(uuid.uuid4()),
        )
        run(service, "UPDATE publications SET published_at = now() WHERE job_id = :id", id=job.id)
        assert run(service, "SELECT count(*) FROM job_status_changes")[0][0] > 0
        forbidden_everywhere(service, job.id)
        denied(service, "UPDATE jobs SET job_type = 'other' WHERE id = :id", id=job.id)
        denied(service, "DELETE FROM test_jobs")
    assert status(engine, job.id) is S.READY
    assert status(engine, new_id) is S.CANCELLED


def test_operator_role_reads_and_steers_through_the_procedures_only(
    session: Session, engine: Engine, admin_engine: Engine, db_url: str
) -> None:
    failed, checked, running = make_jobs(session, 3)
    move_to(session, [failed.id, checked.id], S.INTERNAL_ERROR)
    move_to(session, [running.id], S.PROCESSING)
    with login_as(admin_engine, db_url, "joblife_operator") as operator:
        for view in ("job_status_summary", "jobs_overview", "job_timeliness"):
            run(operator, f"SELECT * FROM {view}")
        run(operator, "SELECT * FROM job_status_history(ARRAY[:id]::bigint[])", id=failed.id)
        run(operator, "SELECT * FROM get_test_jobs_with_status(ARRAY['ready'])")
        run(operator, "SELECT id FROM jobs WHERE id = :id FOR UPDATE", id=failed.id)
        run(operator, "SELECT acknowledge_jobs(ARRAY[:id]::bigint[], 'seen')", id=checked.id)
        run(operator, "SELECT retry_jobs(ARRAY[:id]::bigint[], 'again')", id=failed.id)
        run(operator, "SELECT cancel_jobs(ARRAY[:id]::bigint[], 'stop')", id=running.id)
        run(operator, "UPDATE jobs SET due_at = NULL WHERE id = :id", id=running.id)
        # The procedures keep the status machine's rules for the operator too.
        denied(
            operator,
            "SELECT retry_jobs(ARRAY[:id]::bigint[])",
            code="JL003",
            id=running.id,
        )
        denied(operator, "SELECT set_job_status(ARRAY[:id]::bigint[], 'ready')", id=checked.id)
        denied(operator, "SELECT * FROM worker_set_job_status(:id, 0, 'started')", id=checked.id)
        denied(operator, "UPDATE jobs SET max_attempts = 10 WHERE id = :id", id=checked.id)
        denied(
            operator,
            "INSERT INTO jobs (job_type, input_product_id, worker_flavor) "
            "VALUES ('test', 'op', 'small')",
        )
        forbidden_everywhere(operator, checked.id)
    assert status(engine, failed.id) is S.READY
    assert status(engine, checked.id) is S.ERROR_CHECKED
    assert status(engine, running.id) is S.CANCELLED
    by = run(
        engine,
        "SELECT details->>'by' FROM job_status_changes WHERE job_id = :id ORDER BY id DESC LIMIT 1",
        id=running.id,
    )
    assert by == [("operator",)]


def test_a_job_type_table_created_later_is_covered(
    engine: Engine, admin_engine: Engine, db_url: str
) -> None:
    """A partner's migration run after 0007 by the same owner: default privileges give the
    services write access and everyone read access, with no grant in the migration."""
    run(
        engine,
        "CREATE TABLE later_jobs (id bigint PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,"
        " size int)",
    )
    (job_id,) = run(
        engine,
        "INSERT INTO jobs (job_type, input_product_id, worker_flavor) "
        "VALUES ('later', 'l1', 'small') RETURNING id",
    )[0]
    with login_as(admin_engine, db_url, "joblife_service") as service:
        run(service, "INSERT INTO later_jobs (id, size) VALUES (:id, 1)", id=job_id)
        run(service, "UPDATE later_jobs SET size = 2 WHERE id = :id", id=job_id)
        denied(service, "DELETE FROM later_jobs")
    for role in ("joblife_worker", "joblife_operator"):
        with login_as(admin_engine, db_url, role) as reader:
            assert run(reader, "SELECT size FROM later_jobs") == [(2,)]
            denied(reader, "UPDATE later_jobs SET size = 3")


def _role_block() -> str:
    """The first statement of v0007_roles.sql: the race-safe creation of the roles."""
    sql = read_sql_file("v0007_roles.sql")
    start = sql.index("DO $$")
    return sql[start : sql.index("$$;", start) + 3]


def test_role_creation_is_idempotent_and_safe_under_concurrency(admin_engine: Engine) -> None:
    """The creation block, on fresh role names, in four transactions at once (each holding
    its transaction open a moment, as a migration does): every one succeeds, one role each."""
    names = [f"jl_race_{uuid.uuid4().hex[:8]}_{i}" for i in range(3)]
    block = re.sub(
        r"ARRAY\['joblife_service', 'joblife_worker', 'joblife_operator'\]",
        "ARRAY[" + ", ".join(f"'{n}'" for n in names) + "]",
        _role_block(),
    )
    assert all(n in block for n in names)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            engine = create_engine(admin_engine.url)
            try:
                with engine.begin() as conn:
                    barrier.wait(timeout=10)
                    _exec_raw(conn, block)
                    conn.execute(text("SELECT pg_sleep(0.2)"))
            finally:
                engine.dispose()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not errors, errors
        with admin_engine.connect() as conn:
            _exec_raw(conn, block)  # once more, with the roles there: a no-op
            found = conn.execute(
                text("SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY (:n)"),
                {"n": names},
            ).all()
        assert sorted(found) == [(n, False) for n in sorted(names)]
    finally:
        with admin_engine.connect() as conn:
            for name in names:
                conn.execute(text(f'DROP ROLE IF EXISTS "{name}"'))


def _exec_raw(conn: Connection, sql: str) -> None:
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql)
    finally:
        cursor.close()


@pytest.mark.parametrize("publish", [False, True], ids=["no-publication", "outbox"])
def test_the_real_worker_runs_under_the_worker_role(
    session: Session,
    engine: Engine,
    admin_engine: Engine,
    db_url: str,
    tmp_path: Any,
    publish: bool,
) -> None:
    from joblife.config import Settings
    from joblife.jobtypes.test_job import TestJob
    from joblife.lifecycle.creation import insert_jobs
    from joblife.worker.runner import EXIT_DO_NOT_RELAUNCH, run_worker

    insert_jobs(session, TestJob, [TestJob(input_product_id="W1", publish=publish)], S.INITIALIZED)
    session.commit()
    job_id = run(engine, "SELECT id FROM jobs WHERE input_product_id = 'W1'")[0][0]
    move_to(session, [job_id], S.QUEUED)
    run(engine, "UPDATE jobs SET attempt = 1 WHERE id = :id", id=job_id)
    secret = give_attempt_secret(engine, job_id)
    with login_as(admin_engine, db_url, "joblife_worker") as worker:
        url = worker.url.render_as_string(hide_password=False)
        settings = Settings(database_url=url, data_dir=tmp_path)
        assert run_worker(job_id, 1, settings, attempt_secret=secret) == EXIT_DO_NOT_RELAUNCH
    expected = S.PROCESSED if publish else S.DONE
    assert status(engine, job_id) is expected
    outbox = run(engine, "SELECT count(*) FROM publications WHERE job_id = :id", id=job_id)
    assert outbox[0][0] == (1 if publish else 0)


def test_what_the_publication_hook_changes_is_recorded_through_the_door(
    session: Session,
    engine: Engine,
    admin_engine: Engine,
    db_url: str,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job type's get_products_publication_jsons may set an outcome column: the worker
    records it through the outcome door while the job still runs (the door refuses it once
    processed, and the worker role may not write the column itself)."""
    from joblife.config import Settings
    from joblife.jobtypes.test_job import TestJob
    from joblife.lifecycle.creation import insert_jobs
    from joblife.worker.runner import EXIT_DO_NOT_RELAUNCH, run_worker

    original = TestJob.get_products_publication_jsons

    def messages_naming_the_image(self: TestJob) -> list[dict[str, Any]]:
        self.science_image = "registry.example/science:7"
        return original(self)

    monkeypatch.setattr(TestJob, "get_products_publication_jsons", messages_naming_the_image)
    insert_jobs(session, TestJob, [TestJob(input_product_id="W2", publish=True)], S.INITIALIZED)
    session.commit()
    job_id = run(engine, "SELECT id FROM jobs WHERE input_product_id = 'W2'")[0][0]
    move_to(session, [job_id], S.QUEUED)
    run(engine, "UPDATE jobs SET attempt = 1 WHERE id = :id", id=job_id)
    secret = give_attempt_secret(engine, job_id)
    with login_as(admin_engine, db_url, "joblife_worker") as worker:
        url = worker.url.render_as_string(hide_password=False)
        settings = Settings(database_url=url, data_dir=tmp_path)
        assert run_worker(job_id, 1, settings, attempt_secret=secret) == EXIT_DO_NOT_RELAUNCH
    assert status(engine, job_id) is S.PROCESSED
    image = run(engine, "SELECT science_image FROM jobs WHERE id = :id", id=job_id)
    assert image == [("registry.example/science:7",)]
    outbox = run(engine, "SELECT count(*) FROM publications WHERE job_id = :id", id=job_id)
    assert outbox == [(1,)]
