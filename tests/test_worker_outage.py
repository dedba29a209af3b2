"""A worker rides through a database outage shorter than ``worker_database_retry_seconds``
(issue 14, item 3): its writes are retried on new connections (which still present the
attempt's secret) and the attempt carries on, its science step run once. A longer outage
still ends the worker with exit 2 (relaunch).

The outage is made by a TCP proxy in front of the real PostgreSQL server: the worker's
database URL points at it; "cut" closes every proxied connection and refuses new ones,
"restore" accepts again. The shared server itself is never stopped."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import psycopg2
import pytest
from joblife.config import Settings
from joblife.db.status import set_job_status
from joblife.db.worker_doors import is_connection_failure, issue_attempt_secret, retry_on_outage
from joblife.errors import StatusConflict
from joblife.model import Job, JobStatus
from joblife.worker import runner
from joblife.worker.context import WorkerContext
from joblife.worker.runner import EXIT_DO_NOT_RELAUNCH, EXIT_RELAUNCH, run_worker
from sqlalchemy import Engine, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from tests.support.example_type import ExampleJob
from tests.support.tcp_proxy import TcpProxy

S = JobStatus
#: The deliberate length of the outage that spans a status change (seconds).
OUTAGE_SECONDS = 6
#: Upper bound of any wait on an event (a hang fails the test instead of blocking it).
WAIT = 60


class OutageJob(ExampleJob):
    """A job whose steps touch nothing but a count file: the science step appends a line
    to it, says it runs, and returns only when the test lets it."""

    __mapper_args__ = {"polymorphic_identity": "outage_test"}
    JOB_NAME = "outage_test"
    OUTPUT_PRODUCTS_LIST: ClassVar[list[str]] = []  # a product, nothing to publish: done
    count_file: ClassVar[Path]
    in_science: ClassVar[threading.Event]
    release: ClassVar[threading.Event]

    def job_pre_processing(self, context: WorkerContext) -> None:
        pass

    def job_processing(self, context: WorkerContext) -> int:
        with type(self).count_file.open("a") as file:
            file.write("ran\n")
        type(self).in_science.set()
        assert type(self).release.wait(WAIT), "the test never released the science step"
        return 0

    def job_post_processing(self, context: WorkerContext, return_code: int) -> None:
        self.output_path = f"outputs/{self.input_product_id}"  # recorded after the outage


@pytest.fixture
def proxy(db_url: str) -> Iterator[TcpProxy]:
    url = make_url(db_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    yield proxy
    proxy.close()


@pytest.fixture
def world(
    engine: Engine, db_url: str, proxy: TcpProxy, tmp_path: Path, monkeypatch: Any
) -> Iterator[World]:
    monkeypatch.setattr(OutageJob, "count_file", tmp_path / "executions", raising=False)
    monkeypatch.setattr(OutageJob, "in_science", threading.Event(), raising=False)
    monkeypatch.setattr(OutageJob, "release", threading.Event(), raising=False)
    world = World(engine, db_url, proxy, tmp_path)
    yield world
    OutageJob.release.set()  # never leave a worker thread waiting
    proxy.restore()
    if world.thread is not None:
        world.thread.join(WAIT)


class World:
    """The test's database (direct), the worker's settings (through the proxy), and the
    worker running in a thread."""

    def __init__(self, engine: Engine, db_url: str, proxy: TcpProxy, tmp: Path) -> None:
        self.engine = engine
        proxied = make_url(db_url).set(host="127.0.0.1", port=proxy.port)
        self.settings = Settings(
            database_url=proxied.render_as_string(hide_password=False),
            data_dir=tmp / "data",
            work_root=tmp / "work",
            storage_url=(tmp / "storage").as_uri(),
            heartbeat_interval_seconds=0.5,
        )
        self.thread: threading.Thread | None = None
        self.exit_code: int | None = None

    def job(self) -> int:
        """An outage_test job queued for attempt 1, with its secret."""
        with Session(self.engine) as session:
            job = OutageJob(input_product_id="P1", tile_id="T31")
            session.add(job)
            session.commit()
            for status in (S.READY, S.QUEUED):
                set_job_status(session, job.id, status)
            session.execute(update(Job).where(Job.id == job.id).values(attempt=1))
            issue_attempt_secret(session, self.settings, job.id)
            session.commit()
            return job.id

    def start(self, job_id: int, **settings: Any) -> None:
        worker_settings = self.settings.model_copy(update=settings)

        def work() -> None:
            self.exit_code = run_worker(job_id, 1, worker_settings)

        self.thread = threading.Thread(target=work, name="worker", daemon=True)
        self.thread.start()

    def finish(self) -> int | None:
        assert self.thread is not None
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the worker did not end"
        return self.exit_code

    def load(self, job_id: int) -> OutageJob:
        with Session(self.engine, expire_on_commit=False) as session:
            job = session.get(Job, job_id)
            session.refresh(job)
            return job  # type: ignore[return-value]


def executions() -> int:
    return len(OutageJob.count_file.read_text().splitlines())


def test_an_outage_shorter_than_the_retry_budget_costs_no_attempt(
    world: World, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="joblife.worker.runner")
    job_id = world.job()
    world.start(job_id, worker_database_retry_seconds=60)
    assert OutageJob.in_science.wait(WAIT), "the science step never started"
    assert world.load(job_id).status is S.PROCESSING

    proxy.cut()  # the database goes down while the science step runs ...
    OutageJob.release.set()  # ... which returns into it: processing → post_processing waits
    assert proxy.refused.wait(WAIT), "the worker never tried the database during the outage"
    time.sleep(OUTAGE_SECONDS)  # the deliberate outage
    assert world.thread is not None and world.thread.is_alive(), "the worker gave up"
    proxy.restore()

    assert world.finish() == EXIT_DO_NOT_RELAUNCH
    job = world.load(job_id)
    assert (job.status, job.attempt) == (S.DONE, 1)
    assert (job.exit_code, job.output_path) == (0, "outputs/P1")  # the outcome door retried
    assert executions() == 1
    assert "database unreachable" in caplog.text  # a status change was retried, not lost


def test_an_outage_longer_than_the_retry_budget_still_exits_for_a_relaunch(
    world: World, proxy: TcpProxy
):
    job_id = world.job()
    world.start(job_id, worker_database_retry_seconds=2)
    assert OutageJob.in_science.wait(WAIT), "the science step never started"

    proxy.cut()  # and it stays down until the worker gave up
    OutageJob.release.set()
    assert world.finish() == EXIT_RELAUNCH
    proxy.restore()

    job = world.load(job_id)  # nothing recorded: the monitor fails the attempt as external
    assert (job.status, job.attempt) == (S.PROCESSING, 1)
    assert executions() == 1


@pytest.mark.parametrize("lost", [S.STARTED, S.POST_PROCESSING, S.DONE])
def test_a_write_committed_but_whose_answer_was_lost_is_not_taken_for_a_conflict(
    world: World, monkeypatch: pytest.MonkeyPatch, lost: JobStatus
):
    """The outage cuts the connection after the server committed a status change but
    before the worker heard it: the retry conflicts with the worker's own change, which
    it recognizes (the claim by its nonce), and the attempt carries on."""
    real = runner.worker_set_job_status

    def answer_lost(executor: Session, job_id: int, attempt: int, new_status: Any, **kw: Any):
        changes = real(executor, job_id, attempt, new_status, **kw)
        if new_status is lost and not answer_lost.done:  # type: ignore[attr-defined]
            answer_lost.done = True  # type: ignore[attr-defined]
            executor.commit()
            reason = psycopg2.OperationalError("server closed the connection unexpectedly")
            raise OperationalError("COMMIT", {}, reason)
        return changes

    answer_lost.done = False  # type: ignore[attr-defined]
    monkeypatch.setattr(runner, "worker_set_job_status", answer_lost)
    OutageJob.release.set()
    job_id = world.job()
    world.start(job_id, worker_database_retry_seconds=60)
    assert world.finish() == EXIT_DO_NOT_RELAUNCH
    assert answer_lost.done  # type: ignore[attr-defined]
    job = world.load(job_id)
    assert (job.status, job.attempt) == (S.DONE, 1)
    assert executions() == 1


@pytest.mark.parametrize(
    ("message", "retried"),
    [
        ('connection to server at "127.0.0.1", port 5432 failed: Connection refused', True),
        ("server closed the connection unexpectedly", True),
        ("FATAL:  the database system is starting up", True),
        ("FATAL:  terminating connection due to administrator command", True),
        ('connection to server failed: FATAL:  role "nobody" does not exist', False),
        ("connection to server failed: FATAL:  password authentication failed", False),
    ],
)
def test_only_connection_failures_are_retried(message: str, retried: bool):
    """A server down, restarting or unreachable is retried; a login it refuses is not."""
    error = OperationalError("SELECT 1", {}, psycopg2.OperationalError(message))
    assert is_connection_failure(error) is retried


def test_a_refusal_is_not_retried():
    """A door's refusal (a wrong secret: insufficient_privilege) or a status conflict
    answers the same again: raised at once, never retried."""
    tries = []

    def refused() -> None:
        tries.append(1)
        raise StatusConflict("job 1 is done", 1, "done", ["processing"], "post_processing")

    with pytest.raises(StatusConflict):
        retry_on_outage(refused, 60, sleep=lambda _: pytest.fail("a refusal was retried"))
    assert tries == [1]
