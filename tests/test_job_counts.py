"""Job counts by type and status maintained as jobs change (issue 15 item 3, revision
0014): equal to a full count after every path that creates, changes or deletes jobs, as
each role, with concurrent and rolled-back transactions; folded without losing or
doubling a change while writers, other folds and repairs run; initialised when a populated
database is upgraded; checked and repaired by ``joblife jobs check-counts``; and what
``joblife status`` shows."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from joblife.cli.main import app
from joblife.config import get_settings
from joblife.db import migrate
from joblife.db.counts import check_job_counts, fold_job_counts, job_counts, repair_job_counts
from joblife.db.status import cancel_jobs, set_job_status
from joblife.jobtypes.test_job import TestJob
from joblife.lifecycle import creation
from joblife.lifecycle.common import ServiceContext, utc_now
from joblife.lifecycle.monitor import Monitor
from joblife.model import JobStatus
from joblife.ops.cleanup import cleanup
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from tests.support.example_type import ExampleJob
from tests.support.factories import make_jobs, move_to
from tests.support.lifecycle import RecordingExecutor
from tests.test_roles import give_attempt_secret, login_as, presenting, run

S = JobStatus
Counts = dict[tuple[str, JobStatus], int]


def full_count(engine: Engine) -> Counts:
    """The jobs counted one by one."""
    rows = run(engine, "SELECT job_type, status, count(*) FROM jobs GROUP BY 1, 2")
    return {(job_type, S(status)): n for job_type, status, n in rows}


def maintained(engine: Engine) -> Counts:
    with Session(engine) as session:
        return job_counts(session)


def pending_deltas(engine: Engine) -> int:
    return run(engine, "SELECT count(*) FROM job_count_deltas")[0][0]


def assert_exact(engine: Engine) -> Counts:
    """The maintained counts equal a full count, read together and apart."""
    with Session(engine) as session:
        assert check_job_counts(session) == []
    counts = full_count(engine)
    assert maintained(engine) == counts
    return counts


def dated(cls: type, prefix: str, count: int, **values: Any) -> list[Any]:
    first = datetime(2026, 11, 1, tzinfo=UTC)
    return [
        cls(
            input_product_id=f"{prefix}{i:04d}",
            input_publication_date=first + timedelta(minutes=i),
            **values,
        )
        for i in range(count)
    ]


def ids_in(engine: Engine, status: JobStatus, job_type: str = "example") -> list[int]:
    rows = run(
        engine,
        "SELECT id FROM jobs WHERE status = :s AND job_type = :t ORDER BY id",
        s=int(status),
        t=job_type,
    )
    return [row[0] for row in rows]


def test_counts_follow_every_path_that_changes_jobs(
    engine: Engine,
    session: Session,
    admin_engine: Engine,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(creation, "INSERT_BATCH", 7)  # several statements per range
    assert assert_exact(engine) == {}
    with (
        login_as(admin_engine, db_url, "joblife_service") as service,
        login_as(admin_engine, db_url, "joblife_operator") as operator,
        login_as(admin_engine, db_url, "joblife_worker") as worker_login,
    ):
        # Creation as the service does it: COPY, then INSERT ... SELECT per batch, over two
        # connections; two types; created and cancelled jobs.
        inserted = creation.insert_discovered(
            service, ExampleJob, dated(ExampleJob, "E", 40), dated(ExampleJob, "X", 5), None, 2
        )
        assert inserted == Counter({S.INITIALIZED: 40, S.CANCELLED: 5})
        creation.insert_discovered(service, TestJob, dated(TestJob, "T", 12), [], None, 2)
        counts = assert_exact(engine)
        assert counts == {
            ("example", S.INITIALIZED): 40,
            ("example", S.CANCELLED): 5,
            ("test", S.INITIALIZED): 12,
        }
        assert pending_deltas(engine) > 0  # nothing folded yet: the deltas alone are exact

        # The service door: single changes and batches, some folded on the way.
        initialized = ids_in(engine, S.INITIALIZED)
        with Session(service) as s:
            for job_id in initialized[:3]:
                set_job_status(s, job_id, S.READY)
                s.commit()
            set_job_status(s, initialized[3:30], S.READY)
            set_job_status(s, initialized[30:33], S.CONFIGURED)
            s.commit()
            assert fold_job_counts(s) > 0
            s.commit()
            set_job_status(s, initialized[:10], S.QUEUED)
            set_job_status(s, ids_in(engine, S.INITIALIZED, "test")[:4], S.READY)
            s.commit()
        assert_exact(engine)

        # The worker doors, as the worker role: its status changes are counted, its
        # heartbeats (an UPDATE of jobs) add no delta.
        run(engine, "UPDATE jobs SET attempt = 1 WHERE id = ANY (:ids)", ids=initialized[:3])
        door = "SELECT * FROM worker_set_job_status(:id, 1, :status)"
        for job_id in initialized[:3]:
            secret = give_attempt_secret(engine, job_id)
            with presenting(worker_login, secret) as worker:
                run(worker, door, id=job_id, status="started")
                before = pending_deltas(engine)
                run(worker, "SELECT worker_heartbeat(:id, 1)", id=job_id)
                assert pending_deltas(engine) == before
                run(worker, door, id=job_id, status="pre_processing")
        assert_exact(engine)

        # Cancellation, as an operator.
        with Session(operator) as s:
            cancel_jobs(s, [*initialized[:2], *initialized[10:15]], "not needed")
            s.commit()
        assert_exact(engine)

    # Two transactions changing jobs at once, one rolled back, with a fold in between.
    ready = ids_in(engine, S.READY)
    with Session(engine) as first, Session(engine) as second:
        set_job_status(first, ready[:4], S.QUEUED)
        set_job_status(second, ready[4:8], S.CANCELLED)
        creation.insert_jobs(second, ExampleJob, dated(ExampleJob, "R", 6), S.INITIALIZED)
        with Session(engine) as folder:
            fold_job_counts(folder)
            folder.commit()
        assert_exact(engine)  # neither is visible yet
        second.rollback()
        first.commit()
    assert_exact(engine)

    # Clean-up deletes done and cancelled jobs (their counts go with them).
    move_to(session, ids_in(engine, S.INITIALIZED, "test")[:3], S.DONE)
    before = assert_exact(engine)
    report = cleanup(engine, timedelta(seconds=1), utc_now() + timedelta(days=1), execute=True)
    assert report.jobs == before[("test", S.DONE)] + before[("example", S.CANCELLED)]
    counts = assert_exact(engine)
    assert ("test", S.DONE) not in counts and ("example", S.CANCELLED) not in counts

    with Session(engine) as s:
        fold_job_counts(s)
        s.commit()
    assert pending_deltas(engine) == 0
    assert run(engine, "SELECT count(*) FROM job_counts WHERE jobs = 0")[0][0] == 0
    assert assert_exact(engine) == counts


def test_folds_take_turns_and_miss_no_change_of_an_open_transaction(
    engine: Engine, session: Session
) -> None:
    jobs = make_jobs(session, 12)
    ids = [job.id for job in jobs]
    with Session(engine) as writer, Session(engine) as fold_a:
        # A change not committed when a fold runs: its delta is not folded, nor lost.
        set_job_status(writer, ids[:5], S.READY)
        assert fold_job_counts(fold_a) > 0  # the creation's delta(s)
        # While fold A holds the counts' lock: readers do not wait, and a second fold
        # returns at once without folding (nor a repair, which would also hold it).
        assert maintained(engine) == {("example", S.INITIALIZED): 12}
        set_job_status(session, ids[5:7], S.CANCELLED)  # committed while A runs
        session.commit()
        with Session(engine) as fold_b:
            assert fold_job_counts(fold_b) is None
            fold_b.rollback()
        fold_a.commit()
        with Session(engine) as fold_b:
            # Only the change committed after fold A's snapshot: one row per (type, status).
            assert fold_job_counts(fold_b) == 2
            fold_b.commit()
        assert maintained(engine) == {("example", S.INITIALIZED): 10, ("example", S.CANCELLED): 2}
        with Session(engine) as repairer, Session(engine) as fold_c:
            assert repair_job_counts(repairer) == []
            assert fold_job_counts(fold_c) is None  # the repair holds the lock
            repairer.commit()
        writer.commit()
    assert pending_deltas(engine) == 2  # the writer's, committed after the folds
    counts = assert_exact(engine)
    assert counts == {
        ("example", S.INITIALIZED): 5,
        ("example", S.READY): 5,
        ("example", S.CANCELLED): 2,
    }
    # The monitor's cycle folds.
    context = ServiceContext(engine, get_settings())
    report = Monitor(context, RecordingExecutor()).run_cycle()
    assert report.counts_folded == 2 and pending_deltas(engine) == 0
    assert assert_exact(engine) == counts


def test_upgrade_of_a_populated_database_initialises_the_counts(
    engine: Engine, session: Session
) -> None:
    with engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn), "0013")
    assert run(engine, "SELECT to_regclass('job_counts')")[0][0] is None
    jobs = make_jobs(session, 9)
    move_to(session, [jobs[0].id, jobs[1].id], S.DONE)
    move_to(session, [jobs[2].id], S.EXTERNAL_ERROR)
    session.add_all(dated(TestJob, "T", 3))
    session.commit()
    expected = full_count(engine)

    migrate.upgrade(engine)
    assert run(engine, "SELECT count(*) FROM job_count_deltas")[0][0] == 0
    assert maintained(engine) == expected
    assert dict(run(engine, "SELECT (job_type, status)::text, jobs FROM job_counts")) == {
        f"({job_type},{int(status)})": n for (job_type, status), n in expected.items()
    }
    set_job_status(session, [jobs[3].id, jobs[4].id], S.READY)
    session.commit()
    counts = assert_exact(engine)
    assert counts[("example", S.READY)] == 2 and counts[("example", S.INITIALIZED)] == 4


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_check_counts_reports_and_repairs_a_drift(engine: Engine, joblife_env: str) -> None:
    with Session(engine) as session:
        ids = [job.id for job in make_jobs(session, 6)]
        move_to(session, ids[:2], S.READY)
    result = cli("jobs", "check-counts")
    assert result.exit_code == 0, result.output
    assert "match a count of the jobs" in result.stdout

    # A drift only the owner can make: a change with the counting trigger disabled and a
    # stray delta.
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE jobs DISABLE TRIGGER jobs_count_updates"))
        set_job_status(conn, [ids[2]], S.CANCELLED)
        conn.execute(text("ALTER TABLE jobs ENABLE TRIGGER jobs_count_updates"))
        conn.execute(text("INSERT INTO job_count_deltas VALUES ('ghost', 3, 2)"))
    # `status` shows the maintained counts, not a count of the jobs.
    status = json.loads(cli("status", "--json").stdout)
    shown = {t["job_type"]: t["counts"] for t in status["job_types"]}
    assert shown == {"example": {"initialized": 4, "ready": 2}, "ghost": {"ready": 2}}

    result = cli("jobs", "check-counts", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report == {
        "consistent": False,
        "repaired": False,
        "differences": [
            {"job_type": "example", "status": "initialized", "maintained": 4, "actual": 3},
            {"job_type": "example", "status": "cancelled", "maintained": 0, "actual": 1},
            {"job_type": "ghost", "status": "ready", "maintained": 2, "actual": 0},
        ],
    }
    assert "check-counts --repair" in result.stderr
    table = cli("jobs", "check-counts")
    assert table.exit_code == 1 and "ghost" in table.stdout

    result = cli("jobs", "check-counts", "--repair")
    assert result.exit_code == 1 and "repaired" in result.stderr
    assert "ghost" in result.stdout
    result = cli("jobs", "check-counts", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"consistent": True, "repaired": False, "differences": []}
    status = json.loads(cli("status", "--json").stdout)
    assert {t["job_type"]: t["counts"] for t in status["job_types"]} == {
        "example": {"initialized": 3, "ready": 2, "cancelled": 1}
    }
    assert pending_deltas(engine) == 0


def test_repair_keeps_the_changes_of_a_transaction_that_commits_after_it(
    engine: Engine, session: Session
) -> None:
    jobs = make_jobs(session, 4)
    with Session(engine) as writer, Session(engine) as repairer:
        set_job_status(writer, [jobs[0].id], S.READY)
        run(engine, "INSERT INTO job_count_deltas VALUES ('example', 1, 7)")  # a drift
        corrected = repair_job_counts(repairer)
        repairer.commit()
        assert [(d.job_type, d.status, d.maintained, d.actual) for d in corrected] == [
            ("example", S.INITIALIZED, 11, 4)
        ]
        writer.commit()
    assert assert_exact(engine) == {("example", S.INITIALIZED): 3, ("example", S.READY): 1}


def test_the_roles_read_the_counts_but_cannot_write_them(
    engine: Engine, session: Session, admin_engine: Engine, db_url: str
) -> None:
    make_jobs(session, 2)
    for role in ("joblife_service", "joblife_operator", "joblife_worker"):
        with login_as(admin_engine, db_url, role) as login:
            assert maintained(login) == {("example", S.INITIALIZED): 2}
            for sql in (
                "INSERT INTO job_count_deltas VALUES ('example', 1, 1)",
                "UPDATE job_counts SET jobs = 0",
                "DELETE FROM job_count_deltas",
            ):
                with pytest.raises(Exception, match="permission denied"):
                    run(login, sql)
            if role == "joblife_worker":
                with pytest.raises(Exception, match="permission denied"):
                    run(login, "SELECT fold_job_counts()")
            else:
                run(login, "SELECT fold_job_counts()")
    assert assert_exact(engine) == {("example", S.INITIALIZED): 2}
