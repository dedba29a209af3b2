"""The life cycle through the Nomad executor (issue 4, "What must be shown"): the services
run in-process on real PostgreSQL, python-nomad talks to the API double on loopback, and
the double's client runs every dispatched child's task (``joblife worker run
${NOMAD_META_job_id} --attempt ${NOMAD_META_attempt}`` from the rendered spec) as a real
process. Every wait polls with a deadline."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from joblife.db.status import set_job_status  # noqa: F401 - the door the services use
from joblife.lifecycle import dispatch as dispatch_module
from joblife.lifecycle.cancellation import cancel_and_stop
from joblife.lifecycle.common import utc_now
from joblife.model import JobStatus

from tests.support.lifecycle import wait_for
from tests.support.nomad import NomadWorld

S = JobStatus
PARENT = "joblife-test"


def drive(world: NomadWorld, done: Callable[[], bool], timeout: float = 90.0) -> None:
    """Run creation, configuration, dispatch and monitor cycles until ``done()``."""
    lc = world.lifecycle

    def cycle() -> bool:
        lc.create()
        lc.configure()
        lc.dispatch()
        lc.monitor_cycle()
        return done()

    wait_for(cycle, timeout=timeout, interval=0.2, message=lambda: describe(world))


def describe(world: NomadWorld) -> str:
    with world.lifecycle.session() as session:
        rows = session.execute(
            dispatch_module.text("SELECT id, status, attempt, nomad_job_id FROM jobs ORDER BY id")
        ).all()
    return f"jobs: {[tuple(r) for r in rows]}\nrequests: {dict(world.double.requests)}"


def statuses(world: NomadWorld, ids: list[int]) -> list[JobStatus]:
    return [world.lifecycle.status(i) for i in ids]


def child_of(world: NomadWorld, job_id: int) -> str:
    reference = world.lifecycle.job(job_id).nomad_job_id
    assert reference is not None
    return reference


@pytest.mark.slow
def test_fifty_jobs_from_discovery_to_done(make_nomad_world: Callable[..., NomadWorld]):
    world = make_nomad_world(slots=8)
    lc, cluster = world.lifecycle, world.double.cluster
    first = utc_now() - timedelta(hours=1)
    for i in range(50):
        lc.product(f"N{i:04d}", first + timedelta(seconds=i))

    def all_done() -> bool:
        with lc.session() as session:
            counts = dict(
                session.execute(
                    dispatch_module.text("SELECT status, count(*) FROM jobs GROUP BY status")
                ).all()
            )
        return counts == {int(S.DONE): 50}

    drive(world, all_done, timeout=150)
    with lc.session() as session:
        jobs = session.execute(
            dispatch_module.text("SELECT id, attempt, nomad_job_id FROM jobs")
        ).all()
    assert len(jobs) == 50
    for job_id, attempt, reference in jobs:
        assert attempt == 1
        assert re.fullmatch(rf"{PARENT}/dispatch-job{job_id}-a1-\d+-[0-9a-f]{{8}}", reference)
        child = cluster.get(reference)
        assert child["ParentID"] == PARENT
        assert child["Meta"]["job_id"] == str(job_id) and child["Meta"]["attempt"] == "1"
        assert child["DispatchIdempotencyToken"] == lc.token(job_id, 1)
        assert cluster.task_runs[reference] == 1

    def every_allocation_complete() -> bool:  # a worker exits just after its last commit
        return all(
            [a["ClientStatus"] for a in cluster.allocations_of(reference)] == ["complete"]
            for _, _, reference in jobs
        )

    wait_for(every_allocation_complete, timeout=20, message="every task to exit 0")
    assert cluster.dispatch_calls[PARENT] == 50
    assert len(cluster.children(PARENT)) == 50


def test_crash_after_dispatch_same_token_same_child_runs_once(
    make_nomad_world: Callable[..., NomadWorld], monkeypatch: pytest.MonkeyPatch
):
    world = make_nomad_world()
    lc, cluster = world.lifecycle, world.double.cluster
    [job_id] = lc.add_jobs({"behaviour": "sleep", "sleep_seconds": 0.5})

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("crash after the dispatch, before the reference is recorded")

    with monkeypatch.context() as patch:
        patch.setattr(dispatch_module, "record_references", crash)
        with pytest.raises(RuntimeError, match="crash"):
            lc.dispatch()
    job = lc.job(job_id)
    assert (job.status, job.attempt, job.nomad_job_id) == (S.QUEUED, 1, None)
    [child] = cluster.children(PARENT)

    report = lc.monitor_cycle()  # redispatch: same token, Nomad answers with the same child
    assert report.redispatched == 1
    assert lc.job(job_id).nomad_job_id == child
    drive(world, lambda: lc.status(job_id) is S.DONE)
    assert cluster.dispatch_calls[PARENT] == 2
    assert cluster.children(PARENT) == [child]
    assert cluster.task_runs[child] == 1
    assert lc.job(job_id).attempt == 1


def test_crash_after_queued_commit_is_dispatched_once(
    make_nomad_world: Callable[..., NomadWorld], monkeypatch: pytest.MonkeyPatch
):
    world = make_nomad_world()
    lc, cluster = world.lifecycle, world.double.cluster
    ids = lc.add_jobs({}, {})

    def crash(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("crash between the queued commit and the dispatch")

    with monkeypatch.context() as patch:
        patch.setattr(dispatch_module, "start_execution", crash)
        with pytest.raises(RuntimeError, match="crash"):
            lc.dispatch()
    assert cluster.children() == []
    drive(world, lambda: statuses(world, ids) == [S.DONE, S.DONE])
    for job_id in ids:
        assert cluster.task_runs[child_of(world, job_id)] == 1
        assert lc.job(job_id).attempt == 1
    assert len(cluster.children(PARENT)) == 2


def test_nomad_unreachable_jobs_wait_then_resume(
    make_nomad_world: Callable[..., NomadWorld],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
):
    world = make_nomad_world()
    lc, double = world.lifecycle, world.double
    ids = lc.add_jobs(*({} for _ in range(4)))
    calls: list[int] = []
    dispatch = world.executor.dispatch

    def counted(request: Any, token: str) -> str:
        calls.append(request.job_id)
        return dispatch(request, token)

    monkeypatch.setattr(world.executor, "dispatch", counted)
    double.stop_listening()

    caplog.set_level(logging.WARNING, logger="joblife")
    report = lc.dispatch()
    down = f"Nomad at {double.address} does not answer (connection refused)"
    assert (report.dispatched, report.failed, report.waiting) == (0, 0, 4)
    assert report.unavailable == down
    assert len(calls) == 1  # the first failure ends the cycle's dispatching
    assert f"nomad executor unavailable: {down}; 4 queued jobs wait" in caplog.text
    for job_id in ids:  # waiting, attempt kept, nothing failed
        job = lc.job(job_id)
        assert (job.status, job.attempt, job.nomad_job_id) == (S.QUEUED, 1, None)
        assert S.EXTERNAL_ERROR not in [c.status for c in lc.history(job_id)]

    report = lc.monitor_cycle()  # its re-dispatch waits the same way
    assert report.redispatched == 0 and report.unavailable == down
    assert len(calls) == 2
    assert [lc.job(i).attempt for i in ids] == [1] * 4
    assert statuses(world, ids) == [S.QUEUED] * 4
    assert world.executor.capacity("extra_small") == 0  # nothing new is claimed
    assert lc.dispatch().waiting == 0

    double.start()  # Nomad is back: the next probe finds it, the monitor re-dispatches
    drive(world, lambda: statuses(world, ids) == [S.DONE] * 4)
    for job_id in ids:
        job = lc.job(job_id)
        assert job.attempt == 1  # the outage cost no attempt
        assert double.cluster.task_runs[job.nomad_job_id] == 1
        child = double.cluster.get(job.nomad_job_id)
        assert child["DispatchIdempotencyToken"] == lc.token(job_id, 1)
        assert S.EXTERNAL_ERROR not in [c.status for c in lc.history(job_id)]
    assert len(double.cluster.children(PARENT)) == 4


def test_nomad_refusal_fails_the_attempt_and_dispatch_goes_on(
    make_nomad_world: Callable[..., NomadWorld],
):
    world = make_nomad_world()
    lc, faults = world.lifecycle, world.double.faults
    ids = lc.add_jobs({}, {})
    # Each dispatch refused as a bad request (a stopped or missing parameterized job
    # pauses its type instead: tests/test_nomad_type_unavailable.py).
    faults.fail_next, faults.fail_status, faults.fail_message = 2, 400, "Request decode failed"

    report = lc.dispatch()
    assert (report.dispatched, report.failed, report.waiting) == (0, 2, 0)
    assert report.unavailable is None
    for job_id in ids:
        change = lc.last_change(job_id)
        assert change.status == S.EXTERNAL_ERROR
        assert change.message == (
            f"dispatch failed: Nomad refused the dispatch of job {job_id} attempt 1 to "
            f"'{PARENT}': HTTP 400: Request decode failed"
        )
    assert world.executor.capacity("extra_small") is None  # Nomad answers: not an outage

    drive(world, lambda: statuses(world, ids) == [S.DONE, S.DONE])  # the retries run
    assert [lc.job(i).attempt for i in ids] == [2, 2]


def test_one_monitor_pass_lists_the_children_once(make_nomad_world: Callable[..., NomadWorld]):
    world = make_nomad_world(slots=0, batch_size=5)  # nothing placed: outcomes set below
    lc, double = world.lifecycle, world.double
    ids = lc.add_jobs(*({} for _ in range(12)))
    while lc.dispatch().dispatched:
        pass
    children = [child_of(world, i) for i in ids]
    for index, code in ((1, 0), (6, 2), (11, 137)):  # one ended child in each batch
        double.cluster.finish(children[index], code)
    double.requests.clear()

    reports = [lc.monitor_cycle() for _ in range(3)]  # batches of 5, 5, 2: one pass
    assert [(r.checked, r.ended) for r in reports] == [(5, 1), (5, 1), (2, 1)]
    assert double.requests == {"GET /v1/jobs": 1, "GET /v1/job/:id/allocations": 3}
    for index in (1, 6, 11):
        assert S.EXTERNAL_ERROR in [c.status for c in lc.history(ids[index])]
    assert lc.monitor_cycle().checked == 5  # the next pass lists them again
    assert double.requests["GET /v1/jobs"] == 2


def test_monitor_asks_again_what_nomad_could_not_answer(
    make_nomad_world: Callable[..., NomadWorld],
):
    world = make_nomad_world(slots=0, batch_size=2)
    lc, double = world.lifecycle, world.double
    ids = lc.add_jobs({}, {}, {}, {})
    while lc.dispatch().dispatched:
        pass
    double.cluster.finish(child_of(world, ids[3]), 2)
    double.stop_listening()
    first = lc.monitor_cycle()  # the pass begins while Nomad does not answer
    assert (first.checked, first.unknown, first.ended) == (2, 2, 0)

    double.start()
    time.sleep(0.35)  # nomad_unavailable_retry_seconds of the test settings
    double.requests.clear()
    second = lc.monitor_cycle()  # the rest of the pass, asked again at once
    assert (second.checked, second.unknown, second.ended) == (2, 0, 1)
    assert double.requests["GET /v1/jobs"] == 1
    [failure] = [c for c in lc.history(ids[3]) if c.status == S.EXTERNAL_ERROR]
    assert failure.message.startswith("execution ended while the job was queued: worker exited 2")


def test_queued_deadline_stops_a_child_that_never_starts(
    make_nomad_world: Callable[..., NomadWorld],
):
    world = make_nomad_world(slots=0)  # no node can take it: never placed
    lc, cluster = world.lifecycle, world.double.cluster
    [job_id] = lc.add_jobs({})
    assert lc.dispatch().dispatched == 1
    child = child_of(world, job_id)
    # Counted from when Nomad accepted the child (as if it had been dispatched 2 h after
    # the job was queued, at the end of an outage), not from the queued status.
    with lc.session() as session:
        session.execute(
            dispatch_module.text(
                "UPDATE jobs SET heartbeat_at = heartbeat_at + interval '2 hours' WHERE id = :id"
            ),
            {"id": job_id},
        )
        session.commit()
    accepted = lc.job(job_id).heartbeat_at
    deadline = timedelta(seconds=lc.settings.queued_deadline_seconds)
    assert lc.monitor_cycle(accepted + deadline - timedelta(minutes=1)).never_started == 0
    assert lc.status(job_id) is S.QUEUED and cluster.stop_requests == []

    report = lc.monitor_cycle(accepted + deadline + timedelta(minutes=1))
    assert report.never_started == 1
    assert cluster.stop_requests == [child] and cluster.get(child)["Stop"] is True
    [failure] = [c for c in lc.history(job_id) if c.status == S.EXTERNAL_ERROR]
    assert failure.message == (
        f"execution never started: accepted by the executor at {accepted.isoformat()}, "
        "past the queued deadline of 3600 s; execution stopped"
    )
    assert failure.details == {
        "attempt": 1,
        "reference": child,
        "queued_deadline_seconds": lc.settings.queued_deadline_seconds,
    }
    assert lc.status(job_id) is S.READY  # retried (no backoff in these tests)


def test_lost_allocation_is_retried(make_nomad_world: Callable[..., NomadWorld]):
    world = make_nomad_world()
    lc, cluster = world.lifecycle, world.double.cluster
    # Attempt 1 hangs until its allocation is lost; attempt 2 succeeds at once.
    [job_id] = lc.add_jobs({"behaviour": "hang", "behaviour_attempts": 1})
    lc.dispatch()
    lc.wait_status(job_id, S.PROCESSING, timeout=30)
    first = child_of(world, job_id)
    cluster.lose(first)

    drive(world, lambda: lc.status(job_id) is S.DONE, timeout=60)
    failure = [c for c in lc.history(job_id) if c.status == S.EXTERNAL_ERROR]
    assert len(failure) == 1
    assert "lost: alloc is lost since its node is down" in failure[0].message
    assert failure[0].details["state"] == "lost"
    second = child_of(world, job_id)
    assert second != first and lc.job(job_id).attempt == 2
    assert cluster.task_runs[first] == cluster.task_runs[second] == 1


def test_garbage_collected_child_is_never_a_success(make_nomad_world: Callable[..., NomadWorld]):
    world = make_nomad_world()
    lc, cluster = world.lifecycle, world.double.cluster
    cluster.faults.gc_after_end = True
    crashing, succeeding = lc.add_jobs({"behaviour": "crash", "behaviour_attempts": 1}, {})
    drive(world, lambda: statuses(world, [crashing, succeeding]) == [S.DONE, S.DONE])
    failure = [c for c in lc.history(crashing) if c.status == S.EXTERNAL_ERROR]
    assert len(failure) == 1
    # Collected as it ended: the executor never saw it end, and says so (item 9 of issue 14).
    reference = failure[0].details["reference"]
    assert (
        f"Nomad no longer knows job {reference}, never seen ended by this executor: an "
        "unknown child (the cluster lost its state, or the child ended and was "
        "garbage-collected between two checks)"
    ) in failure[0].message
    assert lc.job(crashing).attempt == 2
    # The worker that succeeded recorded its outcome itself: the GC changed nothing.
    assert lc.job(succeeding).attempt == 1
    # Every child is collected once its process has exited (just after its last commit).
    wait_for(lambda: cluster.children() == [], timeout=10, message="every child collected")


def test_cancel_sends_delete_for_the_child(make_nomad_world: Callable[..., NomadWorld]):
    world = make_nomad_world()
    lc, cluster = world.lifecycle, world.double.cluster
    [job_id] = lc.add_jobs({"behaviour": "sleep", "sleep_seconds": 60})
    lc.dispatch()
    lc.wait_status(job_id, S.PROCESSING, timeout=30)
    child = child_of(world, job_id)
    with lc.session() as session:
        cancel_and_stop(session, world.executor, [job_id], "operator: not needed")
        session.commit()
    assert cluster.stop_requests == [child]
    assert world.double.requests["DELETE /v1/job/:id"] == 1
    assert lc.status(job_id) is S.CANCELLED

    def stopped() -> bool:
        [allocation] = cluster.allocations_of(child)
        return allocation["ClientStatus"] == "complete" and allocation["DesiredStatus"] == "stop"

    wait_for(stopped, timeout=40, message="the child's task to be killed")
    assert cluster.get(child)["Stop"] is True
