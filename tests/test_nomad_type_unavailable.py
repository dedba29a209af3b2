"""A job type whose Nomad parameterized job is missing, stopped or not parameterized
(issue 14, item 7): dispatch of that type pauses, its jobs keep their attempt, the other
types go on, ``health``, the metrics and the log (once) say so, and dispatch resumes by
itself once the job is deployed. Unclassified 500s spend at most one attempt per retry
delay. Against the Nomad API double, which answers these dispatches as Nomad does (500 and
Nomad's text; ``GET /v1/job/<id>`` 404 for a job it does not know)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from joblife.config import get_settings
from joblife.db.status import set_job_status
from joblife.errors import ExecutorError
from joblife.executors import base
from joblife.executors.base import ExecutionRequest, ExecutorUnavailable
from joblife.executors.nomad import NomadExecutor
from joblife.jobtypes.h5repack import H5RepackJob
from joblife.lifecycle.cancellation import cancel_and_stop
from joblife.lifecycle.common import utc_now
from joblife.model import JobStatus, load_job_types
from joblife.nomad.client import nomad_client
from joblife.nomad.deploy import deploy_specs
from joblife.nomad.specs import render_specs
from joblife.ops.health import run_checks
from joblife.ops.metrics import PROCESS_REGISTRY
from sqlalchemy import text

from tests.nomad_double import NomadDouble
from tests.support.nomad import NomadWorld, nomad_test_settings
from tests.test_nomad_lifecycle import drive, statuses
from tests.test_ops_health import health, isolate_health

S = JobStatus
PARENT = "joblife-test"
OTHER_PARENT = "joblife-h5repack"
RETRY = 10.0


class Clock:
    """The executor's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def deploy(double: NomadDouble) -> None:
    """Register the rendered processing jobs, as ``joblife nomad deploy`` does."""
    settings = nomad_test_settings(double.address)
    specs = [s for s in render_specs(settings, load_job_types(settings)) if s.kind == "processing"]
    deploy_specs(nomad_client(settings), specs)


@pytest.fixture
def double(nomad_double: NomadDouble) -> NomadDouble:
    nomad_double.cluster.run_tasks = False
    deploy(nomad_double)
    return nomad_double


def executor_on(double: NomadDouble, clock: Clock) -> NomadExecutor:
    settings = nomad_test_settings(double.address)
    return NomadExecutor(
        nomad_client(settings), address=double.address, unavailable_retry_seconds=RETRY, clock=clock
    )


def request(job_id: int, job_type: str = "test", parent: str = PARENT) -> ExecutionRequest:
    flavor = "extra_small" if job_type == "test" else "small"
    return ExecutionRequest(job_id, 1, job_type, flavor, parent)


def gauge(job_type: str = "test", parent: str = PARENT) -> float | None:
    return PROCESS_REGISTRY.get_sample_value(
        "joblife_job_type_unavailable", {"job_type": job_type, "nomad_job": parent}
    )


def break_parent(double: NomadDouble, how: str) -> str:
    """Make the type's parent job unusable; return Nomad's answer to a dispatch."""
    cluster = double.cluster
    if how == "missing":
        cluster.stop(PARENT, purge=True)
        return "parameterized job not found"
    if how == "stopped":
        cluster.stop(PARENT)
        return f'Specified job "{PARENT}" is stopped'
    job = cluster.get(PARENT)
    if how == "meta_rules":  # deployed from another spec: a meta key joblife never sends
        rules = job["ParameterizedJob"]
        job["ParameterizedJob"] = {**rules, "MetaRequired": [*rules["MetaRequired"], "tile"]}
        cluster.register(job)
        return "Dispatch did not provide required meta keys: [tile]"
    job.pop("ParameterizedJob")
    cluster.register(job)  # a plain batch job under the same id
    return f'Specified job "{PARENT}" is not a parameterized job'


