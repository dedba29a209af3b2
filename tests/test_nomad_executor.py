"""The Nomad executor and the API double it is tested against (issue 4): Nomad's documented
dispatch validation and idempotency as the double enforces them through python-nomad,
the executor's dispatch, status mapping, stop, retries, timeouts and outage handling."""

from __future__ import annotations

import base64
import re

import pytest
from joblife.errors import ExecutorError
from joblife.executors import build_executor
from joblife.executors.base import ExecutionRequest, ExecutionState, ExecutorUnavailable
from joblife.executors.nomad import NomadExecutor, execution_from_allocations
from joblife.model import load_job_types
from joblife.nomad.client import nomad_client
from joblife.nomad.deploy import deploy_specs
from joblife.nomad.specs import render_specs
from nomad.api.exceptions import BaseNomadException, URLNotFoundNomadException

from tests.nomad_double import NomadDouble
from tests.support.nomad import nomad_test_settings

PARENT = "joblife-test"


@pytest.fixture
def double(nomad_double: NomadDouble) -> NomadDouble:
    """The double with the rendered processing specs registered, tasks not run."""
    nomad_double.cluster.run_tasks = False
    settings = nomad_test_settings(nomad_double.address)
    specs = [s for s in render_specs(settings, load_job_types(settings)) if s.kind == "processing"]
    deploy_specs(nomad_client(settings), specs)
    return nomad_double


def executor_on(double: NomadDouble, **overrides) -> NomadExecutor:
    executor = build_executor(nomad_test_settings(double.address, **overrides))
    assert isinstance(executor, NomadExecutor)
    return executor


def request(job_id: int = 7, attempt: int = 1) -> ExecutionRequest:
    return ExecutionRequest(job_id, attempt, "test", "extra_small", PARENT)


# == the double: Nomad's dispatch rules through python-nomad ====================================
def test_dispatch_validation_as_nomad_documents(double: NomadDouble):
    client = nomad_client(nomad_test_settings(double.address, nomad_retries=0))

    def refused(**kwargs) -> str:
        with pytest.raises(BaseNomadException) as caught:
            client.job.dispatch_job(PARENT, **kwargs)
        return caught.value.nomad_resp.text

    assert refused(meta={"job_id": "1"}) == "Dispatch did not provide required meta keys: [attempt]"
    assert refused(meta={"job_id": "1", "attempt": "1", "x": "y"}) == (
        "Dispatch request included unpermitted metadata keys: [x]"
    )
    big = base64.b64encode(b"x" * (16 * 1024 + 1)).decode()
    meta = {"job_id": "1", "attempt": "1"}
    assert refused(meta=meta, payload=big) == "Payload provided but forbidden by parameterized job"
    job = client.job.get_job(PARENT)
    job["ID"] = job["Name"] = "with-payload"
    job["ParameterizedJob"]["Payload"] = "optional"
    client.jobs.register_job({"Job": job})
    with pytest.raises(BaseNomadException) as caught:
        client.job.dispatch_job("with-payload", meta=meta, payload=big)
    assert caught.value.nomad_resp.text == "Payload exceeds maximum size; 16385 > 16384"
    assert client.job.dispatch_job(PARENT, meta=meta)["DispatchedJobID"].startswith(PARENT)
    with pytest.raises(BaseNomadException) as caught:
        client.job.dispatch_job("no-such-job", meta={})
    assert caught.value.nomad_resp.text == "parameterized job not found"
    client.job.deregister_job(PARENT)
    assert refused(meta={"job_id": "1", "attempt": "1"}) == f'Specified job "{PARENT}" is stopped'


