"""joblife through PgBouncer in transaction pooling mode (issue 15, items 1 and 2), on a
real PgBouncer (:mod:`tests.support.pgbouncer`) in front of the tests' PostgreSQL:

- the attempt secret is proved per transaction (revision 0016): two workers interleaved on
  one server connection never act with each other's secret; a proof read in
  ``pg_stat_activity`` opens nothing in another transaction, and neither the secret nor the
  proof key is in any query text while a door runs; the proof keys are the owner's only;
  the SQL HMAC is RFC 2104's;
- a worker holds one connection at a time, opened per transaction, its heartbeats included;
- the services' dispatch lock (transaction-level) serialises dispatchers through the pooler;
- the CLI's reads and operator commands work through it;
- the whole life cycle (``joblife run`` with the local executor: creation, dispatch,
  monitor, workers as the ``joblife_worker`` role, publication to the spool), with the
  services' and the workers' URLs both pointing at PgBouncer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
from joblife.config import Settings
from joblife.db.worker_doors import (
    PROOF_SETTING,
    attempt_secret,
    attempt_secret_key,
    issue_attempt_secret,
    present_proof,
    present_secret,
    proof_key,
    worker_heartbeat,
)
from joblife.executors.local import LocalExecutor
from joblife.lifecycle.dispatch import DISPATCH_LOCK_KEY
from joblife.model import JobStatus
from joblife.worker import runner
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tests.support.example_type import ExampleJob
from tests.support.factories import make_jobs, move_to
from tests.support.lifecycle import FAST_SERVICES, Lifecycle, RecordingExecutor
from tests.support.lifecycle import wait_for as poll
from tests.test_lifecycle_end_to_end import (
    HAPPY_PATH,
    JOBLIFE,
    REPO,
    Processes,
    all_done,
    assert_each_attempt_ran_once,
    histories,
    joblife_env,
    processes,  # noqa: F401
    status_counts,
    stop_gracefully,
    wait_for,
    write_products,
)
from tests.test_roles import DENIED, login_as, run

if TYPE_CHECKING:  # the module is a plugin of this one (pytest_plugins), imported by pytest
    from tests.support.pgbouncer import PgBouncer

#: The fixtures pgbouncer and pgbouncer_factory.
pytest_plugins = ["tests.support.pgbouncer"]

S = JobStatus
BEAT = "SELECT worker_heartbeat(:id, 1)"
DOOR = "SELECT * FROM worker_set_job_status(:id, 1, :status)"


def denied(engine_or_conn: Any, sql: str, **params: Any) -> str:
    """Assert ``sql`` (in its own transaction on an engine, or on a connection) is refused
    with insufficient_privilege; the message."""
    with pytest.raises(DBAPIError) as info:
        if isinstance(engine_or_conn, Engine):
            run(engine_or_conn, sql, **params)
        else:
            engine_or_conn.execute(text(sql), params)
    assert info.value.orig.pgcode == DENIED, info.value.orig
    return str(info.value.orig)


@pytest.fixture
def services(db_url: str, tmp_path: Path) -> Settings:
    """The services' settings (their key file in this test's data dir)."""
    return Settings(database_url=db_url, data_dir=tmp_path / "data", **FAST_SERVICES)


@pytest.fixture
def worker_user(admin_engine: Engine, db_url: str) -> Iterator[str]:
    """A LOGIN user granted only joblife_worker (dropped afterwards): its name."""
    with login_as(admin_engine, db_url, "joblife_worker") as login:
        assert login.url.username is not None
        yield login.url.username


def queued_job(engine: Engine, settings: Settings, status: JobStatus = S.PROCESSING) -> Any:
    """A job at attempt 1 in ``status`` whose attempt was given its secret as dispatch
    gives it (hash and proof key): (job id, secret)."""
    with Session(engine) as session:
        (job,) = make_jobs(session, 1, prefix=f"J{uuid.uuid4().hex[:6]}")
        move_to(session, [job.id], status)
        session.execute(text("UPDATE jobs SET attempt = 1 WHERE id = :id"), {"id": job.id})
        secret = issue_attempt_secret(session, settings, job.id)
        session.commit()
        return job.id, secret


def attempt_engine(url: str, secret: str | None) -> Engine:
    """An engine on ``url`` presenting ``secret`` as a worker's does (proofs only)."""
    engine = create_engine(url)
    present_secret(engine, secret, at_connection=False)
    return engine


