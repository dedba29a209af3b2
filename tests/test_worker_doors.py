"""Worker credentials reach only their own attempt (issue 13, item 10; revision 0011): on
real PostgreSQL, a LOGIN user granted only ``joblife_worker`` writes nothing directly and
every door refuses what the attacks of the issue did (redirecting a ready job's output
path, forging publications for a done job, a heartbeat ten years ahead) and any call
without the attempt's secret. The dispatcher stores the secret's hash and gives the secret
to the executor (the same one again on a re-dispatch); the local executor gives its
workers the secret and ``worker_database_url``; Nomad carries it in the dispatch meta."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from joblife.config import Settings, get_settings
from joblife.db.status import translate_status_error
from joblife.db.worker_doors import attempt_secret, attempt_secret_key, secret_hash
from joblife.errors import ConfigurationError, StatusConflict
from joblife.executors.base import ExecutionRequest
from joblife.executors.local import LocalExecutor, _Launch, _worker_environment
from joblife.lifecycle.dispatch import start_execution
from joblife.model import JobStatus
from joblife.worker.runner import message_id
from pydantic import SecretStr
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tests.support.factories import make_jobs, move_to
from tests.support.lifecycle import (
    FAST_SERVICES,
    Lifecycle,
    RecordingExecutor,
    kill_leftovers,
    wait_for,
)
from tests.test_roles import (
    DENIED,
    denied,
    give_attempt_secret,
    login_as,
    presenting,
    run,
    status,
)

S = JobStatus
OUTCOME = "SELECT worker_record_outcome(:id, :attempt, NULL, NULL, :path)"
OUTBOX = "SELECT worker_write_publications(:id, :attempt, CAST(:messages AS jsonb))"
BEAT = "SELECT worker_heartbeat(:id, :attempt)"
DOOR = "SELECT * FROM worker_set_job_status(:id, :attempt, :status)"


def messages(product: str = "p", **extra: Any) -> str:
    """An outbox door argument: one message for ``product`` (the door computes its id)."""
    return json.dumps([{"product": product, "body": {}, **extra}])


def unique_id(engine: Engine, job_id: int) -> uuid.UUID:
    return run(engine, "SELECT unique_id FROM jobs WHERE id = :id", id=job_id)[0][0]


def conflict(engine: Engine, sql: str, **params: Any) -> None:
    """Assert that ``sql`` is refused as a status conflict (JL003): the job is not there."""
    with pytest.raises(DBAPIError) as info:
        run(engine, sql, **params)
    assert isinstance(translate_status_error(info.value), StatusConflict), info.value.orig


@pytest.fixture
def worker_login(admin_engine: Engine, db_url: str) -> Iterator[Engine]:
    with login_as(admin_engine, db_url, "joblife_worker") as login:
        yield login


def running_job(session: Session, engine: Engine, status: JobStatus = S.PROCESSING) -> Any:
    """A job at attempt 1 in ``status`` with its attempt secret: (job id, secret)."""
    (job,) = make_jobs(session, 1, prefix=f"J{uuid.uuid4().hex[:6]}")
    move_to(session, [job.id], status)
    run(engine, "UPDATE jobs SET attempt = 1 WHERE id = :id", id=job.id)
    return job.id, give_attempt_secret(engine, job.id)


def test_a_ready_jobs_output_path_cannot_be_redirected(
    session: Session, engine: Engine, worker_login: Engine
) -> None:
    ready, ready_secret = running_job(session, engine, S.READY)
    own, secret = running_job(session, engine)
    with presenting(worker_login, ready_secret) as worker:  # even with the right secret
        denied(worker, "UPDATE jobs SET output_path = 'evil' WHERE id = :id", id=ready)
        conflict(worker, OUTCOME, id=ready, attempt=1, path="evil")
    with presenting(worker_login, secret) as worker:
        # Its own running job: set once, to a safe location, then never changed.
        for unsafe in ("out/../good.h5", "out//x", "/abs", "s3://b/a/../x", "out/\x01x"):
            denied(worker, OUTCOME, id=own, attempt=1, path=unsafe)
        run(worker, OUTCOME, id=own, attempt=1, path="s3://bucket/out/J1")
        run(worker, OUTCOME, id=own, attempt=1, path="s3://bucket/out/J1")  # the same: fine
        message = denied(worker, OUTCOME, id=own, attempt=1, path="s3://bucket/out/other")
        assert "may not change the output path" in message
    paths = run(engine, "SELECT id, output_path FROM jobs WHERE id IN (:a, :b)", a=ready, b=own)
    assert dict(paths) == {ready: None, own: "s3://bucket/out/J1"}


def test_publications_cannot_be_forged(
    session: Session, engine: Engine, worker_login: Engine
) -> None:
    done, done_secret = running_job(session, engine, S.DONE)
    processed, processed_secret = running_job(session, engine, S.PROCESSED)
    with presenting(worker_login, done_secret) as worker:
        denied(
            worker,
            "INSERT INTO publications (job_id, attempt, product, message_id, body) "
            "VALUES (:id, 1, 'p', :mid, '{}')",
            id=done,
            mid=str(uuid.uuid4()),
        )
        conflict(worker, OUTBOX, id=done, attempt=1, messages=messages())  # not processed
        # Another job's outbox, even processed: not without that attempt's secret.
        assert "attempt secret" in denied(
            worker, OUTBOX, id=processed, attempt=1, messages=messages()
        )
    with presenting(worker_login, processed_secret) as worker:
        conflict(worker, OUTBOX, id=processed, attempt=2, messages=messages())
        bad = [
            json.dumps({"product": "p"}),
            messages(""),
            messages(message_id="not-a-uuid"),
            messages(message_id=str(uuid.uuid4())),  # not this attempt's id
            json.dumps([{"product": "p", "body": []}]),
        ]
        for forged in bad:
            denied(worker, OUTBOX, id=processed, attempt=1, messages=forged)
        assert run(worker, OUTBOX, id=processed, attempt=1, messages=messages()) == [(1,)]
    rows = run(engine, "SELECT job_id, attempt, republication FROM publications")
    assert rows == [(processed, 1, 0)]


def test_a_worker_cannot_take_another_jobs_message_ids(
    session: Session, engine: Engine, worker_login: Engine
) -> None:
    """Message ids are unique across jobs and predictable: the door computes them from
    the job's own unique id, so a worker can neither pre-claim another job's ids nor
    publish under them; products and bodies are bounded."""
    own, secret = running_job(session, engine, S.PROCESSED)
    victim, victim_secret = running_job(session, engine, S.PROCESSED)
    victims_id = message_id(unique_id(engine, victim), "p", 1)
    with presenting(worker_login, secret) as worker:
        message = denied(
            worker, OUTBOX, id=own, attempt=1, messages=messages(message_id=victims_id)
        )
        assert "message id" in message and victims_id in message
        for product in ("x" * 257, "é" * 129, "p\x1b[2J"):
            assert "refused" in denied(
                worker, OUTBOX, id=own, attempt=1, messages=messages(product)
            )
        huge = json.dumps([{"product": "p", "body": {"blob": "x" * (1 << 20)}}])
        assert "1048576 bytes" in denied(worker, OUTBOX, id=own, attempt=1, messages=huge)
        # Python and SQL compute the same ids (a non-ASCII product too); given or not.
        run(worker, OUTBOX, id=own, attempt=1, messages=messages("é/ü"))
        mine = message_id(unique_id(engine, own), "p", 1)
        run(worker, OUTBOX, id=own, attempt=1, messages=messages("p", message_id=mine))
    with presenting(worker_login, victim_secret) as worker:  # the victim's outbox: intact
        assert run(worker, OUTBOX, id=victim, attempt=1, messages=messages()) == [(1,)]
    rows = run(engine, "SELECT job_id, product, message_id FROM publications ORDER BY id")
    own_uid = unique_id(engine, own)
    assert rows == [
        (own, "é/ü", message_id(own_uid, "é/ü", 1)),
        (own, "p", mine),
        (victim, "p", victims_id),
    ]


def test_the_heartbeat_takes_no_time_from_the_worker(
    session: Session, engine: Engine, worker_login: Engine
) -> None:
    job, secret = running_job(session, engine)
    with presenting(worker_login, secret) as worker:
        future = "UPDATE jobs SET heartbeat_at = now() + interval '10 years' WHERE id = :id"
        denied(worker, future, id=job)
        (before,) = run(engine, "SELECT clock_timestamp()")[0]
        assert run(worker, BEAT, id=job, attempt=1) == [("processing",)]
        (after,) = run(engine, "SELECT clock_timestamp()")[0]
        (beat,) = run(engine, "SELECT heartbeat_at FROM jobs WHERE id = :id", id=job)[0]
        assert before <= beat <= after
        # Another attempt: NULL, nothing stamped; a cancelled job answers so, unstamped.
        assert run(worker, BEAT, id=job, attempt=2) == [(None,)]
        run(engine, "SELECT cancel_jobs(ARRAY[:id]::bigint[])", id=job)
        assert run(worker, BEAT, id=job, attempt=1) == [("cancelled",)]
        assert run(engine, "SELECT heartbeat_at FROM jobs WHERE id = :id", id=job) == [(beat,)]
    other, other_secret = running_job(session, engine)
    with presenting(worker_login, other_secret) as worker:
        future_date = "SELECT worker_record_outcome(:id, 1, NULL, NULL, NULL, now() + '1 day')"
        assert "in the future" in denied(worker, future_date, id=other)


def test_a_door_waiting_for_the_row_sees_the_status_change_it_waited_for(
    session: Session, engine: Engine, worker_login: Engine
) -> None:
    """The heartbeat (and every door) locks the job's row; when the worker's own status
    change holds it, the door waits and then answers with the new status: never "not this
    attempt's" (which stopped a healthy worker when the door joined job_statuses, whose
    row PostgreSQL does not re-read after the wait)."""
    job, secret = running_job(session, engine, S.POST_PROCESSING)
    with presenting(worker_login, secret) as worker, worker.connect() as holder:
        holder.execute(
            text("SELECT * FROM worker_set_job_status(:id, 1, 'processed')"), {"id": job}
        )  # uncommitted: the row stays locked
        holder_pid = holder.execute(text("SELECT pg_backend_pid()")).scalar()
        answers: list[Any] = []
        beat = threading.Thread(target=lambda: answers.extend(run(worker, BEAT, id=job, attempt=1)))
        beat.start()
        wait_for(
            lambda: run(
                engine,
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND :pid = ANY("
                "SELECT unnest(pg_blocking_pids(pid)))",
                pid=holder_pid,
            )[0][0],
            timeout=20,
            message="the heartbeat waiting for the row lock",
        )
        holder.commit()
        beat.join(timeout=20)
    assert answers == [("processed",)]


@pytest.mark.parametrize("presented", [None, "wrong"], ids=["missing", "wrong"])
def test_every_door_refuses_a_wrong_or_missing_secret(
    session: Session, engine: Engine, worker_login: Engine, presented: str | None
) -> None:
    job, secret = running_job(session, engine, S.POST_PROCESSING)
    presented = secret_hash(secret).hex() if presented == "wrong" else None
    calls = [
        (DOOR, {"status": "processed"}),
        (BEAT, {}),
        ("SELECT worker_record_outcome(:id, :attempt, 0)", {}),
        (DOOR, {"status": "external_error"}),
    ]
    with presenting(worker_login, presented) as worker:
        for sql, params in calls:
            assert "attempt secret" in denied(worker, sql, id=job, attempt=1, **params)
    run(engine, "SELECT set_job_status(ARRAY[:id]::bigint[], 'processed')", id=job)
    with presenting(worker_login, presented) as worker:
        denied(worker, OUTBOX, id=job, attempt=1, messages=messages())
    # The right secret opens every door (and a job queued by hand, with no hash, none).
    with presenting(worker_login, secret) as worker:
        assert run(worker, OUTBOX, id=job, attempt=1, messages=messages()) == [(1,)]
        assert run(worker, BEAT, id=job, attempt=1) == [("processed",)]
    run(engine, "UPDATE jobs SET attempt_secret_hash = NULL WHERE id = :id", id=job)
    with presenting(worker_login, secret) as worker:
        denied(worker, BEAT, id=job, attempt=1)
    assert status(engine, job) is S.PROCESSED


def test_dispatch_stores_the_hash_and_a_redispatch_carries_the_same_secret(
    engine: Engine, joblife_env: str, tmp_path: Path
) -> None:
    settings = Settings(database_url=joblife_env, data_dir=tmp_path / "data", **FAST_SERVICES)
    lc = Lifecycle(engine, settings, LocalExecutor(tmp_path / "exec"))
    [job_id] = lc.add_jobs({})
    executor = RecordingExecutor()
    assert lc.dispatch(executor).dispatched == 1
    [(request, _token)] = executor.requests
    secret = request.attempt_secret
    assert secret and secret not in repr(request)
    job = lc.job(job_id)
    assert job.attempt_secret_hash == secret_hash(secret)
    key = attempt_secret_key(settings, create=False)
    assert key is not None and (tmp_path / "data" / "attempt-secret.key").stat().st_mode & 0o77 == 0
    assert secret == attempt_secret(key, job_id, 1, job.unique_id)
    # The monitor's re-dispatch after a crash (same token): the same secret.
    with lc.session() as session:
        start_execution(session, lc.context, executor, job_id, 1, "test", job.worker_flavor)
    assert executor.requests[-1][0].attempt_secret == secret


def test_local_executor_gives_workers_their_secret_and_the_worker_url(
    engine: Engine,
    admin_engine: Engine,
    db_url: str,
    joblife_env: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data_dir = tmp_path / "data"
    monkeypatch.setenv("JOBLIFE_DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    made: list[Lifecycle] = []
    with login_as(admin_engine, db_url, "joblife_worker") as login:
        for name, url in (
            ("worker", login.url.render_as_string(hide_password=False)),
            ("nobody", login.url.set(username="jl_no_such_login").render_as_string(False)),
        ):
            settings = Settings(
                database_url=joblife_env,
                data_dir=data_dir,
                worker_database_url=url,
                heartbeat_interval_seconds=0.2,
                **FAST_SERVICES,
            )
            executor = LocalExecutor.from_settings(settings)
            executor.state_dir = tmp_path / f"exec-{name}"
            executor.state_dir.mkdir()
            made.append(Lifecycle(engine, settings, executor))
        try:
            good, bad = made
            # The worker role's login (no key, no service URL): the job runs to done.
            [job_id] = good.add_jobs({})
            assert good.dispatch().dispatched == 1
            assert good.exit_code(job_id, 1) == 0
            assert good.status(job_id) is S.DONE
            # A login that does not exist: the worker cannot connect (it used that URL).
            [other] = bad.add_jobs({"input_product_id": "other"})
            assert bad.dispatch().dispatched == 1
            assert bad.exit_code(other, 1) == 2  # database unavailable: relaunch
            assert bad.status(other) is S.QUEUED
        finally:
            kill_leftovers(
                [lc.executor.state_dir for lc in made], [r for lc in made for r in lc.records_seen]
            )
    get_settings.cache_clear()


def test_an_exec_worker_gets_the_secret_and_url_in_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOBLIFE_ATTEMPT_SECRET", "stale")
    monkeypatch.setenv("NOMAD_META_attempt_secret", "stale")
    monkeypatch.setenv("JOBLIFE_DATABASE_URL", "postgresql://service@db/joblife")
    request = ExecutionRequest(1, 1, "test", "small", attempt_secret="ab12")
    environment = _worker_environment(request, _Launch("exec", "postgresql://worker@db/jl"))
    assert environment["JOBLIFE_ATTEMPT_SECRET"] == "ab12"
    assert "NOMAD_META_attempt_secret" not in environment
    assert environment["JOBLIFE_DATABASE_URL"] == "postgresql://worker@db/jl"


def test_a_worker_without_its_secret_is_refused_and_asks_for_a_relaunch(
    session: Session, engine: Engine, worker_login: Engine, tmp_path: Path
) -> None:
    from joblife.worker.runner import EXIT_RELAUNCH, run_worker

    job, secret = running_job(session, engine, S.QUEUED)
    url = worker_login.url.render_as_string(hide_password=False)
    settings = Settings(database_url=url, data_dir=tmp_path)
    assert run_worker(job, 1, settings, attempt_secret=secret_hash(secret).hex()) == EXIT_RELAUNCH
    assert status(engine, job) is S.QUEUED
    assert DENIED == "42501"


#: A worker process whose run_worker is a process step reading the worker's initial
#: environment: what the step saw, and whether the worker is dumpable. Started as root
#: with a user id, it becomes that user first (as dumpable as any process after an exec).
WORKER_LIKE = """
import ctypes, json, os, subprocess, sys
import joblife.worker.runner as runner

