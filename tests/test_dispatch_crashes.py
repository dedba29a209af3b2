"""An orchestrator that dies inside a dispatch costs no attempt and leaves nothing unseen
(issue 14, items 1, 5 and 8):

- killed inside the local executor's dispatch (after the claim before the zygote was
  asked, after the request before its answer, after the answer before the reference was
  recorded), the re-dispatch with the same token starts the attempt exactly once;
- a started worker whose reference was never recorded is found by its token, and its exit
  status read by the next monitor cycle, not at the heartbeat timeout;
- references are recorded as each dispatch answers: a batch interrupted after k jobs
  leaves those k with their references.

The crashes are real: the dispatch runs in a forked copy of this process that ends with
``os._exit`` at the chosen point (no cleanup, as under kill -9).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from joblife.config import Settings, get_settings
from joblife.executors.base import ExecutionRequest
from joblife.executors.local import LocalExecutor
from joblife.lifecycle import dispatch as dispatch_module
from joblife.model import JobStatus
from joblife.model.status import IN_FLIGHT_STATUSES
from sqlalchemy import Engine

from tests.support.lifecycle import (
    FAST_SERVICES,
    Lifecycle,
    RecordingExecutor,
    kill_leftovers,
    wait_for,
)

S = JobStatus
ENDED = {S.DONE, S.EXTERNAL_ERROR, S.INTERNAL_ERROR}


@pytest.fixture
def make_lifecycle(
    engine: Engine, joblife_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Lifecycle]]:
    """This test's :class:`Lifecycle` (as in test_lifecycle_services), settings overrides
    given; forked workers read the process settings, which point at the same database."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("JOBLIFE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("JOBLIFE_HEARTBEAT_INTERVAL_SECONDS", "0.2")
    get_settings.cache_clear()
    made: list[Lifecycle] = []

    def make(**overrides: Any) -> Lifecycle:
        values: dict[str, Any] = {
            "database_url": joblife_env,
            "data_dir": data_dir,
            **FAST_SERVICES,
            "heartbeat_interval_seconds": 0.2,
            **overrides,
        }
        executor = LocalExecutor(tmp_path / "exec", default_slots=4, stop_grace_seconds=5)
        made.append(Lifecycle(engine, Settings(**values), executor))
        return made[-1]

    yield make
    for lc in made:
        lc.executor.close()
    kill_leftovers(
        [lc.executor.state_dir for lc in made], [r for lc in made for r in lc.records_seen]
    )
    get_settings.cache_clear()


def started_rows(lc: Lifecycle, job_id: int) -> list[Any]:
    """The history rows of the attempts' starts (queued → started)."""
    return [
        c for c in lc.history(job_id) if c.previous_status == S.QUEUED and c.status == S.STARTED
    ]


def dispatch_and_die(lc: Lifecycle, sabotage: Callable[[LocalExecutor], None]) -> None:
    """Run one dispatch cycle in a forked copy of this process, with its own executor (and
    zygote) on the same state directory, ``sabotage`` making it ``os._exit`` somewhere.
    Forked before this process has a zygote of its own, so none of its pipes leak."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            lc.engine.dispose(close=False)  # the parent's connections stay the parent's
            executor = LocalExecutor(lc.executor.state_dir, default_slots=4)
            sabotage(executor)
            lc.dispatch(executor)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 97, "the dispatch did not reach the crash"


def _exit_before_the_request(executor: LocalExecutor) -> None:
    def start(request: ExecutionRequest, paths: Any) -> tuple[int, int]:
        assert paths.claim.exists()
        os._exit(97)

    executor._start = start  # type: ignore[method-assign]


def _exit_before_the_answer(executor: LocalExecutor) -> None:
    zygote = executor._zygote

    def start(request: ExecutionRequest, paths: Any, launch: Any) -> tuple[int, int]:
        zygote._fork().send((request, paths, launch))  # the zygote takes it after we die
        os._exit(97)

    zygote.start = start  # type: ignore[method-assign]


def _exit_before_the_reference(executor: LocalExecutor) -> None:
    original = executor._start

    def start(request: ExecutionRequest, paths: Any) -> tuple[int, int]:
        original(request, paths)
        os._exit(97)

    executor._start = start  # type: ignore[method-assign]


@pytest.mark.parametrize(
    "sabotage",
    [_exit_before_the_request, _exit_before_the_answer, _exit_before_the_reference],
    ids=["claim-then-crash", "request-then-crash", "answer-then-crash"],
)
def test_crash_inside_local_dispatch_costs_no_attempt(
    make_lifecycle: Callable[..., Lifecycle], sabotage: Callable[[LocalExecutor], None]
):
    lc = make_lifecycle()
    [job_id] = lc.add_jobs({"behaviour": "sleep", "sleep_seconds": 0.3, "max_attempts": 1})
    dispatch_and_die(lc, sabotage)
    job = lc.job(job_id)
    assert (job.attempt, job.nomad_job_id) == (1, None)
    # Asked to start (request-, answer-then-crash), the worker may be on its way already.
    on_its_way = IN_FLIGHT_STATUSES | {S.PROCESSED}
    if sabotage is _exit_before_the_request:
        on_its_way = frozenset({S.QUEUED})
    assert job.status in on_its_way, lc.describe(job_id)
    claim = lc.state_file(job_id, 1, "claim")
    assert claim.exists()
    # Long ago: whatever a claim alone stands for, its time is up.
    os.utime(claim, (claim.stat().st_mtime - 3600,) * 2)

    ended = lc.wait_status(job_id, ENDED, monitor=True)
    assert ended is S.DONE, lc.describe(job_id)
    job = lc.job(job_id)
    assert (job.attempt, job.exit_code) == (1, 0)
    assert job.nomad_job_id == f"local:{lc.token(job_id, 1)}"
    assert len(started_rows(lc, job_id)) == 1, lc.describe(job_id)
    assert lc.exit_code(job_id, 1) == 0
    log = lc.state_file(job_id, 1, "log").read_text()
    assert "duplicate" not in log, log  # no second worker even tried


def test_started_worker_without_reference_is_failed_from_its_exit_status(
    make_lifecycle: Callable[..., Lifecycle], monkeypatch: pytest.MonkeyPatch
):
    """Started, then the orchestrator died before recording the reference, then the
    worker was killed: the next monitor cycle fails the job with the exit code (the
    heartbeat timeout is far away)."""
    lc = make_lifecycle(heartbeat_timeout_seconds=3600)
    [job_id] = lc.add_jobs({"behaviour": "crash", "max_attempts": 1})

    def crash(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt("the orchestrator dies before recording the reference")

    with monkeypatch.context() as patch:
        patch.setattr(dispatch_module, "record_reference", crash)
        with pytest.raises(KeyboardInterrupt):
            lc.dispatch()
    assert lc.exit_code(job_id, 1) == 137  # SIGKILL
    job = lc.job(job_id)
    assert job.status is S.PROCESSING and job.nomad_job_id is None

    report = lc.monitor_cycle()
    job = lc.job(job_id)
    assert job.status is S.INTERNAL_ERROR, lc.describe(job_id)  # failed, out of attempts
    assert (report.adopted, report.ended, report.stale) == (1, 1, 0), report
    assert job.nomad_job_id == f"local:{lc.token(job_id, 1)}"
    change = [c for c in lc.history(job_id) if c.status == S.EXTERNAL_ERROR][-1]
    assert change.details["exit_code"] == 137, change.details
    assert "SIGKILL" in (change.message or "")


class _DiesAfter(RecordingExecutor):
    """Starts the first ``k`` dispatches, then the process "dies" (an exception that no
    handler of the dispatch takes)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def dispatch(self, request: ExecutionRequest, token: str) -> str:
        if len(self.requests) >= self.k:
            raise SystemExit("killed in the middle of the batch")
        return super().dispatch(request, token)