# -- the proof ---------------------------------------------------------------------------------
def test_the_sql_hmac_is_rfc_2104(engine: Engine) -> None:
    cases = [
        (b"", b""),
        (b"\x0b" * 20, b"Hi There"),  # RFC 4231 test case 1
        (b"Jefe", b"what do ya want for nothing?"),  # test case 2
        (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First"),  # case 6
        (proof_key("ab" * 32), b"joblife attempt proof:123456"),
        (bytes(range(64)), "é".encode() * 100),
    ]
    for key, message in cases:
        (computed,) = run(engine, "SELECT joblife_hmac_sha256(:k, :m)", k=key, m=message)[0]
        assert bytes(computed) == hmac.new(key, message, hashlib.sha256).digest()
    rfc_case_2 = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    (case_2,) = run(
        engine,
        "SELECT encode(joblife_hmac_sha256('Jefe', :m), 'hex')",
        m=b"what do ya want for nothing?",
    )[0]
    assert case_2 == rfc_case_2


def test_the_proof_keys_are_the_owners_only(
    engine: Engine, admin_engine: Engine, db_url: str, services: Settings
) -> None:
    job, _ = queued_job(engine, services)
    assert run(engine, "SELECT count(*) FROM attempt_proof_keys WHERE job_id = :id", id=job) == [
        (1,)
    ]
    run(engine, "SELECT joblife_grant_role_privileges()")  # what a later migration re-runs
    for role in ("joblife_worker", "joblife_service", "joblife_operator"):
        with login_as(admin_engine, db_url, role) as login:
            # Row level security without a policy: nothing, whatever SELECT a grant gave.
            assert run(login, "SELECT count(*) FROM attempt_proof_keys") == [(0,)]
            denied(login, "UPDATE attempt_proof_keys SET proof_key = 'x'::bytea")
            denied(login, "INSERT INTO attempt_proof_keys VALUES (:id, 'x', 'y')", id=job)
            if role != "joblife_service":
                denied(
                    login,
                    "SELECT joblife_store_attempt_secrets(ARRAY[:id]::bigint[], "
                    "ARRAY['x'::bytea], ARRAY['y'::bytea])",
                    id=job,
                )


def test_two_workers_on_one_server_connection_never_share_a_secret(
    engine: Engine, db_url: str, services: Settings, worker_user: str, pgbouncer_factory: Any
) -> None:
    """One server connection (pool size 1) serves both workers' transactions in turn:
    each works with its own proof, and a transaction of one never finds the other's proof
    nor opens the other's job."""
    bouncer: PgBouncer = pgbouncer_factory(pool_size=1)
    bouncer.add_user(worker_user)
    url = bouncer.url(db_url, username=worker_user)
    (job_a, secret_a), (job_b, secret_b) = (queued_job(engine, services) for _ in range(2))
    worker_a, worker_b = attempt_engine(url, secret_a), attempt_engine(url, secret_b)
    try:
        pids = set()
        for _ in range(3):
            for worker, own, other in ((worker_a, job_a, job_b), (worker_b, job_b, job_a)):
                with worker.begin() as conn:
                    pids.add(conn.execute(text("SELECT pg_backend_pid()")).scalar())
                    # What the previous transaction (the other worker's) proved is gone.
                    assert not conn.execute(
                        text("SELECT current_setting(:name, true)"), {"name": PROOF_SETTING}
                    ).scalar()
                    assert worker_heartbeat(conn, own, 1) is S.PROCESSING
                # The other's job: refused, right after the other's own transaction.
                assert "attempt secret" in denied(worker, BEAT, id=other)
        assert len(pids) == 1, f"expected one server connection, saw backends {pids}"
        # Through the pooler, each worker walks its own job to processed.
        for worker, own in ((worker_a, job_a), (worker_b, job_b)):
            for status in ("post_processing", "processed"):
                run(worker, DOOR, id=own, status=status)
        assert run(
            engine,
            "SELECT count(*) FROM jobs WHERE id IN (:a, :b) AND status = :s",
            a=job_a,
            b=job_b,
            s=int(S.PROCESSED),
        ) == [(2,)]
    finally:
        worker_a.dispose()
        worker_b.dispose()
    assert all(
        row["sv_active"] + row["sv_idle"] + row["sv_used"] <= 1
        for row in bouncer.pools(make_url(db_url).database or "")
    )


def test_a_proof_read_in_pg_stat_activity_opens_nothing_else(
    engine: Engine, db_url: str, services: Settings, worker_user: str, pgbouncer: PgBouncer
) -> None:
    """Every session of the worker login reads the others' query text. A victim's proof
    is there while its transaction waits: another transaction (through the pooler or
    direct, local or for the session) is refused with it, before and after the victim's
    commit; the victim's own door call succeeds. While a door runs, no query text of any
    session holds the secret or the proof key."""
    pgbouncer.add_user(worker_user)
    pooled = pgbouncer.url(db_url, username=worker_user)
    direct = make_url(db_url).set(username=worker_user, password=None)
    job, secret = queued_job(engine, services)
    forbidden = [secret, proof_key(secret).hex()]
    victim = attempt_engine(pooled, secret)
    observer = create_engine(direct)  # the same login, no secret
    attackers = {"pooled": create_engine(pooled), "direct": observer}

    def activity() -> list[str]:
        with observer.connect() as conn:
            return list(
                conn.execute(
                    text("SELECT query FROM pg_stat_activity WHERE usename = :u"),
                    {"u": worker_user},
                ).scalars()
            )

    def replay(stolen: str) -> None:
        for name, attacker in attackers.items():
            for local in (True, False):
                with attacker.connect() as conn:
                    conn.execute(
                        text("SELECT set_config(:n, :p, :local)"),
                        {"n": PROOF_SETTING, "p": stolen, "local": local},
                    )
                    message = denied(conn, BEAT, id=job)
                    assert "attempt secret" in message, (name, local)
                    conn.rollback()

    try:
        with victim.connect() as conn:
            proof = present_proof(conn, secret)  # the victim's transaction stays open
            seen = [q for q in activity() if proof in q]
            assert seen and PROOF_SETTING in seen[0], activity()
            replay(proof)
            assert conn.execute(text(BEAT), {"id": job}).scalar() == "processing"
            conn.commit()
        replay(proof)

        # A door waiting for the row (held by the owner): its query text, and every other
        # session's, holds neither the secret nor the proof key.
        with engine.connect() as holder:
            holder.execute(text("SELECT 1 FROM jobs WHERE id = :id FOR UPDATE"), {"id": job})
            answer: list[Any] = []
            beat = threading.Thread(target=lambda: answer.extend(run(victim, BEAT, id=job)))
            beat.start()
            try:
                waiting = poll(
                    lambda: (
                        [q for q in activity() if "worker_heartbeat" in q]
                        and run(
                            engine,
                            "SELECT count(*) FROM pg_stat_activity WHERE usename = :u "
                            "AND wait_event_type = 'Lock'",
                            u=worker_user,
                        )[0][0]
                    ),
                    timeout=20,
                    message="the victim's heartbeat waiting for the row lock",
                )
                assert waiting
                with engine.connect() as conn:
                    texts = conn.execute(text("SELECT query FROM pg_stat_activity")).scalars()
                    everything = " ".join(t or "" for t in texts)
                assert not [f for f in forbidden if f in everything]
            finally:
                holder.rollback()
                beat.join(20)
        assert answer == [("processing",)]
    finally:
        victim.dispose()
        for attacker in attackers.values():
            attacker.dispose()


# -- the worker's connection -----------------------------------------------------------------
class BeatingJob(ExampleJob):
    """A job whose processing lasts long enough for a few heartbeats (an event, not a
    sleep: it waits for them)."""

    __mapper_args__ = {"polymorphic_identity": "pgbouncer_beating"}
    JOB_NAME = "pgbouncer_beating"
    OUTPUT_PRODUCTS_LIST: ClassVar[list[str]] = []  # a product, nothing to publish: done
    beats: ClassVar[threading.Semaphore]

    def job_pre_processing(self, context: Any) -> None:
        pass

    def job_processing(self, context: Any) -> int:
        for _ in range(3):  # three heartbeats while the science step runs
            assert type(self).beats.acquire(timeout=30), "no heartbeat during processing"
        return 0

    def job_post_processing(self, context: Any, return_code: int) -> None:
        pass


def test_a_worker_holds_one_connection_at_a_time(
    engine: Engine,
    db_url: str,
    services: Settings,
    worker_user: str,
    pgbouncer: PgBouncer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the pooler, a whole attempt (claim, steps, heartbeats, final status) opens
    a new connection for each transaction and never has two at once."""
    pgbouncer.add_user(worker_user)
    beats = threading.Semaphore(0)
    monkeypatch.setattr(BeatingJob, "beats", beats, raising=False)
    with Session(engine) as session:
        job = BeatingJob(input_product_id="B1", tile_id="T1")
        session.add(job)
        session.commit()
        move_to(session, [job.id], S.QUEUED)
        session.execute(text("UPDATE jobs SET attempt = 1 WHERE id = :id"), {"id": job.id})
        secret = issue_attempt_secret(session, services, job.id)
        session.commit()
        job_id = job.id

    figures = {"open": 0, "peak": 0, "connects": 0, "checkouts": 0, "beats": 0}
    lock = threading.Lock()
    made = runner.worker_engine

    def counted(settings: Settings) -> Engine:
        worker = made(settings)

        @event.listens_for(worker, "connect")
        def _connect(*_: Any) -> None:
            with lock:
                figures["connects"] += 1

        @event.listens_for(worker, "checkout")
        def _checkout(*_: Any) -> None:
            with lock:
                figures["checkouts"] += 1
                figures["open"] += 1
                figures["peak"] = max(figures["peak"], figures["open"])

        @event.listens_for(worker, "checkin")
        def _checkin(*_: Any) -> None:
            with lock:
                figures["open"] -= 1

        @event.listens_for(worker, "after_cursor_execute")
        def _beat(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            if "worker_heartbeat" in statement and threading.current_thread().name == "heartbeat":
                with lock:
                    figures["beats"] += 1
                beats.release()

        return worker

    monkeypatch.setattr(runner, "worker_engine", counted)
    settings = Settings(
        database_url=pgbouncer.url(db_url, username=worker_user),
        data_dir=tmp_path / "worker-data",  # no services' key here: the secret is given
        work_root=tmp_path / "work",
        storage_url=(tmp_path / "storage").as_uri(),
        heartbeat_interval_seconds=0.05,
    )
    assert runner.run_worker(job_id, 1, settings, attempt_secret=secret) == 0
    assert run(engine, "SELECT status FROM jobs WHERE id = :id", id=job_id) == [(int(S.DONE),)]
    assert figures["beats"] >= 3
    assert figures["peak"] == 1, figures
    assert figures["connects"] == figures["checkouts"], figures  # a new one each time
    assert figures["open"] == 0


def test_the_worker_command_takes_the_worker_url(
    engine: Engine,
    db_url: str,
    services: Settings,
    worker_user: str,
    pgbouncer: PgBouncer,
    tmp_path: Path,
) -> None:
    """``python -m joblife.worker`` (what the exec start method and Nomad run) uses
    ``worker_database_url`` when set: here the pooler's, while ``database_url`` points
    nowhere."""
    from joblife.jobtypes.test_job import TestJob
    from joblife.lifecycle.creation import insert_jobs

    pgbouncer.add_user(worker_user)
    with Session(engine) as session:
        insert_jobs(session, TestJob, [TestJob(input_product_id="CLI1")], S.INITIALIZED)
        session.commit()
        job_id = session.execute(text("SELECT max(id) FROM jobs")).scalar_one()
        move_to(session, [job_id], S.QUEUED)
        session.execute(text("UPDATE jobs SET attempt = 1 WHERE id = :id"), {"id": job_id})
        secret = issue_attempt_secret(session, services, job_id)
        session.commit()
    env = joblife_env("postgresql://nobody@127.0.0.1:1/nowhere", tmp_path / "worker-data")
    env["JOBLIFE_WORKER_DATABASE_URL"] = pgbouncer.url(db_url, username=worker_user)
    env["JOBLIFE_ATTEMPT_SECRET"] = secret
    env["JOBLIFE_STORAGE_URL"] = (tmp_path / "storage").as_uri()
    done = subprocess.run(
        [sys.executable, "-m", "joblife.worker", str(job_id), "--attempt", "1"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert run(engine, "SELECT status FROM jobs WHERE id = :id", id=job_id) == [(int(S.DONE),)]


# -- the services ------------------------------------------------------------------------------
def test_dispatchers_through_the_pooler_are_serialised(
    engine: Engine, db_url: str, services: Settings, pgbouncer: PgBouncer, tmp_path: Path
) -> None:
    """The dispatch lock is transaction-level: through the pooler, a dispatcher waits while
    another transaction holds it, and two dispatchers queue every job once."""
    pooled = create_engine(pgbouncer.url(db_url))
    holder = create_engine(pgbouncer.url(db_url))
    try:
        worlds = [
            Lifecycle(pooled, services, LocalExecutor(tmp_path / f"exec{i}")) for i in range(2)
        ]
        ids = worlds[0].add_jobs(*({} for _ in range(40)))
        executors = [RecordingExecutor(), RecordingExecutor()]
        reports: list[Any] = []
        with holder.connect() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": DISPATCH_LOCK_KEY})
            threads = [
                threading.Thread(target=lambda w=w, e=e: reports.append(w.dispatch(e)))
                for w, e in zip(worlds, executors, strict=True)
            ]
            for thread in threads:
                thread.start()
            poll(
                lambda: (
                    run(
                        engine,
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                        "AND database = (SELECT oid FROM pg_database "
                        "WHERE datname = current_database())",
                    )[0][0]
                    == 2
                ),
                timeout=20,
                message="both dispatchers waiting for the dispatch lock",
            )
            assert not reports
            conn.rollback()
        for thread in threads:
            thread.join(60)
        dispatched = [job for e in executors for job in e.job_ids]
        assert sorted(dispatched) == sorted(set(dispatched))
        assert sum(r.dispatched for r in reports) == len(dispatched) > 0
        statuses = run(engine, "SELECT count(*) FROM jobs WHERE status = :s", s=int(S.QUEUED))
        assert statuses == [(len(dispatched),)]
        assert set(dispatched) <= set(ids)
    finally:
        pooled.dispose()
        holder.dispose()


def test_the_cli_through_the_pooler(
    engine: Engine, db_url: str, pgbouncer: PgBouncer, tmp_path: Path
) -> None:
    """The CLI's reads and operator commands through PgBouncer."""
    env = joblife_env(pgbouncer.url(db_url), tmp_path / "data")
    with Session(engine) as session:
        jobs = make_jobs(session, 3, prefix="C")
        ids = [job.id for job in jobs]
        move_to(session, ids, S.READY)

    def cli(*args: str) -> str:
        done = subprocess.run(
            [*JOBLIFE, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"joblife {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    assert "ready" in cli("status")
    assert f"{ids[0]}" in cli("jobs", "list", "--limit", "10")
    cli("jobs", "show", str(ids[0]))
    cli("stats", "--since", "1h")
    cli("timeliness")
    cli("jobs", "stale")
    cli("jobs", "cancel", str(ids[0]), "--message", "through the pooler")
    cli("db", "current")  # the revisions, read through the pooler
    assert "database" in cli("health", "--check", "database")
    assert run(engine, "SELECT status FROM jobs WHERE id = :id", id=ids[0]) == [(int(S.CANCELLED),)]


# -- the whole life cycle ----------------------------------------------------------------------
N_JOBS = 24


@pytest.mark.slow
def test_the_life_cycle_through_pgbouncer(
    db_url: str,
    engine: Engine,
    worker_user: str,
    pgbouncer: PgBouncer,
    tmp_path: Path,
    processes: Processes,  # noqa: F811
) -> None:
    """``joblife run`` (creation, configuration, dispatch, monitor, publication to the
    spool) and its local workers (as the joblife_worker role), every connection through
    PgBouncer: every job done at its first attempt, each attempt run once, each product
    message spooled once."""
    pgbouncer.add_user(worker_user)
    data_dir = tmp_path / "data"
    products = data_dir / "test-products"
    write_products(products, N_JOBS // 2, prefix="P", publish=True)
    write_products(products, N_JOBS // 2, prefix="Q")
    env = joblife_env(pgbouncer.url(db_url), data_dir)
    env["JOBLIFE_WORKER_DATABASE_URL"] = pgbouncer.url(db_url, username=worker_user)
    env["JOBLIFE_PUBLICATION_SPOOL"] = str(tmp_path / "spool")

    def diagnose() -> str:
        return (
            f"statuses: {dict(status_counts(engine))}\n{processes.log_tail('run')}\n"
            f"pgbouncer:\n{pgbouncer.log_tail()}"
        )

    orchestrator = processes.start("run", env, "run")
    wait_for(lambda: all_done(engine, N_JOBS), 120, f"{N_JOBS} jobs done", diagnose)
    assert orchestrator.poll() is None, "joblife run stopped by itself\n" + diagnose()
    assert stop_gracefully(orchestrator) < 5

    publishing = [
        S.INITIALIZED,
        S.READY,
        *HAPPY_PATH[2:-1],
        S.START_PUBLICATION,
        S.PUBLISHED,
        S.DONE,
    ]
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, input_product_id FROM jobs")).all()
    product_of = dict(rows)
    for job_id, history in histories(engine).items():
        expected = publishing if product_of[job_id].startswith("P") else HAPPY_PATH
        assert [c.status for c in history] == expected, f"job {job_id}: {history}"
        starts = [c for c in history if c.status is S.STARTED]
        assert [c.details.get("pid") for c in starts] and all(
            c.details.get("attempt") == 1 for c in starts
        )
    assert_each_attempt_ran_once(engine, data_dir / "local-executor")
    lines = [
        json.loads(line)
        for line in (tmp_path / "spool" / "publications.jsonl").read_text().splitlines()
    ]
    assert sorted(line["headers"]["job_id"] for line in lines) == sorted(
        job_id for job_id, product in product_of.items() if product.startswith("P")
    )
    # The workers wrote as the worker role, through the pooler (their own pool), and no
    # attempt's secret ever reached the pooler (not even in a refused startup packet).
    users = {row["user"] for row in pgbouncer.pools(make_url(db_url).database or "")}
    assert worker_user in users, users
    key = attempt_secret_key(Settings(data_dir=data_dir), create=False)
    assert key is not None
    with engine.connect() as conn:
        attempts = conn.execute(text("SELECT id, attempt, unique_id FROM jobs")).all()
    pooler_log = pgbouncer.log_file.read_text(errors="replace")
    assert "unsupported startup parameter" not in pooler_log
    assert not [a for a in attempts if attempt_secret(key, *a) in pooler_log]
