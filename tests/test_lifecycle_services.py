"""Each life-cycle service on its own (issue 3), on real PostgreSQL and real processes:
creation, configuration, dispatch, the crash between the queued commit and the dispatch,
the worker, the monitor and cancellation.

Every test gets a fresh migrated database and its own data directory (test products,
local executor state). Services run in-process, cycle by cycle, with an explicit ``now``
where time matters; workers run either in-process (``run_worker``) or as real processes
forked by the local executor, and every wait polls with a deadline. Workers and waiters
still running at the end of a test are killed by pid.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
from joblife.config import Settings, get_settings
from joblife.db.status import acknowledge_jobs, retry_jobs, set_job_status
from joblife.errors import StatusError
from joblife.executors.base import ExecutionRequest, ExecutionState, ExecutionStatus, Executor
from joblife.executors.local import LocalExecutor
from joblife.jobtypes.test_job import TestJob
from joblife.lifecycle import dispatch as dispatch_module
from joblife.lifecycle import orchestrator as orchestrator_module
from joblife.lifecycle.cancellation import cancel_and_stop
from joblife.lifecycle.common import ServiceContext, utc_now
from joblife.lifecycle.creation import CREATION_LOCK_CLASS, create_jobs
from joblife.lifecycle.orchestrator import Orchestrator
from joblife.model import JobStatus, Publication, load_job_types
from joblife.ops.metrics import PROCESS_REGISTRY
from joblife.worker.heartbeat import Heartbeat
from joblife.worker.runner import EXIT_DO_NOT_RELAUNCH, EXIT_RELAUNCH, run_worker
from sqlalchemy import Engine, select, text

from tests.support.factories import make_jobs, move_to
from tests.support.lifecycle import (
    FAST_SERVICES,
    TO_DONE,
    Lifecycle,
    RecordingExecutor,
    alive,
    kill_leftovers,
    wait_for,
)

S = JobStatus
MISSING_ID = 987_654_321
#: The worker's statuses of a successful attempt, from queued on.
WORKER_PATH = [S.QUEUED, S.STARTED, S.PRE_PROCESSING, S.PROCESSING, S.POST_PROCESSING]


@pytest.fixture
def make_lifecycle(
    engine: Engine, joblife_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Lifecycle]]:
    """Build this test's :class:`Lifecycle` with settings overrides. The ``test`` type's
    discovery and forked workers read the process settings: they point at the same
    database and data directory."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("JOBLIFE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("JOBLIFE_HEARTBEAT_INTERVAL_SECONDS", "0.2")
    get_settings.cache_clear()
    made: list[Lifecycle] = []

    def make(slots: int = 4, **overrides: Any) -> Lifecycle:
        values: dict[str, Any] = {
            "database_url": joblife_env,
            "data_dir": data_dir,
            **FAST_SERVICES,
            "heartbeat_interval_seconds": 0.2,
            **overrides,
        }
        settings = Settings(**values)
        assert settings.test_products_path == get_settings().test_products_path
        executor = LocalExecutor(
            tmp_path / f"exec{len(made)}", default_slots=slots, stop_grace_seconds=5
        )
        made.append(Lifecycle(engine, settings, executor))
        return made[-1]

    yield make
    kill_leftovers(
        [lc.executor.state_dir for lc in made], [r for lc in made for r in lc.records_seen]
    )
    get_settings.cache_clear()


@pytest.fixture
def lc(make_lifecycle: Callable[..., Lifecycle]) -> Lifecycle:
    return make_lifecycle()


def statuses(lc: Lifecycle, job_id: int) -> list[JobStatus]:
    return [JobStatus(change.status) for change in lc.history(job_id)]


def started_rows(lc: Lifecycle, job_id: int) -> list[Any]:
    return [
        c for c in lc.history(job_id) if c.previous_status == S.QUEUED and c.status == S.STARTED
    ]


def in_process_settings(lc: Lifecycle) -> Settings:
    """Settings for ``run_worker`` in this process: no heartbeat fires during the short
    attempt (a heartbeat that sees the job finished SIGTERMs its own process)."""
    return lc.settings.model_copy(update={"heartbeat_interval_seconds": 60.0})


def identified_request(lc: Lifecycle, job_id: int) -> ExecutionRequest:
    """The request of the job's attempt 1, named by its unique id as dispatch names it."""
    unique_id = str(lc.job(job_id).unique_id)
    return ExecutionRequest(job_id, 1, "test", "extra_small", unique_id=unique_id)


def queue(lc: Lifecycle, *specs: dict[str, Any]) -> list[int]:
    """Insert ready jobs and queue them at attempt 1 without starting anything."""
    ids = lc.add_jobs(*specs)
    report = lc.dispatch(RecordingExecutor())
    assert report.dispatched == len(ids)
    return ids


def minute(n: float) -> timedelta:
    return timedelta(minutes=n)


# == creation ===================================================================================
def test_creation_window_starts_at_the_database_cursor(lc: Lifecycle):
    now = utc_now()
    t0 = now - minute(30)
    lc.product("A1", t0)
    lc.product("A2", t0 + minute(1))

    reports = lc.create(now)
    first = reports["test"]
    assert first.error is None
    assert first.window_start == now - timedelta(hours=24)  # no job yet: the lookback
    assert first.window_end == now
    assert (first.discovered, first.inserted, first.already_known, first.cancelled) == (2, 2, 0, 0)
    assert reports["example"].error is None and reports["example"].discovered == 0

    lc.product("A3", t0 + minute(2))
    second = lc.create(now + minute(1))["test"]
    # The window starts at the newest job's publication date: A2 is seen again, A1 is not.
    assert second.window_start == t0 + minute(1)
    assert (second.discovered, second.inserted, second.already_known, second.cancelled) == (
        2,
        1,
        1,
        0,
    )
    with lc.session() as session:
        products = session.scalars(
            select(TestJob.input_product_id).order_by(TestJob.input_product_id)
        ).all()
    assert products == ["A1", "A2", "A3"]
    a3 = lc.job_by_product("A3")
    assert a3.status is S.INITIALIZED and a3.attempt == 0
    assert [(c.previous_status, c.status, c.message) for c in lc.history(a3.id)] == [
        (None, S.INITIALIZED, "created")
    ]

    third = lc.create(now + minute(2))["test"]
    assert (third.discovered, third.inserted, third.already_known) == (1, 0, 1)


def test_creation_records_cancelled_products_directly(lc: Lifecycle):
    now = utc_now()
    t0 = now - minute(10)
    lc.product("K1", t0, behaviour="no_product")
    lc.product("K2", t0 + minute(1), cancel=True)

    report = lc.create(now)["test"]
    assert (report.discovered, report.inserted, report.already_known, report.cancelled) == (
        2,
        1,
        0,
        1,
    )
    k1, k2 = lc.job_by_product("K1"), lc.job_by_product("K2")
    assert k1.status is S.INITIALIZED and k1.behaviour == "no_product"
    assert k2.status is S.CANCELLED
    assert [(c.previous_status, c.status, c.message) for c in lc.history(k2.id)] == [
        (None, S.CANCELLED, "created")
    ]
    # The cancelled product is the cursor: seen again, it is known, not cancelled twice.
    again = lc.create(now + minute(1))["test"]
    assert (again.discovered, again.inserted, again.already_known, again.cancelled) == (1, 0, 1, 0)
    assert len(lc.history(k2.id)) == 1


