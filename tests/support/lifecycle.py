"""Helpers to drive the life-cycle services in tests: a per-test harness (database,
settings, executor state and test products under one tmp dir), a recording executor, and
polling with a deadline."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import psutil
from joblife.config import Settings
from joblife.db.status import set_job_status
from joblife.errors import ExecutorError
from joblife.executors.base import (
    ExecutionRequest,
    ExecutionState,
    ExecutionStatus,
    Executor,
    execution_token,
)
from joblife.executors.local import LocalExecutor
from joblife.jobtypes.test_job import TestJob, write_test_product
from joblife.lifecycle.common import ServiceContext, utc_now
from joblife.lifecycle.configuration import ConfigurationReport, configure_jobs
from joblife.lifecycle.creation import CreationReport, create_jobs
from joblife.lifecycle.dispatch import DispatchReport, dispatch_jobs
from joblife.lifecycle.monitor import Monitor, MonitorReport
from joblife.model import Job, JobStatus, JobStatusChange
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

S = JobStatus
T = TypeVar("T")

#: Service settings of the life-cycle test worlds (local and Nomad): small batches, no
#: waiting before a retry or a re-dispatch.
FAST_SERVICES: dict[str, Any] = {
    "batch_size": 50,
    "retry_backoff_seconds": 0,
    "redispatch_grace_seconds": 0,
}

#: The path of a freshly inserted job (initialized) to each status a test starts from.
_PATH: dict[JobStatus, list[JobStatus]] = {
    S.INITIALIZED: [],
    S.READY: [S.READY],
    S.CONFIGURED: [S.CONFIGURED],
}
#: From ready to done, as a worker and the services would walk it.
TO_DONE = [
    S.QUEUED,
    S.STARTED,
    S.PRE_PROCESSING,
    S.PROCESSING,
    S.POST_PROCESSING,
    S.PROCESSED,
    S.DONE,
]


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.1,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy (returned); AssertionError
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout} s waiting for {text}")
        time.sleep(interval)


class RecordingExecutor:
    """An Executor that starts nothing: it records the requests, reports every execution
    running, and fails the dispatch of the jobs in ``fail``."""

    name = "recording"

    def __init__(self, capacity: dict[str, int] | None = None, fail: Iterable[int] = ()) -> None:
        self.requests: list[tuple[ExecutionRequest, str]] = []
        self.stopped: list[str] = []
        self.fail = set(fail)
        self._capacity = dict(capacity or {})

    def dispatch(self, request: ExecutionRequest, token: str) -> str:
        if request.job_id in self.fail:
            raise ExecutorError(f"no node can take job {request.job_id}")
        self.requests.append((request, token))
        return f"fake:{token}"

    def status(self, references: Iterable[str]) -> dict[str, ExecutionStatus]:
        return {r: ExecutionStatus(r, ExecutionState.RUNNING) for r in references}

    def stop(self, reference: str) -> None:
        self.stopped.append(reference)

    def capacity(self, flavor: str) -> int | None:
        return self._capacity.get(flavor)

    @property
    def job_ids(self) -> list[int]:
        return [request.job_id for request, _ in self.requests]


@dataclass
class Lifecycle:
    """One test's life-cycle world: its database, settings, executor and test products."""

    engine: Engine
    settings: Settings
    executor: LocalExecutor
    context: ServiceContext = field(init=False)
    _monitors: dict[int, Monitor] = field(default_factory=dict)
    #: Every execution record read (its processes are killed at the end of the test even
    #: if the test removed the record).
    records_seen: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.context = ServiceContext(self.engine, self.settings)

    # -- products and jobs -----------------------------------------------------------------
    @property
    def products_dir(self) -> Path:
        return self.settings.test_products_path

    def product(self, product_id: str, published_at: datetime, **fields: Any) -> Path:
        return write_test_product(self.products_dir, product_id, published_at, **fields)

    def add_jobs(
        self,
        *specs: dict[str, Any],
        status: JobStatus = S.READY,
        prefix: str = "J",
    ) -> list[int]:
        """Insert one test job per spec (TestJob fields) and move them to ``status``
        (initialized, configured or ready); return their ids in the order given."""
        base = utc_now() - timedelta(hours=1)
        with self.session() as session:
            jobs = []
            for index, spec in enumerate(specs):
                fields = {
                    "input_product_id": f"{prefix}{index:04d}",
                    "input_publication_date": base + timedelta(seconds=index),
                    **spec,
                }
                jobs.append(TestJob(**fields))
            session.add_all(jobs)
            session.commit()
            ids = [job.id for job in jobs]
            for step in _PATH[status]:
                set_job_status(session, ids, step, message=f"test: to {step}")
            session.commit()
        return ids

    def walk(self, job_ids: Sequence[int], steps: Sequence[JobStatus]) -> None:
        """Move the jobs through ``steps`` along allowed transitions (committed)."""
        with self.session() as session:
            for step in steps:
                set_job_status(session, list(job_ids), step, message=f"test: to {step}")
            session.commit()

    # -- the services ----------------------------------------------------------------------
    def create(self, now: datetime | None = None) -> dict[str, CreationReport]:
        return {r.job_type: r for r in create_jobs(self.context, now)}

    def configure(self, now: datetime | None = None) -> dict[str, ConfigurationReport]:
        return {r.job_type: r for r in configure_jobs(self.context, now)}

    def dispatch(self, executor: Executor | None = None) -> DispatchReport:
        return dispatch_jobs(self.context, executor or self.executor)

    def monitor(self, executor: Executor | None = None) -> Monitor:
        executor = executor or self.executor
        return self._monitors.setdefault(id(executor), Monitor(self.context, executor))

    def monitor_cycle(
        self, now: datetime | None = None, executor: Executor | None = None
    ) -> MonitorReport:
        return self.monitor(executor).run_cycle(now)

    # -- reading the database --------------------------------------------------------------
    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def job(self, job_id: int) -> TestJob:
        with self.session() as session:
            job = session.get(Job, job_id)
            assert job is not None, f"job {job_id} does not exist"
            session.refresh(job)  # every column, the job type's own included
            return job  # type: ignore[return-value]

    def job_by_product(self, product_id: str) -> TestJob:
        with self.session() as session:
            job = session.scalars(
                select(TestJob).where(TestJob.input_product_id == product_id)
            ).one()
            return job

    def status(self, job_id: int) -> JobStatus:
        return self.job(job_id).status

    def history(self, job_id: int) -> list[JobStatusChange]:
        with self.session() as session:
            return list(
                session.scalars(
                    select(JobStatusChange)
                    .where(JobStatusChange.job_id == job_id)
                    .order_by(JobStatusChange.id)
                )
            )

    def last_change(self, job_id: int) -> JobStatusChange:
        return self.history(job_id)[-1]

    def wait_status(
        self,
        job_id: int,
        statuses: JobStatus | Iterable[JobStatus],
        timeout: float = 30.0,
        monitor: bool = False,
        dispatch: bool = False,
    ) -> JobStatus:
        """Poll until the job is in one of ``statuses``, running a monitor (and dispatch)
        cycle between polls when asked."""
        wanted = {statuses} if isinstance(statuses, JobStatus) else set(statuses)

        def reached() -> JobStatus | None:
            if monitor:
                self.monitor_cycle()
            if dispatch:
                self.dispatch()
            status = self.status(job_id)
            return status if status in wanted else None

        return wait_for(
            reached,
            timeout=timeout,
            message=lambda: (
                f"job {job_id} to be {sorted(str(s) for s in wanted)} "
                f"(is {self.status(job_id)}; history {self.describe(job_id)})"
            ),
        )

    def describe(self, job_id: int) -> list[tuple[str, str | None]]:
        return [(str(JobStatus(c.status)), c.message) for c in self.history(job_id)]

    # -- the local executor's state --------------------------------------------------------
    def token(self, job_id: int, attempt: int) -> str:
        """The execution token of the job's attempt (named by its unique id too)."""
        return execution_token(job_id, attempt, self.job(job_id).unique_id)

    def state_file(self, job_id: int, attempt: int, suffix: str) -> Path:
        return self.executor.state_dir / f"{self.token(job_id, attempt)}.{suffix}"

    def record(self, job_id: int, attempt: int) -> dict[str, Any]:
        path = self.state_file(job_id, attempt, "json")
        wait_for(path.exists, timeout=10, message=f"{path} to be written")
        record = json.loads(path.read_text())
        self.records_seen.append(record)
        return record

    def exit_code(self, job_id: int, attempt: int, timeout: float = 30.0) -> int:
        path = self.state_file(job_id, attempt, "exit")
        wait_for(path.exists, timeout=timeout, message=f"{path} to be written")
        return int(path.read_text())


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_leftovers(state_dirs: Iterable[Path], records: Iterable[dict[str, Any]] = ()) -> list[int]:
    """SIGKILL the waiters and workers recorded in the executors' state dirs (or in
    ``records``) that still run: the processes these tests started, by pid. Return the
    pids killed."""
    records = list(records)
    for state_dir in state_dirs:
        for path in sorted(Path(state_dir).glob("*.json")):
            with contextlib.suppress(ValueError, OSError):
                records.append(json.loads(path.read_text()))
    killed = []
    for record in records:
        for key in ("worker_pid", "waiter_pid"):
            pid = record.get(key)
            if pid and pid not in killed and alive(pid) and _started_by_us(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
    return killed


def _started_by_us(pid: int) -> bool:
    """A waiter or worker is a fork of this test process: same executable."""
    try:
        return psutil.Process(pid).exe() == psutil.Process().exe()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