def pause_lines(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    messages = [r.getMessage() for r in caplog.records]
    return (
        [m for m in messages if m.startswith("dispatch of job type test paused")],
        [m for m in messages if "takes dispatches again" in m],
    )


# == the executor ==================================================================================
BROKEN = ["missing", "stopped", "not_parameterized", "meta_rules"]


@pytest.mark.parametrize("how", BROKEN)
def test_a_broken_parent_pauses_its_type_until_it_is_deployed(
    double: NomadDouble, how: str, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="joblife")
    clock = Clock()
    executor = executor_on(double, clock)
    answer = break_parent(double, how)
    cluster, requests = double.cluster, double.requests

    with pytest.raises(base.JobTypeUnavailable) as caught:
        executor.dispatch(request(1), "1-1")
    assert caught.value.job_type == "test"
    assert f"HTTP 500: {answer}" in caught.value.reason
    assert str(caught.value).startswith("dispatch of job type 'test' paused: ")
    assert isinstance(caught.value, ExecutorUnavailable)  # the job waits, attempt kept
    sent = cluster.dispatch_calls[PARENT]
    assert executor.job_type_unavailable("test", PARENT) == caught.value.reason
    assert gauge() == 1.0
    assert executor.capacity("extra_small") is None  # Nomad answers: no outage

    # Paused: the next jobs of the type wait without a request; the other types go on.
    with pytest.raises(base.JobTypeUnavailable):
        executor.dispatch(request(2), "2-1")
    assert cluster.dispatch_calls[PARENT] == sent
    other = executor.dispatch(request(3, "h5repack", OTHER_PARENT), "3-1")
    assert other.startswith(f"{OTHER_PARENT}/dispatch-job3-a1-")
    assert executor.job_type_unavailable("h5repack", OTHER_PARENT) is None

    # Still broken at the next check: the parent is read once, the pause goes on (and is
    # not logged again); a deploy is seen at the check after it, not before.
    clock.now += RETRY
    reads = requests["GET /v1/job/:id"]
    reason = executor.job_type_unavailable("test", PARENT)
    assert reason is not None and PARENT in reason
    assert executor.job_type_unavailable("test", PARENT) == reason
    assert requests["GET /v1/job/:id"] == reads + 1
    deploy(double)
    assert executor.job_type_unavailable("test", PARENT) == reason
    assert cluster.dispatch_calls[PARENT] == sent

    clock.now += RETRY
    assert executor.job_type_unavailable("test", PARENT) is None
    assert gauge() == 0.0
    child = executor.dispatch(request(2), "2-1")
    assert child.startswith(f"{PARENT}/dispatch-job2-a1-")
    paused, resumed = pause_lines(caplog)
    assert len(paused) == 1 and f"HTTP 500: {answer}" in paused[0]
    assert resumed == [
        f"Nomad job {PARENT} takes dispatches again: dispatch of job type test resumes"
    ]


def test_a_missing_parent_is_named_by_its_check(double: NomadDouble):
    clock = Clock()
    executor = executor_on(double, clock)
    double.cluster.stop(PARENT, purge=True)
    with pytest.raises(base.JobTypeUnavailable):
        executor.dispatch(request(1), "1-1")
    clock.now += RETRY
    assert executor.job_type_unavailable("test", PARENT) == (
        f"Nomad has no job '{PARENT}' (HTTP 404: job not found: not deployed, or purged)"
    )


def test_unclassified_500s_spend_at_most_one_attempt_per_retry_delay(
    double: NomadDouble, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="joblife")
    clock = Clock()
    executor = executor_on(double, clock)
    faults, cluster = double.faults, double.cluster
    faults.fail_next = 1000  # a server error that outlasts the client's retries

    # The first dispatch is refused (it may be about that one request): its attempt fails.
    with pytest.raises(ExecutorError, match=r"HTTP 500: fault injected") as caught:
        executor.dispatch(request(1), "1-1")
    assert not isinstance(caught.value, ExecutorUnavailable)
    # The type is paused for the retry delay: the rest of the batch waits, attempt kept.
    for job_id in range(2, 12):
        with pytest.raises(base.JobTypeUnavailable, match="fault injected"):
            executor.dispatch(request(job_id), f"{job_id}-1")
    assert faults.fail_next == 1000 - 2  # one dispatch and its one retry
    assert executor.capacity("extra_small") is None

    # After the delay, the parent is read; while that fails too, the pause goes on.
    clock.now += RETRY
    assert executor.job_type_unavailable("test", PARENT) is not None
    faults.fail_next = 0
    assert executor.job_type_unavailable("test", PARENT) is not None  # within the delay
    clock.now += RETRY
    # The parent reads fine: the next dispatch tells (still reported until then).
    assert executor.job_type_unavailable("test", PARENT) is None
    assert gauge() == 1.0
    assert executor.dispatch(request(2), "2-1").startswith(f"{PARENT}/dispatch-job2-a1-")
    assert gauge() == 0.0
    assert cluster.children(PARENT) != []
    paused, resumed = pause_lines(caplog)
    assert len(paused) == 1 and len(resumed) == 1


def test_a_bad_request_is_a_refusal_only(double: NomadDouble):
    executor = executor_on(double, Clock())
    double.faults.fail_next = 1
    double.faults.fail_status = 400
    double.faults.fail_message = "Request decode failed"
    with pytest.raises(ExecutorError, match="HTTP 400") as caught:
        executor.dispatch(request(1), "1-1")
    assert not isinstance(caught.value, ExecutorUnavailable)
    assert executor.job_type_unavailable("test", PARENT) is None
    assert executor.dispatch(request(2), "2-1").startswith(f"{PARENT}/dispatch-job2-a1-")


# == joblife health ==============================================================================
@pytest.fixture
def health_env(
    double: NomadDouble, joblife_env: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    isolate_health(tmp_path, monkeypatch)
    monkeypatch.setenv("JOBLIFE_NOMAD_ADDR", double.address)
    yield
    get_settings.cache_clear()


@pytest.mark.usefixtures("health_env")
@pytest.mark.parametrize("how", BROKEN)
def test_health_names_the_type_its_parameterized_job_and_why(double: NomadDouble, how: str):
    result = health("--check", "nomad_jobs", "--json")
    assert result.exit_code == 0, result.output
    [check] = json.loads(result.stdout)["checks"]
    assert check["state"] == "ok" and PARENT in check["target"]

    break_parent(double, how)
    why = {
        "missing": f"Nomad has no job '{PARENT}' (HTTP 404: job not found",
        "stopped": f"Nomad job '{PARENT}' is stopped",
        "not_parameterized": f"Nomad job '{PARENT}' is not a parameterized job",
        "meta_rules": f"Nomad job '{PARENT}' does not take joblife's dispatch meta "
        "(attempt, attempt_secret, job_id): it requires ['attempt', 'job_id', 'tile']",
    }[how]
    result = health("--check", "nomad", "--check", "nomad_jobs")
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ok    nomad ")  # Nomad itself answers
    assert lines[1].startswith(f"FAIL  nomad_jobs       {PARENT}: job type test: {why}")
    [error] = result.stderr.strip().splitlines()
    assert error.startswith(f"error: nomad_jobs unhealthy: {PARENT}: job type test: {why}")


# == the life cycle ==============================================================================
def add_h5repack_job(world: NomadWorld) -> int:
    """A ready job of another type (its parameterized job is deployed)."""
    with world.lifecycle.session() as session:
        job = H5RepackJob(
            input_product_id="H0001",
            file_name="H0001.h5",
            input_publication_date=utc_now() - timedelta(hours=2),
        )
        session.add(job)
        session.commit()
        set_job_status(session, job.id, S.READY, message="test: to ready")
        session.commit()
        return job.id


def test_jobs_of_a_type_without_its_parameterized_job_wait_and_run_after_the_deploy(
    make_nomad_world: Callable[..., NomadWorld], caplog: pytest.LogCaptureFixture
):
    world = make_nomad_world()
    lc, cluster = world.lifecycle, world.double.cluster
    cluster.stop(PARENT, purge=True)  # a new cluster, a purge, a deploy not yet run
    caplog.set_level(logging.WARNING, logger="joblife")
    ids = lc.add_jobs({}, {}, {})
    other = add_h5repack_job(world)

    report = lc.dispatch()
    assert (report.dispatched, report.failed, report.waiting) == (1, 0, 3)
    assert report.unavailable is None
    assert "HTTP 500: parameterized job not found" in report.paused["test"]
    # One dispatch was sent for the type (with the client's retries); its jobs wait.
    assert cluster.dispatch_calls[PARENT] == 1 + world.settings.nomad_retries
    for job_id in ids:
        job = lc.job(job_id)
        assert (job.status, job.attempt, job.nomad_job_id) == (S.QUEUED, 1, None)
    # The other type went on.
    reference = lc.job(other).nomad_job_id
    assert reference is not None and reference.startswith(f"{OTHER_PARENT}/dispatch-")
    with lc.session() as session:
        cancel_and_stop(session, world.executor, [other], "test: only its dispatch mattered")
        session.commit()

    # Paused: ready jobs of the type stay ready, the queued ones are not sent again.
    later = lc.add_jobs({}, {}, prefix="L")
    for _ in range(3):
        assert lc.dispatch().paused.keys() == {"test"}
        monitor = lc.monitor_cycle()
        assert monitor.redispatched == 0 and monitor.paused.keys() == {"test"}
    assert cluster.dispatch_calls[PARENT] == 1 + world.settings.nomad_retries
    assert statuses(world, ids + later) == [S.QUEUED] * 3 + [S.READY] * 2
    assert [lc.job(i).attempt for i in later] == [0, 0]

    # Reported by health and the metrics.
    [check] = run_checks(world.settings, lambda: "", only=["nomad_jobs"])
    assert check.ok is False and check.target == PARENT
    assert check.detail.startswith(f"job type test: Nomad has no job '{PARENT}'")
    assert gauge() == 1.0

    world.deploy()
    drive(world, lambda: statuses(world, ids + later) == [S.DONE] * 5)
    for job_id in ids + later:
        job = lc.job(job_id)
        assert job.attempt == 1  # the missing job cost no attempt
        history = [c.status for c in lc.history(job_id)]
        assert S.EXTERNAL_ERROR not in history and S.INTERNAL_ERROR not in history
        child = cluster.get(job.nomad_job_id)
        assert child["DispatchIdempotencyToken"] == lc.token(job_id, 1)
        assert cluster.task_runs[job.nomad_job_id] == 1
    assert gauge() == 0.0
    paused, resumed = pause_lines(caplog)
    assert len(paused) == 1 and len(resumed) == 1


def test_a_types_waiting_jobs_are_dispatched_again_before_new_ones_of_it(
    make_nomad_world: Callable[..., NomadWorld],
):
    """A type tried again after a pause and refused once more must not have a new batch
    claimed at each try: its jobs queued without an execution go first."""
    world = make_nomad_world(slots=0)  # nothing placed: no worker runs
    lc = world.lifecycle
    [waiting] = lc.add_jobs({})
    lc.walk([waiting], [S.QUEUED])  # claimed, its dispatch not sent (a pause, a crash)
    with lc.session() as session:
        session.execute(text("UPDATE jobs SET attempt = 1 WHERE id = :id"), {"id": waiting})
        session.commit()
    ready = lc.add_jobs({}, {}, prefix="R")

    assert lc.dispatch().dispatched == 0  # held back (redispatch grace 0 in these tests)
    assert statuses(world, ready) == [S.READY, S.READY]
    assert lc.monitor_cycle().redispatched == 1
    assert lc.job(waiting).nomad_job_id is not None
    assert lc.dispatch().dispatched == 2