def test_creation_fresh_context_resumes_from_the_database(
    lc: Lifecycle, engine: Engine, monkeypatch: pytest.MonkeyPatch
):
    now = utc_now()
    t0 = now - minute(30)
    lc.product("F1", t0)
    assert lc.create(now)["test"].inserted == 1
    # Another replica inserted a newer job: the cursor is in the database, nowhere else.
    lc.add_jobs(
        {"input_product_id": "OTHER", "input_publication_date": t0 + minute(10)},
        status=S.INITIALIZED,
    )
    lc.product("F2", t0 + minute(5))  # older than the cursor: outside the window
    lc.product("F3", t0 + minute(15))
    monkeypatch.setattr(TestJob, "LAST_INSERTED_JOB", None)

    fresh = ServiceContext(engine, lc.settings)
    [report] = [r for r in create_jobs(fresh, now) if r.job_type == "test"]
    assert report.error is None
    assert report.window_start == t0 + minute(10)
    assert (report.discovered, report.inserted, report.already_known) == (1, 1, 0)
    assert TestJob.LAST_INSERTED_JOB is not None
    assert TestJob.LAST_INSERTED_JOB.input_product_id == "OTHER"
    with lc.session() as session:
        assert (
            session.scalar(select(TestJob.id).where(TestJob.input_product_id == "F3")) is not None
        )
        assert session.scalar(select(TestJob.id).where(TestJob.input_product_id == "F2")) is None


def test_creation_of_a_type_is_one_replica_at_a_time(lc: Lifecycle, engine: Engine):
    """A replica that finds another creating jobs of a type skips that type for the cycle
    (two replicas' parallel ranges could wait on each other's rows); the other types go
    on, and the next cycle creates the jobs."""
    now = utc_now()
    lc.product("L1", now - minute(5))
    with engine.connect() as other:  # the other replica, in the middle of its cycle
        other.execute(
            text("SELECT pg_advisory_xact_lock(:c, hashtext('test'))"),
            {"c": CREATION_LOCK_CLASS},
        )
        reports = lc.create(now)
        assert reports["test"].busy and reports["test"].error is None
        assert (reports["test"].discovered, reports["test"].inserted) == (0, 0)
        assert not reports["example"].busy
        other.rollback()
    reports = lc.create(now)
    assert not reports["test"].busy and reports["test"].inserted == 1


class _BrokenDiscovery:
    """A job type whose catalogue is down (only what creation calls)."""

    JOB_NAME = "a_broken"

    @classmethod
    def get_last_inserted_job(cls, session: Any) -> None:
        return None

    @classmethod
    def get_jobs_to_create(cls, start: datetime, end: datetime) -> Any:
        raise RuntimeError("catalogue unreachable")


def test_creation_failing_type_is_reported_and_the_others_run(lc: Lifecycle, engine: Engine):
    now = utc_now()
    lc.product("G1", now - minute(5))
    context = ServiceContext(
        engine, lc.settings, job_types={**load_job_types(), "a_broken": _BrokenDiscovery}
    )
    reports = {r.job_type: r for r in create_jobs(context, now)}
    # Every registered type gets its report, in name order: the broken one runs first.
    assert list(reports) == sorted(context.job_types)
    assert next(iter(reports)) == "a_broken"
    assert reports["a_broken"].error == "RuntimeError: catalogue unreachable"
    assert reports["a_broken"].inserted == 0
    assert reports["test"].error is None and reports["test"].inserted == 1


def test_a_type_failing_its_cycle_counts_as_a_loop_error(lc: Lifecycle, engine: Engine):
    """A service that reports a job type's failure in its result (and goes on with the
    others) still counts a loop error for the metrics."""
    context = ServiceContext(
        engine, lc.settings, job_types={**load_job_types(), "a_broken": _BrokenDiscovery}
    )

    def errors(service: str) -> float:
        labels = {"service": service}
        return PROCESS_REGISTRY.get_sample_value("joblife_loop_errors_total", labels) or 0.0

    orchestrator = Orchestrator(context, RecordingExecutor(), ["create"])
    before = errors("create")
    cycle = orchestrator.run_once()
    assert cycle.errors == {}  # reported by the service, not raised
    assert errors("create") == before + 1
    context.job_types.pop("a_broken")
    orchestrator.run_once()
    assert errors("create") == before + 1  # a clean cycle counts none


def test_creation_malformed_product_fails_its_type_only(lc: Lifecycle):
    now = utc_now()
    lc.product("M1", now - minute(5))
    bad = lc.product("M2", now - minute(4), behaviour="explode")

    reports = lc.create(now)
    error = reports["test"].error
    assert error is not None
    assert error.startswith("ValueError: test product M2: unknown behaviour 'explode'")
    assert reports["test"].inserted == 0
    assert reports["example"].error is None
    with lc.session() as session:
        assert session.scalar(text("SELECT count(*) FROM jobs")) == 0  # all or nothing

    bad.unlink()
    fixed = lc.create(now)["test"]
    assert fixed.error is None and fixed.inserted == 1


# == configuration ==============================================================================
def test_configuration_waits_for_a_dependency(make_lifecycle: Callable[..., Lifecycle]):
    lc = make_lifecycle(configure_recheck_seconds=30)
    dep, waiter = lc.add_jobs(
        {"input_product_id": "D0"},
        {"input_product_id": "W0", "depends_on_product": "D0"},
        status=S.INITIALIZED,
    )
    now = utc_now()
    report = lc.configure(now)["test"]
    assert report.error is None and report.examined == 2
    assert report.outcomes == {"ready": 1, "configured": 1}
    assert lc.status(dep) is S.READY
    job = lc.job(waiter)
    assert job.status is S.CONFIGURED
    assert job.waiting_for == "test product D0 to be done"
    assert job.due_at == now + timedelta(seconds=30)
    assert lc.last_change(waiter).message == "waiting for a dependency"

    # Not due yet: not even looked at.
    assert lc.configure(now + timedelta(seconds=10))["test"].examined == 0
    # Due, dependency not done: still configured, next re-check later, no new history row.
    history = len(lc.history(waiter))
    report = lc.configure(now + timedelta(seconds=31))["test"]
    assert (report.examined, report.outcomes) == (1, {"configured": 1})
    job = lc.job(waiter)
    assert job.status is S.CONFIGURED
    assert job.due_at == now + timedelta(seconds=61)
    assert len(lc.history(waiter)) == history

    lc.walk([dep], TO_DONE)
    assert lc.status(dep) is S.DONE
    # Dependency done, but the re-check is not due before due_at.
    assert lc.configure(now + timedelta(seconds=40))["test"].examined == 0
    assert lc.status(waiter) is S.CONFIGURED
    report = lc.configure(now + timedelta(seconds=62))["test"]
    assert (report.examined, report.outcomes) == (1, {"ready": 1})
    job = lc.job(waiter)
    assert job.status is S.READY and job.due_at is None
    assert lc.last_change(waiter).message == "configured: ready to run"