libc = ctypes.CDLL(None)
runner.get_settings()  # read (and cached) while the configuration is readable
if len(sys.argv) > 1:
    os.setgroups([])
    os.setgid(int(sys.argv[1]))
    os.setuid(int(sys.argv[1]))
    libc.prctl(runner.PR_SET_DUMPABLE, 1, 0, 0, 0)

def step(job_id, attempt, settings, log_fields=None, attempt_secret=None):
    child = subprocess.run(["cat", f"/proc/{os.getpid()}/environ"], capture_output=True)
    seen = b"attempt-secret-in-env" in child.stdout if child.returncode == 0 else "denied"
    dumpable = libc.prctl(runner.PR_GET_DUMPABLE, 0, 0, 0, 0)
    print(json.dumps({"step": seen, "dumpable": dumpable}))
    return 0

runner.run_worker = step
sys.exit(runner.run_worker_process(1, 1))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc: Linux")
def test_a_process_step_cannot_read_the_workers_environment(tmp_path: Path) -> None:
    """The worker process is not dumpable before any step runs: a step running as the same
    non-root user cannot read the secret from /proc/<worker>/environ. Run as root, the
    worker-like process becomes ``nobody`` first (root reads any /proc file: a root
    worker's steps are root anyway)."""
    home = tmp_path / "home"
    home.mkdir()
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "JOBLIFE_DATA_DIR": str(home / "data"),
        "JOBLIFE_ATTEMPT_SECRET": "attempt-secret-in-env",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    user: list[str] = []
    if os.geteuid() == 0:
        user = [str(pwd.getpwnam("nobody").pw_uid)]
    done = subprocess.run(
        [sys.executable, "-c", WORKER_LIKE, *user],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=home,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"step": "denied", "dumpable": 0}


def test_the_nomad_executor_needs_the_attempt_secret_key(tmp_path: Path) -> None:
    """Without ``attempt_secret_key``, each Nomad allocation of the dispatch and monitor
    jobs would make its own key file: a re-dispatch from another one would carry a secret
    the database refuses. The services refuse to start; stopping executions needs no key."""
    from joblife.executors import build_executor
    from joblife.executors.nomad import NomadExecutor

    settings = Settings(nomad_addr="http://127.0.0.1:9", data_dir=tmp_path)
    with pytest.raises(ConfigurationError) as info:
        build_executor(settings)
    message = str(info.value)
    assert "\n" not in message
    assert "attempt_secret_key is not set" in message and "Nomad variable" in message
    assert not (tmp_path / "attempt-secret.key").exists()
    assert isinstance(build_executor(settings, dispatching=False), NomadExecutor)
    keyed = settings.model_copy(update={"attempt_secret_key": SecretStr("k" * 64)})
    assert isinstance(build_executor(keyed), NomadExecutor)