def test_token_only_from_the_query_string(double: NomadDouble):
    client = nomad_client(nomad_test_settings(double.address))
    meta = {"job_id": "3", "attempt": "1"}
    # python-nomad's own argument puts the token in the body: Nomad ignores it there.
    first = client.job.dispatch_job(PARENT, meta=meta, idempotency_token="3-1")
    second = client.job.dispatch_job(PARENT, meta=meta, idempotency_token="3-1")
    assert first["DispatchedJobID"] != second["DispatchedJobID"]
    assert re.fullmatch(rf"{PARENT}/dispatch-\d+-[0-9a-f]{{8}}", first["DispatchedJobID"])
    # The executor sends it as ?idempotency_token=: one child, no new evaluation.
    executor = executor_on(double)
    child = executor.dispatch(request(3, 1), "3-1")
    assert executor.dispatch(request(3, 1), "3-1") == child
    assert re.fullmatch(rf"{PARENT}/dispatch-job3-a1-\d+-[0-9a-f]{{8}}", child)
    assert len(double.cluster.children(PARENT)) == 3
    assert double.cluster.get(child)["Meta"] == {
        "joblife_job_type": "test",
        "joblife_flavor": "extra_small",
        "job_id": "3",
        "attempt": "1",
    }
    # Once garbage-collected, the token is forgotten (Nomad's documented limit).
    double.cluster.gc(child)
    assert executor.dispatch(request(3, 1), "3-1") != child


def test_unknown_job_reads(double: NomadDouble):
    client = nomad_client(nomad_test_settings(double.address))
    with pytest.raises(URLNotFoundNomadException):
        client.job.get_job(f"{PARENT}/dispatch-gone")
    assert client.job.get_allocations(f"{PARENT}/dispatch-gone") == []  # 200, empty


# == the executor ==================================================================================
def test_status_lists_children_and_reads_allocations_only_of_ended_ones(double: NomadDouble):
    executor = executor_on(double)
    cluster = double.cluster
    children = [executor.dispatch(request(i), f"{i}-1") for i in range(1, 21)]
    cluster.finish(children[0], 0)
    cluster.finish(children[1], 2)
    cluster.finish(children[2], 137)
    cluster.gc(children[3])
    double.requests.clear()
    statuses = executor.status(children)
    assert statuses[children[0]].state is ExecutionState.EXITED
    assert (statuses[children[0]].exit_code, statuses[children[1]].exit_code) == (0, 2)
    assert statuses[children[2]].exit_code == 137
    assert "SIGKILL" in statuses[children[2]].reason
    assert statuses[children[3]].state is ExecutionState.LOST
    assert "Nomad no longer knows job" in statuses[children[3]].reason
    assert {statuses[c].state for c in children[4:]} == {ExecutionState.PENDING}
    # One list for 20 children; allocations only for the 3 that ended; one read of the
    # missing one (404).
    assert double.requests == {
        "GET /v1/jobs": 1,
        "GET /v1/job/:id/allocations": 3,
        "GET /v1/job/:id": 1,
    }


def test_a_child_nomad_no_longer_knows_says_whether_it_was_seen_ended(double: NomadDouble):
    """Issue 14, item 9: a 404 for a child seen ended is a garbage collection; for one never
    seen ended, an unknown child (a cluster that lost its state)."""
    executor = executor_on(double)
    cluster = double.cluster
    ended, pending = (executor.dispatch(request(i), f"{i}-1") for i in (1, 2))
    cluster.finish(ended, 1)
    first = executor.status([ended, pending])
    assert (first[ended].state, first[ended].exit_code) == (ExecutionState.EXITED, 1)
    assert first[pending].state is ExecutionState.PENDING
    cluster.gc(ended)
    cluster.gc(pending)  # the cluster forgot it: never seen ended
    statuses = executor.status([ended, pending])
    assert {s.state for s in statuses.values()} == {ExecutionState.LOST}
    assert statuses[ended].reason == (
        f"Nomad no longer knows job {ended}: it was seen ended, then garbage-collected "
        "before its outcome was read (no exit status: not a success)"
    )
    unknown = (
        "never seen ended by this executor: an unknown child (the cluster lost its state, "
        "or the child ended and was garbage-collected between two checks); no exit status: "
        "not a success"
    )
    assert statuses[pending].reason == f"Nomad no longer knows job {pending}, {unknown}"
    # An executor that never saw it (the orchestrator restarted) cannot tell a GC either.
    restarted = executor_on(double).status([ended])
    assert restarted[ended].reason == f"Nomad no longer knows job {ended}, {unknown}"