def test_configuration_dependency_deadline(lc: Lifecycle, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(TestJob, "DEPENDENCY_TIMEOUT", timedelta(0))
    [waiter] = lc.add_jobs(
        {"input_product_id": "W1", "depends_on_product": "NEVER"}, status=S.INITIALIZED
    )
    now = utc_now()
    assert lc.configure(now)["test"].outcomes == {"configured": 1}  # the wait begins
    report = lc.configure(now + timedelta(seconds=61))["test"]
    assert report.outcomes == {"internal_error": 1}
    job = lc.job(waiter)
    assert job.status is S.INTERNAL_ERROR and job.due_at is None
    # The wait is counted from the change to configured (the database's time).
    [began] = [c.time for c in lc.history(waiter) if c.status == S.CONFIGURED]
    waited = timedelta(seconds=round((now + timedelta(seconds=61) - began).total_seconds()))
    assert lc.last_change(waiter).message == (
        f"dependency wait deadline (0:00:00) passed after waiting {waited} "
        "for test product NEVER to be done"
    )


def test_configuration_hook_failure_fails_only_that_job(
    make_lifecycle: Callable[..., Lifecycle], monkeypatch: pytest.MonkeyPatch
):
    lc = make_lifecycle(batch_size=3)
    original = TestJob.configure_single_job

    def hook(self: TestJob, session: Any) -> JobStatus:
        if self.input_product_id == "J0001":
            raise RuntimeError("catalogue down")
        if self.input_product_id == "J0002":
            return JobStatus.DONE  # not a configuration outcome
        if self.input_product_id == "J0003":
            return JobStatus.CANCELLED
        return original(self, session)

    monkeypatch.setattr(TestJob, "configure_single_job", hook)
    ids = lc.add_jobs({}, {}, {}, {}, {}, status=S.INITIALIZED)
    first = lc.configure()["test"]
    assert first.examined == 3  # bounded batch, oldest first
    assert first.outcomes == {"ready": 1, "internal_error": 2}
    second = lc.configure()["test"]
    assert second.examined == 2
    assert second.outcomes == {"ready": 1, "cancelled": 1}

    assert [lc.status(i) for i in ids] == [
        S.READY,
        S.INTERNAL_ERROR,
        S.INTERNAL_ERROR,
        S.CANCELLED,
        S.READY,
    ]
    assert lc.last_change(ids[1]).message == (
        "configure_single_job failed: RuntimeError('catalogue down')"
    )
    assert lc.last_change(ids[2]).message.startswith(
        "configure_single_job failed: ValueError('configure_single_job returned done; "
        "expected one of ready, configured, cancelled"
    )
    assert lc.last_change(ids[3]).message == "cancelled by its job type's configuration"


def test_configuration_batch_hook_failure_fails_the_batch(
    lc: Lifecycle, monkeypatch: pytest.MonkeyPatch
):
    def batch(cls: type, session: Any, jobs: list) -> None:
        raise RuntimeError("bulk lookup failed")

    monkeypatch.setattr(TestJob, "configure_batch_jobs", classmethod(batch))
    ids = lc.add_jobs({}, {}, status=S.INITIALIZED)
    report = lc.configure()["test"]
    assert report.error is None
    assert report.outcomes == {"internal_error": 2}
    for job_id in ids:
        assert lc.status(job_id) is S.INTERNAL_ERROR
        assert lc.last_change(job_id).message == (
            "configure_batch_jobs failed: RuntimeError('bulk lookup failed')"
        )


# == dispatch ===================================================================================
def test_dispatch_order_and_overall_cap(make_lifecycle: Callable[..., Lifecycle]):
    lc = make_lifecycle(max_in_flight=3)
    base = utc_now() - timedelta(hours=1)
    specs = {  # name: (priority, minutes after base)
        "A": (3, 0),
        "B": (1, 40),
        "C": (2, 10),
        "D": (1, 20),
        "E": (1, 30),
        "F": (2, 5),
    }
    ids = dict(
        zip(
            specs,
            lc.add_jobs(
                *(
                    {
                        "input_product_id": name,
                        "priority": p,
                        "input_publication_date": base + minute(m),
                    }
                    for name, (p, m) in specs.items()
                )
            ),
            strict=True,
        )
    )
    executor = RecordingExecutor()
    report = lc.dispatch(executor)
    assert report.dispatched == 3 and report.failed == 0
    name_of = {v: k for k, v in ids.items()}
    assert [name_of[i] for i in executor.job_ids] == ["D", "E", "B"]
    assert [token for _, token in executor.requests] == [lc.token(ids[n], 1) for n in "DEB"]
    for name in "DEB":
        job = lc.job(ids[name])
        assert job.status is S.QUEUED and job.attempt == 1
        assert job.nomad_job_id == f"fake:{lc.token(ids[name], 1)}"
        assert lc.last_change(ids[name]).message == "dispatch requested"
    for name in "ACF":
        job = lc.job(ids[name])
        assert job.status is S.READY and job.attempt == 0 and job.nomad_job_id is None

    full = lc.dispatch(executor)
    assert (full.dispatched, full.capped) == (0, {"overall": 3})

    lc.walk([ids["D"]], TO_DONE[1:])  # one slot frees
    report = lc.dispatch(executor)
    assert report.dispatched == 1
    assert executor.job_ids[-1] == ids["F"]  # priority 2, older than C


def test_dispatch_caps_per_type_and_per_flavor(
    make_lifecycle: Callable[..., Lifecycle], session: Any
):
    lc = make_lifecycle(max_in_flight_per_type={"test": 1}, max_in_flight_per_flavor={"small": 2})
    test_ids = lc.add_jobs({}, {}, {})
    examples = make_jobs(session, 3, prefix="EX")
    move_to(session, [j.id for j in examples], S.READY)

    executor = RecordingExecutor()
    report = lc.dispatch(executor)
    assert report.dispatched == 3
    assert report.capped == {"type:test": 1, "flavor:small": 2}
    assert executor.job_ids.count(test_ids[0]) == 1
    assert sum(1 for i in test_ids if lc.status(i) is S.QUEUED) == 1
    assert sum(1 for j in examples if lc.status(j.id) is S.QUEUED) == 2
    # In-flight jobs count against the caps in the next cycle too.
    again = lc.dispatch(executor)
    assert again.dispatched == 0
    assert again.capped == {"type:test": 1, "flavor:small": 2}


def test_dispatch_executor_capacity_caps_the_flavor(make_lifecycle: Callable[..., Lifecycle]):
    lc = make_lifecycle(slots=1)
    first, second = lc.add_jobs(
        {"behaviour": "sleep", "sleep_seconds": 0.5}, {"behaviour": "sleep", "sleep_seconds": 0.5}
    )
    report = lc.dispatch()
    assert report.dispatched == 1 and report.capped == {"flavor:extra_small": 1}
    assert lc.status(second) is S.READY
    assert lc.dispatch().dispatched == 0
    lc.wait_status(second, S.DONE, monitor=True, dispatch=True)
    assert lc.status(first) is S.DONE
    # The second execution started only after the first ended.
    first_done = next(c.time for c in lc.history(first) if c.status == S.DONE)
    [second_started] = started_rows(lc, second)
    assert second_started.time > first_done


def test_dispatch_records_attempt_and_local_reference(lc: Lifecycle):
    [job_id] = lc.add_jobs({})
    report = lc.dispatch()
    assert report.dispatched == 1
    job = lc.job(job_id)
    assert job.attempt == 1
    assert job.nomad_job_id == f"local:{lc.token(job_id, 1)}"
    assert lc.record(job_id, 1)["token"] == lc.token(job_id, 1)
    lc.wait_status(job_id, S.DONE)
    assert lc.exit_code(job_id, 1) == 0


def test_dispatch_failure_fails_that_job_and_goes_on(lc: Lifecycle):
    ids = lc.add_jobs({}, {}, {})
    executor = RecordingExecutor(fail=[ids[1]])
    report = lc.dispatch(executor)
    assert (report.dispatched, report.failed) == (2, 1)
    assert executor.job_ids == [ids[0], ids[2]]
    failed = lc.job(ids[1])
    assert failed.status is S.EXTERNAL_ERROR and failed.nomad_job_id is None
    change = lc.last_change(ids[1])
    assert change.message == f"dispatch failed: no node can take job {ids[1]}"
    assert change.details == {"attempt": 1, "executor": "recording"}
    for job_id in (ids[0], ids[2]):
        job = lc.job(job_id)
        assert job.status is S.QUEUED and job.nomad_job_id == f"fake:{lc.token(job_id, 1)}"

    # Backoff 0: the monitor makes it ready again, the next dispatch is attempt 2.
    assert lc.monitor_cycle(executor=executor).retried == 1
    assert lc.dispatch(RecordingExecutor()).dispatched == 1
    job = lc.job(ids[1])
    expected = (S.QUEUED, 2, f"fake:{lc.token(ids[1], 2)}")
    assert (job.status, job.attempt, job.nomad_job_id) == expected


def _ghost(lc: Lifecycle) -> int:
    with lc.session() as session:
        ghost = session.scalar(
            text(
                "INSERT INTO jobs (job_type, input_product_id, worker_flavor, priority) "
                "VALUES ('ghost', 'G1', 'small', 1) RETURNING id"
            )
        )
        set_job_status(session, ghost, S.READY, message="test: to ready")
        session.commit()
    return ghost


def test_dispatch_unregistered_type_fails_only_that_job(lc: Lifecycle):
    ghost = _ghost(lc)
    [job_id] = lc.add_jobs({"priority": 2})
    executor = RecordingExecutor()
    report = lc.dispatch(executor)
    assert (report.dispatched, report.unknown_type) == (1, 1)
    assert executor.job_ids == [job_id]
    assert lc.status(job_id) is S.QUEUED
    with lc.session() as session:
        status = session.scalar(text("SELECT status FROM jobs WHERE id = :id"), {"id": ghost})
    assert status == S.INTERNAL_ERROR
    message = lc.last_change(ghost).message
    known = ", ".join(sorted(lc.context.job_types))
    assert "not registered" in message and f"(known: {known})" in message


def test_dispatch_unregistered_type_message_names_the_type(lc: Lifecycle):
    ghost = _ghost(lc)
    lc.dispatch(RecordingExecutor())
    assert "ghost" in (lc.last_change(ghost).message or "")


def test_dispatch_capped_jobs_do_not_starve_the_others(
    make_lifecycle: Callable[..., Lifecycle], session: Any
):
    lc = make_lifecycle(batch_size=1, max_in_flight_per_type={"test": 1})
    lc.add_jobs(*({"priority": 1} for _ in range(6)))
    [example] = make_jobs(session, 1, prefix="LATE", priority=3)
    move_to(session, [example.id], S.READY)
    executor = RecordingExecutor()
    assert lc.dispatch(executor).dispatched == 1  # one test job: its type is now full
    report = lc.dispatch(executor)
    assert report.dispatched == 1, report
    assert executor.job_ids[-1] == example.id


# == a crash between the queued commit and the dispatch =========================================
def test_crash_after_queued_commit_is_redispatched_once(
    lc: Lifecycle, monkeypatch: pytest.MonkeyPatch
):
    ids = lc.add_jobs({}, {})

    def crash(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("crash")

    with monkeypatch.context() as patch:
        patch.setattr(dispatch_module, "start_execution", crash)
        with pytest.raises(RuntimeError, match="crash"):
            lc.dispatch()
    for job_id in ids:
        job = lc.job(job_id)
        assert (job.status, job.attempt, job.nomad_job_id) == (S.QUEUED, 1, None)
    assert list(lc.executor.state_dir.iterdir()) == []  # nothing was started

    report = lc.monitor_cycle()
    assert report.redispatched == 2
    for job_id in ids:
        assert lc.job(job_id).nomad_job_id == f"local:{lc.token(job_id, 1)}"
    for job_id in ids:
        lc.wait_status(job_id, S.DONE, monitor=True)
    assert lc.monitor_cycle().redispatched == 0
    for job_id in ids:
        assert len(started_rows(lc, job_id)) == 1
        assert sorted(p.name for p in lc.executor.state_dir.glob(f"{job_id}-*.json")) == [
            f"{lc.token(job_id, 1)}.json"
        ]
        assert lc.exit_code(job_id, 1) == 0
        assert lc.job(job_id).attempt == 1


def test_crash_after_the_executor_started_runs_once(lc: Lifecycle, monkeypatch: pytest.MonkeyPatch):
    [job_id] = lc.add_jobs({"behaviour": "sleep", "sleep_seconds": 0.3})

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("crash before the reference is recorded")

    with monkeypatch.context() as patch:
        patch.setattr(dispatch_module, "record_references", crash)
        with pytest.raises(RuntimeError, match="crash"):
            lc.dispatch()
    assert lc.job(job_id).nomad_job_id is None
    # Whether the monitor finds it still queued (same token: nothing new starts) or
    # already started by its worker, the attempt runs once.
    lc.wait_status(job_id, S.DONE, monitor=True)
    assert len(started_rows(lc, job_id)) == 1
    json_files = sorted(p.name for p in lc.executor.state_dir.glob("*.json"))
    assert json_files == [f"{lc.token(job_id, 1)}.json"]
    assert lc.exit_code(job_id, 1) == 0


def test_local_executor_same_token_starts_once(lc: Lifecycle):
    [job_id] = queue(lc, {"behaviour": "sleep", "sleep_seconds": 0.3})
    unique_id = str(lc.job(job_id).unique_id)
    request = ExecutionRequest(job_id, 1, "test", "extra_small", "joblife-test", unique_id)
    assert isinstance(lc.executor, Executor)
    token = lc.token(job_id, 1)
    first = lc.executor.dispatch(request, token)
    record = lc.record(job_id, 1)
    second = lc.executor.dispatch(request, token)
    assert first == second == f"local:{token}"
    assert lc.record(job_id, 1) == record  # no second waiter or worker
    lc.wait_status(job_id, S.DONE)
    assert lc.exit_code(job_id, 1) == 0
    assert lc.executor.dispatch(request, token) == first  # after the end too
    assert lc.record(job_id, 1) == record
    assert sorted(p.name for p in lc.executor.state_dir.iterdir()) == [
        *(f"{token}.{suffix}" for suffix in ("claim", "exit", "json", "log")),
        "exits.stamp",  # touched by every exit (what wait_for_change watches)
    ]
    assert len(started_rows(lc, job_id)) == 1
    assert "duplicate" not in lc.state_file(job_id, 1, "log").read_text()


@pytest.mark.parametrize(
    ("dispatched", "capped", "busy"),
    [
        (100, {"type:paused": 0}, True),  # a full batch: more may follow at once
        (2, {"flavor:small": 2}, False),  # the slots are full: wait for an exit
        (2, {}, True),  # nothing held back
        (0, {"flavor:small": 2}, False),
    ],
)
def test_dispatch_counts_as_busy_unless_the_caps_leave_less_than_a_batch(
    dispatched: int, capped: dict[str, int], busy: bool
):
    """A type paused by a cap of 0 is always reported capped: with free slots for other
    jobs and a backlog, the orchestrator must not wait for an exit after each batch."""
    result = {"dispatched": dispatched, "failed": 0, "capped": capped}
    assert orchestrator_module._did_work("dispatch", result, 100) is busy


def test_local_executor_forks_a_new_zygote_when_it_died(lc: Lifecycle):
    """The workers are forked by a zygote process (not by the orchestrator); killed, it
    is forked again at the next dispatch and the attempt still starts once."""
    first, second = queue(lc, {}, {})
    lc.executor.dispatch(identified_request(lc, first), lc.token(first, 1))
    zygote = lc.executor._zygote._pid
    assert zygote is not None and zygote != os.getpid()
    assert lc.record(first, 1)["waiter_pid"] != zygote
    os.kill(zygote, signal.SIGKILL)
    # Dead (a zombie until reaped: its pipe is closed), not dying while a request is sent.
    wait_for(lambda: psutil.Process(zygote).status() == psutil.STATUS_ZOMBIE, timeout=10)
    lc.executor.dispatch(identified_request(lc, second), lc.token(second, 1))
    assert lc.executor._zygote._pid not in (None, zygote)
    for job_id in (first, second):
        lc.wait_status(job_id, S.DONE)
        assert lc.exit_code(job_id, 1) == 0
        assert len(started_rows(lc, job_id)) == 1
    lc.executor.close()
    assert lc.executor._zygote._pid is None


# == the worker =================================================================================
@pytest.mark.parametrize(
    ("spec", "final", "exit_code", "message", "product"),
    [
        ({"behaviour": "succeed"}, S.DONE, EXIT_DO_NOT_RELAUNCH, "nothing to publish", True),
        ({"behaviour": "no_product"}, S.DONE, EXIT_DO_NOT_RELAUNCH, "no product", False),
        (
            {"behaviour": "sleep", "sleep_seconds": 0.3},
            S.DONE,
            EXIT_DO_NOT_RELAUNCH,
            "nothing to publish",
            True,
        ),
        (
            {"behaviour": "fail_external"},
            S.EXTERNAL_ERROR,
            EXIT_RELAUNCH,
            "ExternalJobError: test: simulated failure of a dependency",
            None,
        ),
        (
            {"behaviour": "fail_internal"},
            S.INTERNAL_ERROR,
            EXIT_DO_NOT_RELAUNCH,
            "InternalJobError: test: simulated bug",
            None,
        ),
    ],
    ids=["succeed", "no_product", "sleep", "fail_external", "fail_internal"],
)
def test_worker_behaviours(
    lc: Lifecycle,
    spec: dict[str, Any],
    final: JobStatus,
    exit_code: int,
    message: str,
    product: bool | None,
):
    [job_id] = queue(lc, spec)
    assert run_worker(job_id, 1, in_process_settings(lc)) == exit_code
    job = lc.job(job_id)
    assert job.status is final
    history = lc.history(job_id)
    assert history[-1].message == message
    [started] = started_rows(lc, job_id)
    assert started.details["pid"] == os.getpid() and started.details["host"]
    assert started.message == "attempt 1 started"
    assert job.heartbeat_at is not None

    if product is None:  # failed during processing
        assert statuses(lc, job_id) == [S.INITIALIZED, S.READY, *WORKER_PATH[:4], final]
        details = history[-1].details
        assert details["attempt"] == 1
        assert "processing" in details["durations"]
        assert "traceback" not in details  # a classified failure: its message says it all
        return
    assert statuses(lc, job_id) == [
        S.INITIALIZED,
        S.READY,
        *WORKER_PATH,
        S.PROCESSED,
        S.DONE,
    ]
    post = next(c for c in history if c.status == S.POST_PROCESSING)
    assert post.details == {"return_code": 0, "attempt": 1}  # every worker change names it
    processed = next(c for c in history if c.status == S.PROCESSED)
    assert processed.details["return_code"] == 0
    assert processed.details["attempt"] == 1
    assert processed.details["product"] is product
    durations = processed.details["durations"]
    assert set(durations) == {"pre_processing", "processing", "post_processing"}
    assert durations["processing"] >= spec.get("sleep_seconds", 0)
    assert job.exit_code == 0
    assert job.output_path == (f"test://products/{job.input_product_id}" if product else None)
    with lc.session() as session:
        assert session.scalars(select(Publication)).all() == []


def test_worker_publishing_job_writes_its_outbox(lc: Lifecycle):
    [job_id] = queue(lc, {"publish": True})
    assert run_worker(job_id, 1, in_process_settings(lc)) == EXIT_DO_NOT_RELAUNCH
    job = lc.job(job_id)
    assert job.status is S.PROCESSED  # the publication service takes over
    with lc.session() as session:
        [publication] = session.scalars(select(Publication)).all()
    expected_id = str(
        uuid.uuid3(uuid.UUID("6f1c3b9e-6a43-4d53-9c36-7f4a8d2b1e10"), f"{job.unique_id}/result/1")
    )
    assert publication.message_id == expected_id
    assert (publication.job_id, publication.attempt, publication.product) == (job_id, 1, "result")
    assert publication.published_at is None
    assert publication.body["product"] == "result"
    assert publication.body["job_id"] == job_id
    assert publication.body["output_path"] == f"test://products/{job.input_product_id}"


def test_worker_duplicate_or_outdated_attempt_changes_nothing(lc: Lifecycle):
    [job_id] = queue(lc, {})
    settings = in_process_settings(lc)
    before = len(lc.history(job_id))
    assert run_worker(job_id, 2, settings) == EXIT_DO_NOT_RELAUNCH  # not this attempt
    assert lc.status(job_id) is S.QUEUED
    assert len(lc.history(job_id)) == before
    assert run_worker(MISSING_ID, 1, settings) == EXIT_DO_NOT_RELAUNCH

    assert run_worker(job_id, 1, settings) == EXIT_DO_NOT_RELAUNCH
    assert lc.status(job_id) is S.DONE
    after = len(lc.history(job_id))
    assert run_worker(job_id, 1, settings) == EXIT_DO_NOT_RELAUNCH  # a duplicate
    assert run_worker(job_id, None, settings) == EXIT_DO_NOT_RELAUNCH
    assert len(lc.history(job_id)) == after
    assert len(started_rows(lc, job_id)) == 1


def test_worker_exit_codes_through_the_local_executor(lc: Lifecycle):
    behaviours = {
        "succeed": (S.DONE, 0),
        "no_product": (S.DONE, 0),
        "fail_external": (S.EXTERNAL_ERROR, 2),
        "fail_internal": (S.INTERNAL_ERROR, 0),
    }
    ids = lc.add_jobs(*({"behaviour": b} for b in behaviours))
    assert lc.dispatch().dispatched == 4
    for job_id, (status, code) in zip(ids, behaviours.values(), strict=True):
        assert lc.exit_code(job_id, 1) == code
        assert lc.status(job_id) is status
    # Ended executions of jobs in a final or error status are left alone.
    report = lc.monitor_cycle()
    assert (report.checked, report.ended) == (0, 0)


def test_worker_crash_is_detected_and_retried(lc: Lifecycle):
    [job_id] = lc.add_jobs({"behaviour": "crash", "behaviour_attempts": 1})
    lc.dispatch()
    assert lc.exit_code(job_id, 1) == 128 + signal.SIGKILL
    assert lc.status(job_id) is S.PROCESSING  # the worker could record nothing

    report = lc.monitor_cycle()
    assert report.ended == 1
    assert lc.status(job_id) is S.EXTERNAL_ERROR
    change = lc.last_change(job_id)
    assert change.message == (
        "execution ended while the job was processing: worker killed by SIGKILL (exit 137)"
    )
    assert change.details == {
        "attempt": 1,
        "reference": f"local:{lc.token(job_id, 1)}",
        "exit_code": 137,
        "state": "exited",
    }
    assert lc.monitor_cycle().retried == 1
    assert lc.status(job_id) is S.READY
    assert lc.dispatch().dispatched == 1
    lc.wait_status(job_id, S.DONE, monitor=True)
    job = lc.job(job_id)
    assert job.attempt == 2 and job.nomad_job_id == f"local:{lc.token(job_id, 2)}"
    assert len(started_rows(lc, job_id)) == 2
    assert lc.exit_code(job_id, 2) == 0


# == the monitor ================================================================================
def test_monitor_backoff_doubles_per_attempt(make_lifecycle: Callable[..., Lifecycle]):
    lc = make_lifecycle(retry_backoff_seconds=60, retry_backoff_max_seconds=200)
    [job_id] = lc.add_jobs({"max_attempts": 5})
    executor = RecordingExecutor()
    for attempt, wait in ((1, 60), (2, 120), (3, 200)):  # the third is capped at the maximum
        assert lc.dispatch(executor).dispatched == 1
        assert lc.job(job_id).attempt == attempt
        lc.walk([job_id], [S.EXTERNAL_ERROR])
        now = utc_now()
        assert lc.monitor_cycle(now, executor).retried == 0
        assert lc.monitor_cycle(now + timedelta(seconds=wait - 2), executor).retried == 0
        assert lc.status(job_id) is S.EXTERNAL_ERROR
        assert lc.monitor_cycle(now + timedelta(seconds=wait + 1), executor).retried == 1
        assert lc.status(job_id) is S.READY
        assert lc.last_change(job_id).message == "automatic retry after backoff"


def test_monitor_exhaustion(make_lifecycle: Callable[..., Lifecycle]):
    lc = make_lifecycle(retry_backoff_seconds=60)
    [job_id] = lc.add_jobs({"max_attempts": 2})
    executor = RecordingExecutor()
    lc.dispatch(executor)
    with lc.session() as session:
        set_job_status(session, job_id, S.EXTERNAL_ERROR, message="disk full")
        session.commit()
    assert lc.monitor_cycle(utc_now() + timedelta(seconds=61), executor).retried == 1
    lc.dispatch(executor)
    with lc.session() as session:
        set_job_status(session, job_id, S.EXTERNAL_ERROR, message="disk full again")
        session.commit()
    # Out of attempts: no backoff to wait for.
    report = lc.monitor_cycle(executor=executor)
    assert (report.retried, report.exhausted) == (0, 1)
    job = lc.job(job_id)
    assert job.status is S.INTERNAL_ERROR and job.attempt == 2
    assert lc.last_change(job_id).message == (
        "attempts exhausted (2 of 2); last error: disk full again"
    )


def test_monitor_covers_every_in_flight_job_in_batches(make_lifecycle: Callable[..., Lifecycle]):
    lc = make_lifecycle(batch_size=2)
    ids = lc.add_jobs({}, {}, {})
    executor = RecordingExecutor()
    lc.dispatch(executor)
    lc.dispatch(executor)
    assert all(lc.status(i) is S.QUEUED for i in ids)

    class EndsTheLast(RecordingExecutor):
        def status(self, references: Any) -> Any:
            result = super().status(references)
            ended = f"fake:{lc.token(ids[-1], 1)}"
            if ended in result:
                result[ended] = ExecutionStatus(ended, ExecutionState.EXITED, 1, "worker exited 1")
            return result

    monitor = lc.monitor(EndsTheLast())
    first = monitor.run_cycle()
    assert (first.checked, first.ended) == (2, 0)
    second = monitor.run_cycle()
    assert (second.checked, second.ended) == (1, 1)
    assert lc.status(ids[-1]) is S.EXTERNAL_ERROR
    assert lc.last_change(ids[-1]).message == (
        "execution ended while the job was queued: worker exited 1"
    )


def test_monitor_stale_heartbeat(
    make_lifecycle: Callable[..., Lifecycle], monkeypatch: pytest.MonkeyPatch
):
    lc = make_lifecycle(heartbeat_timeout_seconds=2)
    [job_id] = lc.add_jobs({"behaviour": "hang"})
    lc.dispatch()
    lc.wait_status(job_id, S.PROCESSING, timeout=15)
    record = lc.record(job_id, 1)
    stopped: list[str] = []
    original_stop = lc.executor.stop

    def spy(reference: str) -> None:
        stopped.append(reference)
        original_stop(reference)

    monkeypatch.setattr(lc.executor, "stop", spy)
    # A hanging worker keeps its process but stops beating: a second after its last
    # beat it is not stale yet (checked at that time, however late this cycle runs).
    last_beat = lc.job(job_id).heartbeat_at
    assert last_beat is not None
    assert lc.monitor_cycle(now=last_beat + timedelta(seconds=1)).stale == 0
    assert lc.status(job_id) is S.PROCESSING
    lc.wait_status(job_id, S.EXTERNAL_ERROR, timeout=15, monitor=True)
    assert stopped == [f"local:{lc.token(job_id, 1)}"]
    change = lc.last_change(job_id)
    assert re.fullmatch(
        r"worker heartbeat stale \(last \S+\) while the job was processing; execution stopped",
        change.message or "",
    ), change.message
    assert change.details == {"attempt": 1, "reference": f"local:{lc.token(job_id, 1)}"}
    assert wait_or_false(lambda: not alive(record["worker_pid"]), timeout=3), (
        "the monitor's stop did not end the hung worker"
    )


def wait_or_false(predicate: Callable[[], bool], timeout: float) -> bool:
    try:
        wait_for(predicate, timeout=timeout)
    except AssertionError:
        return False
    return True


def test_monitor_lost_execution_after_its_processes_vanished(lc: Lifecycle):
    [job_id] = lc.add_jobs({"behaviour": "sleep", "sleep_seconds": 20})
    lc.dispatch()
    lc.wait_status(job_id, S.PROCESSING, timeout=15)
    record = lc.record(job_id, 1)
    os.kill(record["waiter_pid"], signal.SIGKILL)  # the supervisor first: no exit status
    wait_for(lambda: not alive(record["waiter_pid"]), timeout=5)
    os.kill(record["worker_pid"], signal.SIGKILL)
    wait_for(lambda: not alive(record["worker_pid"]), timeout=5)

    report = lc.monitor_cycle()
    assert report.ended == 1
    assert lc.status(job_id) is S.EXTERNAL_ERROR
    change = lc.last_change(job_id)
    assert change.message == (
        "execution vanished while the job was processing: the worker "
        f"(pid {record['worker_pid']}) and its supervisor vanished without an exit status "
        "(machine restarted or processes killed)"
    )
    assert change.details["state"] == "lost" and change.details["exit_code"] is None
    assert not lc.state_file(job_id, 1, "exit").exists()


def test_monitor_lost_execution_after_its_state_was_removed(lc: Lifecycle):
    [job_id] = lc.add_jobs({"behaviour": "sleep", "sleep_seconds": 20})
    lc.dispatch()
    lc.wait_status(job_id, S.PROCESSING, timeout=15)
    record = lc.record(job_id, 1)
    lc.state_file(job_id, 1, "json").unlink()
    lc.state_file(job_id, 1, "exit").unlink(missing_ok=True)
    # A fresh claim without its record is a dispatch in progress: pending, not lost.
    assert lc.monitor_cycle().ended == 0
    assert lc.status(job_id) is S.PROCESSING
    claim = lc.state_file(job_id, 1, "claim")
    old = claim.stat().st_mtime - 120
    os.utime(claim, (old, old))

    assert lc.monitor_cycle().ended == 1
    assert lc.status(job_id) is S.EXTERNAL_ERROR
    change = lc.last_change(job_id)
    assert change.message.startswith(
        "execution vanished while the job was processing: no local execution record"
    )
    assert change.details["state"] == "lost"
    # The worker learns through its heartbeat that the attempt is no longer its own.
    wait_for(lambda: not alive(record["worker_pid"]), timeout=10, message="the worker to stop")
    assert lc.status(job_id) is S.EXTERNAL_ERROR


def test_forked_workers_show_their_job_in_the_process_title(lc: Lifecycle):
    [job_id] = lc.add_jobs({"behaviour": "sleep", "sleep_seconds": 30})
    lc.dispatch()
    lc.wait_status(job_id, S.PROCESSING, timeout=15)
    record = lc.record(job_id, 1)
    titles = {
        pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        for pid in (record["worker_pid"], record["waiter_pid"])
    }
    assert titles[record["worker_pid"]] == f"joblife worker {job_id}-1"
    assert titles[record["waiter_pid"]] == f"joblife waiter {job_id}-1"
    with lc.session() as session:
        cancel_and_stop(session, lc.executor, [job_id], "done looking")
        session.commit()
    wait_for(lambda: not alive(record["worker_pid"]), timeout=10, message="the worker to stop")


# == cancellation and operator retry ============================================================
def test_cancel_and_stop_a_running_job(lc: Lifecycle):
    [job_id] = lc.add_jobs({"behaviour": "sleep", "sleep_seconds": 30})
    lc.dispatch()
    lc.wait_status(job_id, S.PROCESSING, timeout=15)
    record = lc.record(job_id, 1)
    assert alive(record["worker_pid"])

    with lc.session() as session:
        changes = cancel_and_stop(session, lc.executor, [job_id], "operator: stop it")
        stopped_by_executor = lc.state_file(job_id, 1, "exit").exists()
        session.commit()
    assert [(c.job_id, c.previous_status, c.status) for c in changes] == [
        (job_id, S.PROCESSING, S.CANCELLED)
    ]
    job = lc.job(job_id)
    assert job.status is S.CANCELLED and job.due_at is None
    assert lc.last_change(job_id).message == "operator: stop it"
    wait_for(lambda: not alive(record["worker_pid"]), timeout=10, message="the worker to stop")
    lc.exit_code(job_id, 1)  # its supervisor recorded the end
    assert lc.monitor_cycle().ended == 0
    assert lc.status(job_id) is S.CANCELLED
    assert stopped_by_executor, "the executor's stop did not end the worker"


def test_refused_cancel_stops_nothing(lc: Lifecycle):
    running, finished = queue(lc, {}, {})
    lc.walk([finished], TO_DONE[1:])
    executor = RecordingExecutor()
    with lc.session() as session:
        with pytest.raises(StatusError):  # done cannot be cancelled: nothing is
            cancel_and_stop(session, executor, [running, finished], "operator: stop both")
        session.rollback()
    assert lc.status(running) is S.QUEUED
    assert executor.stopped == []


def test_local_executor_stop_ends_the_execution(lc: Lifecycle):
    [job_id] = queue(lc, {"behaviour": "hang"})
    reference = lc.executor.dispatch(identified_request(lc, job_id), lc.token(job_id, 1))
    lc.wait_status(job_id, S.PROCESSING, timeout=15)
    record = lc.record(job_id, 1)
    lc.executor.stop(reference)
    assert not alive(record["worker_pid"])
    assert lc.exit_code(job_id, 1, timeout=1) == 128 + signal.SIGTERM


def test_retry_of_an_error_checked_job_runs_to_done(lc: Lifecycle):
    [job_id] = lc.add_jobs({"behaviour": "fail_external", "behaviour_attempts": 1})
    lc.dispatch()
    lc.wait_status(job_id, S.EXTERNAL_ERROR)
    assert lc.exit_code(job_id, 1) == EXIT_RELAUNCH
    with lc.session() as session:
        acknowledge_jobs(session, job_id, "seen")
        session.commit()
    assert lc.status(job_id) is S.ERROR_CHECKED
    assert lc.monitor_cycle().retried == 0  # not the monitor's to retry

    with lc.session() as session:
        [change] = retry_jobs(session, job_id, "operator: try again")
        session.commit()
    assert (change.previous_status, change.status) == (S.ERROR_CHECKED, S.READY)
    assert lc.dispatch().dispatched == 1
    job = lc.job(job_id)
    assert (job.attempt, job.nomad_job_id) == (2, f"local:{lc.token(job_id, 2)}")
    lc.wait_status(job_id, S.DONE, monitor=True)
    assert lc.exit_code(job_id, 2) == 0
    assert len(started_rows(lc, job_id)) == 2
    assert json.loads(lc.state_file(job_id, 2, "json").read_text())["attempt"] == 2


def test_worker_exit_code_is_not_changed_by_its_own_heartbeat(
    make_lifecycle: Callable[..., Lifecycle], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("JOBLIFE_HEARTBEAT_INTERVAL_SECONDS", "0.05")
    get_settings.cache_clear()
    lc = make_lifecycle()
    original_stop = Heartbeat.stop

    def slow_stop(self: Heartbeat) -> None:  # widens the window between commit and stop
        time.sleep(0.5)
        original_stop(self)

    monkeypatch.setattr(Heartbeat, "stop", slow_stop)  # inherited by the forked workers
    ids = lc.add_jobs({}, {"behaviour": "fail_external"})
    lc.dispatch()
    lc.wait_status(ids[0], S.DONE)
    lc.wait_status(ids[1], S.EXTERNAL_ERROR)
    assert [lc.exit_code(i, 1) for i in ids] == [EXIT_DO_NOT_RELAUNCH, EXIT_RELAUNCH]


def test_dispatch_cap_of_zero_pauses_a_type(make_lifecycle: Callable[..., Lifecycle]):
    lc = make_lifecycle(max_in_flight_per_type={"test": 0})
    ids = lc.add_jobs({}, {})
    executor = RecordingExecutor()
    report = lc.dispatch(executor)
    assert report.dispatched == 0 and executor.requests == []
    assert report.capped == {"type:test": 0}
    assert [lc.status(i) for i in ids] == [S.READY, S.READY]


def test_worker_holds_no_transaction_while_a_hook_runs(lc: Lifecycle, engine: Engine):
    """A long science step must not keep a transaction open (it would hold back VACUUM)."""
    [job_id] = lc.add_jobs({"behaviour": "sleep", "sleep_seconds": 3})
    assert lc.dispatch().dispatched == 1  # through the real local executor
    wait_for(lambda: lc.status(job_id) is S.PROCESSING, timeout=20, message="processing")
    time.sleep(1.5)
    # A transaction held across the hook has been open since before it started; the
    # heartbeat's own (UPDATE, COMMIT) lasts milliseconds and may be caught between the two.
    with engine.connect() as conn:
        idle = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'idle in transaction' AND xact_start < now() - interval '1 second'"
            )
        ).scalar()
    assert idle == 0
    wait_for(lambda: lc.status(job_id) is S.DONE, timeout=20, message="done")


def test_orchestrator_held_by_slots_wakes_when_an_execution_ends(
    make_lifecycle: Callable[..., Lifecycle],
):
    """With one slot and a 30 s idle interval, three jobs still finish in seconds: the loop
    wakes when an execution ends instead of sleeping the interval."""
    lc = make_lifecycle(slots=1, loop_interval=30.0)
    ids = lc.add_jobs({}, {}, {})
    stop = threading.Event()
    orchestrator = Orchestrator(lc.context, lc.executor, stop_event=stop)
    thread = threading.Thread(target=orchestrator.run_forever, daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        wait_for(lambda: all(lc.status(i) is S.DONE for i in ids), timeout=20, message="done")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert time.monotonic() - started < 20
    assert not thread.is_alive()


def test_dispatch_skips_a_ready_job_locked_by_another_transaction(lc: Lifecycle, engine: Engine):
    ids = lc.add_jobs({}, {}, {})
    with engine.connect() as other:  # e.g. an operator's cancel, not committed yet
        other.execute(text("SELECT 1 FROM jobs WHERE id = :id FOR UPDATE"), {"id": ids[1]})
        executor = RecordingExecutor()
        report = lc.dispatch(executor)
        assert report.dispatched == 2
        assert executor.job_ids == [ids[0], ids[2]]
        other.rollback()
    assert lc.job(ids[1]).status is S.READY
    assert lc.job(ids[1]).attempt == 0
    report = lc.dispatch(executor)  # the next cycle takes it
    assert report.dispatched == 1 and executor.job_ids[-1] == ids[1]


def test_monitor_leaves_publication_failures_to_the_operator(
    make_lifecycle: Callable[..., Lifecycle],
):
    lc = make_lifecycle(retry_backoff_seconds=0)
    at_publication, at_processing = lc.add_jobs({}, {})
    executor = RecordingExecutor()
    assert lc.dispatch(executor).dispatched == 2
    with lc.session() as session:
        set_job_status(
            session,
            at_publication,
            S.EXTERNAL_ERROR,
            message="unroutable",
            details={"stage": "publication", "product": "mask"},
        )
        set_job_status(session, at_processing, S.EXTERNAL_ERROR, message="disk full")
        session.commit()
    report = lc.monitor_cycle(utc_now() + timedelta(seconds=1), executor)
    assert (report.retried, report.exhausted) == (1, 0)
    assert lc.status(at_processing) is S.READY
    assert lc.status(at_publication) is S.EXTERNAL_ERROR


def test_monitor_counts_executions_the_executor_cannot_answer_for(lc: Lifecycle):
    ids = lc.add_jobs({}, {})
    executor = RecordingExecutor()
    assert lc.dispatch(executor).dispatched == 2
    executor.status = lambda references: {}  # e.g. Nomad unreachable
    report = lc.monitor_cycle(executor=executor)
    assert (report.checked, report.unknown, report.ended) == (2, 2, 0)
    assert [lc.status(i) for i in ids] == [S.QUEUED, S.QUEUED]