def test_references_are_recorded_as_each_dispatch_answers(
    make_lifecycle: Callable[..., Lifecycle],
):
    lc = make_lifecycle()
    ids = lc.add_jobs(*({} for _ in range(5)))
    executor = _DiesAfter(3)
    with pytest.raises(SystemExit):
        lc.dispatch(executor)
    started = set(executor.job_ids)
    assert len(started) == 3
    for request, token in executor.requests:
        job = lc.job(request.job_id)
        assert (job.status, job.nomad_job_id) == (S.QUEUED, f"fake:{token}")
        assert job.heartbeat_at is not None  # the queued deadline runs from the record
    for job_id in set(ids) - started:
        assert lc.job(job_id).nomad_job_id is None
    # The rest are dispatched again by the monitor, the three are not.
    executor.k = 10
    assert lc.monitor_cycle(executor=executor).redispatched == 2
    assert all(lc.job(i).nomad_job_id for i in ids)


def test_two_starts_of_one_token_run_one_worker(make_lifecycle: Callable[..., Lifecycle]):
    """Of two start requests of a token (a re-dispatch while the request of a dispatch that
    died was still in the zygote's pipe), the first waiter takes the record and runs the
    worker; the second starts nothing and writes no exit status."""
    lc = make_lifecycle()
    [job_id] = lc.add_jobs({})  # ready, not queued: the worker changes nothing
    unique_id = str(lc.job(job_id).unique_id)
    request = ExecutionRequest(job_id, 1, "test", "extra_small", "joblife-test", unique_id)
    paths = lc.executor._paths(lc.token(job_id, 1))
    waiter, worker = lc.executor._start(request, paths)
    assert worker > 0
    assert lc.executor._start(request, paths)[1] == 0  # found the record: nothing started
    assert lc.exit_code(job_id, 1) == 0
    record = lc.record(job_id, 1)
    assert (record["waiter_pid"], record["worker_pid"]) == (waiter, worker)
    wait_for(lambda: lc.executor.change_marker() >= 1, timeout=5)  # counted after the file
    assert lc.executor.change_marker() == 1  # one exit, not two
    assert lc.executor.dispatch(request, lc.token(job_id, 1)) == f"local:{lc.token(job_id, 1)}"


def test_an_interrupt_while_starting_a_worker_is_not_a_dispatch_failure(
    make_lifecycle: Callable[..., Lifecycle],
):
    """Ctrl-C (or a stop) landing while a worker is started interrupts the dispatch: it
    was read as "could not start the worker" with an empty reason, and the interrupted
    command went on (a demo interrupted there ran to its end and exited 0). The claim is
    removed as for a failed start, so the next dispatch starts the attempt once."""
    lc = make_lifecycle()
    [job_id] = lc.add_jobs({"behaviour": "succeed", "max_attempts": 1})

    def interrupted(request: ExecutionRequest, paths: Any) -> tuple[int, int]:
        raise KeyboardInterrupt

    lc.executor._start = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        lc.dispatch(lc.executor)
    assert not lc.state_file(job_id, 1, "claim").exists()
    del lc.executor._start  # the class's own again
    ended = lc.wait_status(job_id, ENDED, monitor=True)
    assert ended is S.DONE, lc.describe(job_id)
    assert len(started_rows(lc, job_id)) == 1, lc.describe(job_id)