def test_a_child_of_another_job_returned_for_the_token_is_refused(double: NomadDouble):
    """Issue 14, item 6: a child returned for the token is read back and adopted only if
    its meta names this job and attempt; a fresh dispatch costs no read."""
    executor = executor_on(double)
    double.requests.clear()
    child = executor.dispatch(request(3, 1), "3-1-token")
    assert double.requests.get("GET /v1/job/:id", 0) == 0
    assert executor.dispatch(request(3, 1), "3-1-token") == child  # its own: adopted
    assert double.requests["GET /v1/job/:id"] == 1
    for other in (request(4, 1), request(3, 2)):
        with pytest.raises(ExecutorError, match="not adopted") as caught:
            executor.dispatch(other, "3-1-token")
        assert f"the execution of job 3 attempt 1, not of job {other.job_id} attempt " in str(
            caught.value
        )
    assert double.cluster.children(PARENT) == [child]
    assert double.cluster.task_runs == {}


def test_allocation_mapping():
    # Nomad lists allocations in no creation order: the newest is neither first nor last.
    lost = execution_from_allocations(
        "p/dispatch-1",
        [
            {"ID": "a" * 36, "ClientStatus": "complete", "CreateIndex": 1},
            {
                "ID": "b" * 36,
                "ClientStatus": "lost",
                "ClientDescription": "node down",
                "CreateIndex": 3,
            },
            {"ID": "c" * 36, "ClientStatus": "failed", "CreateIndex": 2},
        ],
    )
    assert lost.state is ExecutionState.LOST and "node down" in lost.reason
    failed = execution_from_allocations(
        "p/dispatch-1",
        [
            {
                "ClientStatus": "failed",
                "TaskStates": {
                    "worker": {
                        "Events": [{"Type": "Driver Failure", "DisplayMessage": "image not found"}]
                    }
                },
            }
        ],
    )
    assert failed.state is ExecutionState.LOST and "image not found" in failed.reason
    running = execution_from_allocations("p/dispatch-1", [{"ClientStatus": "unknown"}])
    assert running.state is ExecutionState.RUNNING
    assert execution_from_allocations("p/dispatch-1", []).state is ExecutionState.LOST


def test_status_takes_the_newest_allocation_in_nomads_order(double: NomadDouble):
    executor = executor_on(double)
    child = executor.dispatch(request(), "7-1")
    # Three ended allocations, created in this order; the double lists them as Nomad
    # does, by allocation ID (1..., 5..., c...): the newest (exit 0) comes second.
    for prefix, code in (("c", 137), ("1", 2), ("5", 0)):
        double.cluster.finish(
            child, code, allocation_id=f"{prefix * 8}-0000-4000-8000-000000000000"
        )
    listed = double.cluster.allocations_of(child)
    newest = max(listed, key=lambda a: a["CreateIndex"])
    assert listed.index(newest) not in (0, len(listed) - 1)
    assert newest["ClientStatus"] == "complete"
    [status] = executor.status([child]).values()
    assert (status.state, status.exit_code) == (ExecutionState.EXITED, 0)
    assert newest["ID"][:8] in status.reason


def test_stop_deletes_and_ignores_a_collected_child(double: NomadDouble):
    executor = executor_on(double)
    child = executor.dispatch(request(), "7-1")
    executor.stop(child)
    assert double.cluster.get(child)["Stop"] is True
    double.cluster.gc(child)
    executor.stop(child)  # already gone: no error
    assert double.cluster.stop_requests == [child, child]


def test_transient_500s_are_retried(double: NomadDouble):
    executor = executor_on(double, nomad_retries=2)
    double.faults.fail_next = 2
    child = executor.dispatch(request(), "7-1")
    assert double.cluster.children(PARENT) == [child]
    assert double.requests["POST /v1/job/:id/dispatch"] == 3


def test_persistent_500_is_a_refusal_and_nomad_counts_as_up(double: NomadDouble):
    # Nomad answers the dispatches it rejects (stopped parent, meta...) with a 500 and the
    # reason: a refusal of that dispatch, not an outage.
    executor = executor_on(double, nomad_retries=1)
    double.faults.fail_next = 10
    with pytest.raises(
        ExecutorError, match=r"Nomad refused the dispatch of job 7 attempt 1.*500"
    ) as caught:
        executor.dispatch(request(), "7-1")
    assert not isinstance(caught.value, ExecutorUnavailable)
    assert executor.capacity("extra_small") is None


def test_no_cluster_leader_is_unavailability(double: NomadDouble):
    executor = executor_on(double, nomad_retries=1)
    double.faults.fail_next = 10
    double.faults.fail_message = "No cluster leader"
    with pytest.raises(
        ExecutorUnavailable, match=r"does not answer \(HTTP 500: No cluster leader\)"
    ):
        executor.dispatch(request(), "7-1")
    assert double.requests["POST /v1/job/:id/dispatch"] == 2  # the bounded retries
    assert executor.capacity("extra_small") == 0  # ready jobs stay ready
    with pytest.raises(ExecutorUnavailable, match="could not stop"):
        executor.stop(f"{PARENT}/dispatch-x")  # while down: at once, nothing sent
    assert "DELETE /v1/job/:id" not in double.requests


def test_a_token_nomad_does_not_accept_is_unavailability(double: NomadDouble):
    """ACLs on and a wrong (expired, revoked) token: 403 "Permission denied" on every
    request. The jobs must wait for an operator, not fail one attempt each."""
    double.acl_token = "the-right-token"
    executor = executor_on(double, nomad_token="an-expired-token")
    with pytest.raises(ExecutorUnavailable, match=r"HTTP 403: Permission denied"):
        executor.dispatch(request(), "7-1")
    assert double.cluster.children(PARENT) == []
    assert executor.capacity("extra_small") == 0  # ready jobs stay ready
    good = executor_on(double, nomad_token="the-right-token")
    child = good.dispatch(request(), "7-1")
    assert double.cluster.children(PARENT) == [child]


def test_slow_answers_time_out_and_pause_dispatch(double: NomadDouble):
    executor = executor_on(double, nomad_retries=0, nomad_read_timeout_seconds=0.2)
    double.faults.delay_seconds = 0.5
    with pytest.raises(ExecutorUnavailable, match=r"does not answer .*timed out"):
        executor.dispatch(request(), "7-1")
    assert executor.capacity("extra_small") == 0
    assert executor.status([f"{PARENT}/dispatch-x"]) == {}  # unknown, nothing decided
    double.faults.delay_seconds = 0
    import time

    time.sleep(0.35)  # nomad_unavailable_retry_seconds of the test settings
    assert executor.capacity("extra_small") is None
    # The timed-out dispatch may have been applied: the same token finds that child.
    child = executor.dispatch(request(), "7-1")
    assert double.cluster.children(PARENT) == [child]


def test_dispatch_rate_is_paced(double: NomadDouble):
    executor = executor_on(double, nomad_dispatch_rate=20)
    import time

    began = time.monotonic()
    for i in range(6):
        executor.dispatch(request(i + 1), f"{i + 1}-1")
    assert time.monotonic() - began >= 5 / 20 * 0.9


def test_job_type_without_nomad_job_is_refused(double: NomadDouble):
    executor = executor_on(double)
    with pytest.raises(ExecutorError, match="names no Nomad job"):
        executor.dispatch(ExecutionRequest(1, 1, "test", "extra_small", None), "1-1")


def test_the_double_is_quiet_about_clients_that_went_away(
    nomad_double: NomadDouble, capsys: pytest.CaptureFixture[str]
):
    # A client that timed out leaves the server writing to a closed connection: the
    # expected outcome of the slow-answer fault, not a traceback on stderr.
    server = nomad_double._server
    assert server is not None
    for error in (BrokenPipeError(32, "Broken pipe"), ConnectionResetError(104, "reset")):
        try:
            raise error
        except OSError:
            server.handle_error(None, ("127.0.0.1", 1))
    assert capsys.readouterr().err == ""
    try:  # anything else is still reported
        raise ValueError("a bug in the double")
    except ValueError:
        server.handle_error(None, ("127.0.0.1", 1))
    assert "ValueError: a bug in the double" in capsys.readouterr().err
