"""The Nomad executor: each attempt is one dispatched child of the job type's
parameterized batch job (see :mod:`joblife.nomad.specs`), through python-nomad.

- **dispatch**: ``POST /v1/job/<parent>/dispatch?idempotency_token=<job>-<attempt>-<unique
  id>`` with meta ``job_id``/``attempt``/``attempt_secret`` (the worker reads the secret as
  ``NOMAD_META_attempt_secret``; anyone who may read the Nomad job sees it) and an
  ``IdPrefixTemplate`` naming the job, so the child is
  ``<parent>/dispatch-job<id>-a<attempt>-<unix>-<8 hex>``. Nomad reads the token only from
  the query string (python-nomad's own ``idempotency_token`` argument puts it in the body,
  where Nomad ignores it); a repeated token returns the existing child and starts nothing
  (an answer without an evaluation). Such a child is read back and adopted only if its
  meta names this job and attempt: a child of another job under the token is a refusal
  (see :meth:`NomadExecutor.dispatch`).
  Dispatches are spaced to ``nomad_dispatch_rate`` per second; the caps on jobs in flight
  are the dispatch service's (Nomad has none per parameterized job).
- **status**: one ``GET /v1/jobs?prefix=<parent>/dispatch-`` per parent job lists every
  child with its status; only the children that ended (``dead``) cost one more request,
  ``/v1/job/<child>/allocations``, for the newest allocation's client status and the exit
  code of its ``Terminated`` event. A child missing from the list and confirmed by a 404
  is no longer known to Nomad: reported LOST, never a success, saying whether this
  executor saw it end (then garbage-collected) or never saw it end (collected between two
  looks, or a cluster that lost its state); the monitor's compare-and-set on the status
  it saw decides from the database (a worker that recorded its outcome wins).
- **stop**: ``DELETE /v1/job/<child>`` (a child already gone is no error).
- **Nomad unreachable** (no answer, a proxy's 502/503/504, or Nomad's own 500 saying it
  cannot serve, e.g. "No cluster leader", after the retries): :meth:`dispatch` and
  :meth:`stop` raise :class:`~joblife.executors.base.ExecutorUnavailable` with the reason
  (the job waits, queued without a reference, its attempt kept), :meth:`capacity` is 0 so
  the dispatch service leaves ready jobs ready, and Nomad is probed again every
  ``nomad_unavailable_retry_seconds``; children it cannot inspect are left out of
  :meth:`status` (unknown, so nothing is decided about them).
- **A job type unavailable**: a dispatch answered with one of Nomad's 500s about the
  parent job itself (``parameterized job not found``, ``Specified job "…" is not a
  parameterized job``, ``… is stopped``: not deployed yet, purged, stopped; or the
  parent's meta/payload rules refusing joblife's dispatch: :data:`PARENT_REFUSALS`) would
  refuse every job of the type alike: dispatch of the types on that parent is paused
  (:class:`~joblife.executors.base.JobTypeUnavailable`: the job waits queued without a
  reference, its attempt kept; :meth:`job_type_unavailable` tells the services, which
  then leave the type's ready jobs ready while the other types go on). Every
  ``nomad_unavailable_retry_seconds`` the parent is read (``GET /v1/job/<parent>``,
  :func:`parent_job_problem`, which ``joblife health`` uses too): the pause goes on while
  it would refuse joblife's dispatches, and ends once it takes them (deployed). The pause
  and its end are logged once each (not at every check) and shown by the gauge
  ``joblife_job_type_unavailable`` (:func:`~joblife.ops.metrics.record_job_type_availability`).
- **Any other 5xx** after the client's retries (an unclassified server error) is a refusal
  of that dispatch (:class:`~joblife.errors.ExecutorError`: the attempt fails, as it may
  be about this one request) **and** pauses the type as above for the retry delay; then,
  the parent reading fine, the next dispatch tells (accepted: resumed; refused again:
  paused again, not logged again). A server that keeps failing so costs at most one
  attempt per type and delay, never a claimed batch in a tight loop. A **4xx** (a request
  Nomad finds malformed) and a child of another job returned for the token are refusals
  only.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from nomad.api.exceptions import BaseNomadException

import nomad
from joblife.config import Settings
from joblife.errors import ConfigurationError, ExecutorError
from joblife.executors.base import (
    ExecutionRequest,
    ExecutionState,
    ExecutionStatus,
    ExecutorUnavailable,
    JobTypeUnavailable,
)
from joblife.executors.local import describe_exit
from joblife.nomad.client import describe, http_status, is_unreachable, nomad_client
from joblife.ops.metrics import record_job_type_availability

log = logging.getLogger(__name__)

#: Nomad's separator between a parameterized job's id and its dispatched child's suffix.
DISPATCH_SEPARATOR = "/dispatch-"
#: How many children seen ended are remembered (to word a later 404; oldest forgotten).
SEEN_ENDED_MEMORY = 100_000
#: Nomad's 500s to a dispatch that are about the parent job (``nomad/job_endpoint.go``,
#: ``Job.Dispatch`` and ``validateDispatchRequest``): missing, not parameterized, stopped,
#: or its rules refusing what joblife sends every job of the type alike (a parent deployed
#: from another spec). Reading the parent (:func:`parent_job_problem`) tells when it is
#: fixed.
PARENT_REFUSALS = (
    "parameterized job not found",
    "is not a parameterized job",
    "is stopped",
    "Dispatch did not provide required meta keys",
    "Dispatch request included unpermitted metadata keys",
    "Payload is not provided but required",
)
#: The meta keys of joblife's dispatches (no payload): the rendered specs' ``meta_required``
#: and ``meta_optional`` (:mod:`joblife.nomad.specs`).
DISPATCH_META_KEYS = frozenset({"job_id", "attempt", "attempt_secret"})


@dataclass
class _Pause:
    """Dispatch to one parent job, paused (see the module docstring)."""

    reason: str
    retry_at: float
    #: Paused on the parent's state (reading it tells when it is back), not on a server
    #: error (the next dispatch tells).
    on_state: bool
    #: The job types seen dispatching to it (for the gauge and the log).
    job_types: set[str] = field(default_factory=set)
    #: The parent read fine after a pause on a server error: the next dispatch tells.
    trial: bool = False


class NomadExecutor:
    """Runs attempts as dispatched Nomad jobs; see the module docstring."""

    name = "nomad"

    def __init__(
        self,
        client: nomad.Nomad,
        *,
        address: str,
        dispatch_rate: float = 0.0,
        unavailable_retry_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.address = address
        self.unavailable_retry_seconds = unavailable_retry_seconds
        self._clock = clock
        self._pacer = _Pacer(dispatch_rate, clock)
        self._lock = threading.Lock()
        self._down_reason: str | None = None
        self._retry_at = 0.0
        #: Parent jobs whose dispatches are paused, by id.
        self._paused: dict[str, _Pause] = {}
        #: Children this executor saw ``dead``: a later 404 is then a garbage collection.
        self._seen_ended: OrderedDict[str, None] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings, *, dispatching: bool = True) -> NomadExecutor:
        """The executor of the settings. ``dispatching`` (the services): refused with
        :class:`ConfigurationError` without ``attempt_secret_key``, as each allocation of
        the dispatch and monitor jobs would make its own random key file, and a re-dispatch
        from another allocation would carry a secret whose hash the database refuses. Only
        stopping executions (an operator's cancel) needs no key."""
        if dispatching and settings.attempt_secret_key is None:
            raise ConfigurationError(
                "attempt_secret_key is not set: the Nomad executor needs one key shared by "
                "every dispatch and monitor allocation; put a long random string (e.g. "
                "`openssl rand -hex 32`) under the key attempt_secret_key of the Nomad "
                "variable (nomad_variables_path), or set JOBLIFE_ATTEMPT_SECRET_KEY"
            )
        return cls(
            nomad_client(settings),
            address=str(settings.nomad_addr),
            dispatch_rate=settings.nomad_dispatch_rate,
            unavailable_retry_seconds=settings.nomad_unavailable_retry_seconds,
        )

    # -- the Executor interface ---------------------------------------------------------------
    def capacity(self, flavor: str) -> int | None:
        """No limit of Nomad's own, except 0 while Nomad does not answer: ready jobs then
        stay ready instead of failing their dispatch."""
        return None if self.available() else 0

    def dispatch(self, request: ExecutionRequest, token: str) -> str:
        """Dispatch a child of the type's parameterized job with the token as
        ``?idempotency_token=``; its ``DispatchedJobID`` is the reference. An answer
        without an evaluation is an existing child returned for the token (a re-dispatch
        after a crash): it is adopted only if its meta names this job and attempt
        (:meth:`_check_returned_child`)."""
        if not self.available():
            raise ExecutorUnavailable(self._down_message())
        parent = request.nomad_job_name
        if not parent:
            raise ExecutorError(
                f"job type {request.job_type!r} names no Nomad job (NOMAD_JOB_NAME)"
            )
        paused = self._pause_reason(parent, request.job_type)
        if paused is not None:
            raise JobTypeUnavailable(request.job_type, paused)
        meta = {"job_id": str(request.job_id), "attempt": str(request.attempt)}
        if request.attempt_secret:
            # Readable by whoever may read the Nomad job (its meta), as the secret of
            # this one attempt only: see joblife.db.worker_doors.
            meta["attempt_secret"] = request.attempt_secret
        body = {
            "Meta": meta,
            "IdPrefixTemplate": f"job{request.job_id}-a{request.attempt}",
        }
        self._pacer.wait()
        try:
            answer = self._call(
                lambda: self.client.job.request(
                    parent,
                    "dispatch",
                    method="post",
                    params={"idempotency_token": token},
                    json=body,
                ).json()
            )
        except BaseNomadException as exc:
            if is_unreachable(exc):
                raise ExecutorUnavailable(self._down_message()) from exc
            status = http_status(exc)
            refused = f"Nomad refused a dispatch to its job {parent!r}: {describe(exc)}"
            body = exc.nomad_resp.text if status is not None else ""  # type: ignore[attr-defined]
            if status == 500 and any(message in body for message in PARENT_REFUSALS):
                self._pause(parent, request.job_type, refused, on_state=True)
                raise JobTypeUnavailable(request.job_type, refused) from exc
            if status is not None and status >= 500:
                self._pause(parent, request.job_type, refused, on_state=False)
            raise ExecutorError(
                f"Nomad refused the dispatch of job {request.job_id} attempt "
                f"{request.attempt} to {parent!r}: {describe(exc)}"
            ) from exc
        self._resume(parent)
        child = answer.get("DispatchedJobID") if isinstance(answer, dict) else None
        if not child:
            raise ExecutorError(f"Nomad's dispatch answer names no DispatchedJobID: {answer!r}")
        if not answer.get("EvalID"):
            # A dispatch of a (non-periodic) parameterized job always creates an
            # evaluation, except when the token returns an existing child.
            self._check_returned_child(str(child), request, token)
        return str(child)

    def status(self, references: Iterable[str]) -> dict[str, ExecutionStatus]:
        """One prefix listing per parent job of ``references``, plus the allocations of
        the children that ended; a child Nomad cannot tell about now is left out."""
        result: dict[str, ExecutionStatus] = {}
        by_parent: dict[str, list[str]] = {}
        for reference in references:
            parent, separator, _ = reference.partition(DISPATCH_SEPARATOR)
            if not separator or not parent:
                result[reference] = ExecutionStatus(
                    reference,
                    ExecutionState.LOST,
                    reason=f"{reference!r} is not a dispatched Nomad job id",
                )
                continue
            by_parent.setdefault(parent, []).append(reference)
        if by_parent and not self.available():
            return result  # unknown: nothing is decided while Nomad does not answer
        for parent, group in by_parent.items():
            try:
                stubs = self._call(
                    lambda p=parent: self.client.jobs.get_jobs(prefix=p + DISPATCH_SEPARATOR)
                )
            except BaseNomadException as exc:
                log.warning("cannot list the children of Nomad job %s: %s", parent, describe(exc))
                continue
            listed = {stub["ID"]: stub for stub in stubs}
            for reference in group:
                status = self._child_status(reference, listed.get(reference))
                if status is not None:
                    result[reference] = status
        return result

    def stop(self, reference: str) -> None:
        """``DELETE /v1/job/<child>``; a child already garbage-collected is no error."""
        if not self.available():
            raise ExecutorUnavailable(
                f"could not stop Nomad job {reference}: {self._down_message()}"
            )
        try:
            self._call(lambda: self.client.job.deregister_job(reference))
        except BaseNomadException as exc:
            if http_status(exc) == 404:
                return  # already garbage-collected: nothing runs
            error = ExecutorUnavailable if is_unreachable(exc) else ExecutorError
            raise error(f"could not stop Nomad job {reference}: {describe(exc)}") from exc

    # -- availability ---------------------------------------------------------------------------
    def available(self) -> bool:
        """Whether Nomad is believed to answer; once the retry delay has passed after a
        failure, one cheap request (the cluster leader) tells."""
        with self._lock:
            if self._down_reason is None:
                return True
            if self._clock() < self._retry_at:
                return False
        with contextlib.suppress(BaseNomadException):  # _call records whether Nomad answered
            self._call(lambda: self.client.status.leader.get_leader())
        with self._lock:
            return self._down_reason is None

    def _call(self, request: Callable[[], Any]) -> Any:
        """Run one python-nomad request, keeping track of whether Nomad answers."""
        try:
            answer = request()
        except BaseNomadException as exc:
            if is_unreachable(exc):
                self._mark_down(describe(exc))
            else:
                self._mark_up()
            raise
        self._mark_up()
        return answer

    def _mark_down(self, reason: str) -> None:
        with self._lock:
            if self._down_reason is None:
                log.warning(
                    "Nomad at %s does not answer (%s): dispatch paused, checking again every "
                    "%.0f s",
                    self.address,
                    reason,
                    self.unavailable_retry_seconds,
                )
            self._down_reason = reason
            self._retry_at = self._clock() + self.unavailable_retry_seconds

    def _mark_up(self) -> None:
        with self._lock:
            if self._down_reason is not None:
                log.warning("Nomad at %s answers again: dispatch resumes", self.address)
            self._down_reason = None

    def _down_message(self) -> str:
        return f"Nomad at {self.address} does not answer ({self._down_reason})"

    # -- job types ------------------------------------------------------------------------------
    def job_type_unavailable(self, job_type: str, nomad_job_name: str | None) -> str | None:
        """Why dispatch of ``job_type`` (to its parameterized job ``nomad_job_name``) is
        paused, None when it is not: once the retry delay has passed, the parent job is
        read again first (see the module docstring)."""
        return self._pause_reason(nomad_job_name, job_type) if nomad_job_name else None

    def _pause_reason(self, parent: str, job_type: str) -> str | None:
        """The reason of the pause on ``parent``, None when dispatches may be sent (no
        pause, or the parent reads fine after the retry delay)."""
        with self._lock:
            pause = self._paused.get(parent)
            if pause is None:
                return None
            if job_type not in pause.job_types:
                pause.job_types.add(job_type)
                record_job_type_availability(job_type, parent, available=False)
            if pause.trial:
                return None
            if self._down_reason is not None or self._clock() < pause.retry_at:
                return pause.reason
            # One read of the parent per delay, whoever asks meanwhile.
            pause.retry_at = self._clock() + self.unavailable_retry_seconds
        try:
            problem = self._call(lambda: parent_job_problem(self.client, parent))
        except BaseNomadException as exc:
            log.debug("cannot read Nomad job %s: %s", parent, describe(exc))
            return pause.reason  # no news: the pause goes on
        with self._lock:
            if self._paused.get(parent) is not pause:
                return None  # resumed meanwhile by an accepted dispatch
            if problem is not None:
                pause.reason, pause.on_state = problem, True
                return problem
            if not pause.on_state:
                pause.trial = True  # deployed: the next dispatch tells
                return None
        self._resume(parent)
        return None

    def _pause(self, parent: str, job_type: str, reason: str, *, on_state: bool) -> None:
        """Pause dispatches to ``parent`` for the retry delay (logged when it begins)."""
        with self._lock:
            pause = self._paused.get(parent)
            retry_at = self._clock() + self.unavailable_retry_seconds
            if pause is None:
                pause = self._paused[parent] = _Pause(reason, retry_at, on_state)
                log.warning(
                    "dispatch of job type %s paused: %s; Nomad job %s is checked again every "
                    "%g s, and the type's jobs wait (attempt kept) until it takes "
                    "dispatches (`joblife nomad deploy`)",
                    job_type,
                    reason,
                    parent,
                    self.unavailable_retry_seconds,
                )
            else:
                pause.reason, pause.retry_at, pause.on_state = reason, retry_at, on_state
                pause.trial = False
            pause.job_types.add(job_type)
            types = sorted(pause.job_types)
        for name in types:
            record_job_type_availability(name, parent, available=False)

    def _resume(self, parent: str) -> None:
        """End the pause on ``parent``, if any (logged)."""
        with self._lock:
            pause = self._paused.pop(parent, None)
        if pause is None:
            return
        types = sorted(pause.job_types)
        log.warning(
            "Nomad job %s takes dispatches again: dispatch of job type %s resumes",
            parent,
            ", ".join(types),
        )
        for name in types:
            record_job_type_availability(name, parent, available=True)

    # -- one child -----------------------------------------------------------------------------
    def _check_returned_child(self, child: str, request: ExecutionRequest, token: str) -> None:
        """Refuse a child returned for ``token`` that is not this attempt's execution: its
        meta names another job or attempt (a token reused by hand, or a copy of this
        database dispatching to the same cluster). Refused rather than dispatched anew:
        Nomad returns that child for the token until it is garbage-collected, so only a
        new token (the next attempt's) can start this job; never adopted, since its
        outcome is another job's. A child already gone (404) cannot be read and is
        returned as is: the monitor then reports it unknown to Nomad."""
        try:
            job = self._call(lambda: self.client.job.get_job(child))
        except BaseNomadException as exc:
            if http_status(exc) == 404:
                return
            if is_unreachable(exc):
                raise ExecutorUnavailable(self._down_message()) from exc
            raise ExecutorError(
                f"cannot read Nomad job {child}, returned for the token {token}: {describe(exc)}"
            ) from exc
        meta = job.get("Meta") or {}
        names = (meta.get("job_id"), meta.get("attempt"))
        if names == (str(request.job_id), str(request.attempt)):
            return
        raise ExecutorError(
            f"Nomad returned its job {child} for the idempotency token {token}, but that child "
            f"is the execution of job {names[0]} attempt {names[1]}, not of job "
            f"{request.job_id} attempt {request.attempt}: not adopted (the token was used "
            "before by another job: a dispatch by hand, or a copy of this database "
            "dispatching to the same cluster); the next attempt gets a new token"
        )

    def _child_status(self, reference: str, stub: dict | None) -> ExecutionStatus | None:
        """The child's state from its list entry; None when it cannot be known now."""
        try:
            if stub is None:
                # Not listed: garbage-collected (or dispatched after the list was read).
                stub = self._call(lambda: self.client.job.get_job(reference))
            status = stub.get("Status")
            if status == "dead":
                self._saw_end(reference)  # before its allocations: they may be gone next
            if status == "running":
                return ExecutionStatus(reference, ExecutionState.RUNNING)
            if status != "dead":
                return ExecutionStatus(reference, ExecutionState.PENDING)
            allocations = self._call(lambda: self.client.job.get_allocations(reference))
        except BaseNomadException as exc:
            if http_status(exc) == 404:
                return ExecutionStatus(reference, ExecutionState.LOST, reason=self._gone(reference))
            log.warning("cannot inspect Nomad job %s: %s", reference, describe(exc))
            return None
        return execution_from_allocations(reference, allocations, stopped=bool(stub.get("Stop")))

    def _saw_end(self, reference: str) -> None:
        with self._lock:
            self._seen_ended[reference] = None
            self._seen_ended.move_to_end(reference)
            while len(self._seen_ended) > SEEN_ENDED_MEMORY:
                self._seen_ended.popitem(last=False)

    def _gone(self, reference: str) -> str:
        """Why a child Nomad answers 404 for is LOST: whether it was seen ended."""
        with self._lock:
            seen_ended = reference in self._seen_ended
        if seen_ended:
            return (
                f"Nomad no longer knows job {reference}: it was seen ended, then "
                "garbage-collected before its outcome was read (no exit status: not a success)"
            )
        return (
            f"Nomad no longer knows job {reference}, never seen ended by this executor: an "
            "unknown child (the cluster lost its state, or the child ended and was "
            "garbage-collected between two checks); no exit status: not a success"
        )


def parent_job_problem(client: nomad.Nomad, parent: str) -> str | None:
    """Why Nomad refuses every dispatch of joblife to its job ``parent`` now, read from
    ``GET /v1/job/<parent>`` as ``Job.Dispatch`` checks it: not found, not parameterized,
    stopped, or its payload and meta rules refusing :data:`DISPATCH_META_KEYS` without a
    payload; None when it takes them. Raises python-nomad's exception when Nomad gives no
    answer about it."""
    try:
        job = client.job.get_job(parent)
    except BaseNomadException as exc:
        if http_status(exc) == 404:
            return f"Nomad has no job {parent!r} ({describe(exc)}: not deployed, or purged)"
        raise
    rules = job.get("ParameterizedJob")
    if not rules:
        return f"Nomad job {parent!r} is not a parameterized job"
    if job.get("Stop"):
        return f"Nomad job {parent!r} is stopped"
    if rules.get("Payload") == "required":
        return f"Nomad job {parent!r} requires a payload (joblife sends none)"
    required = set(rules.get("MetaRequired") or ())
    permitted = required | set(rules.get("MetaOptional") or ())
    if required - DISPATCH_META_KEYS or DISPATCH_META_KEYS - permitted:
        return (
            f"Nomad job {parent!r} does not take joblife's dispatch meta "
            f"({', '.join(sorted(DISPATCH_META_KEYS))}): it requires "
            f"{sorted(required)} and permits {sorted(permitted)}"
        )
    return None


def execution_from_allocations(
    reference: str, allocations: list[dict[str, Any]], stopped: bool = False
) -> ExecutionStatus:
    """The state of a dispatched child that Nomad reports ``dead``, from its newest
    allocation: the client status, and the exit code of the task's ``Terminated`` event."""
    if not allocations:
        what = "stopped" if stopped else "ended"
        return ExecutionStatus(
            reference, ExecutionState.LOST, reason=f"Nomad job {reference} {what} unplaced"
        )
    allocation = max(allocations, key=lambda a: (a.get("CreateIndex", 0), a.get("CreateTime", 0)))
    where = (
        f"allocation {str(allocation.get('ID', '?'))[:8]} on {allocation.get('NodeName') or '?'}"
    )
    client_status = allocation.get("ClientStatus")
    if client_status in ("pending", "running", "unknown"):
        # "unknown": the client is disconnected, the task may well still run.
        state = ExecutionState.PENDING if client_status == "pending" else ExecutionState.RUNNING
        return ExecutionStatus(reference, state)
    if client_status == "lost":
        description = allocation.get("ClientDescription") or "its node stopped answering"
        return ExecutionStatus(
            reference, ExecutionState.LOST, reason=f"{where} lost: {description}"
        )
    events = [
        e
        for task in (allocation.get("TaskStates") or {}).values()
        for e in task.get("Events") or []
    ]
    exit_code = _exit_code(events)
    if exit_code is not None:
        reason = f"{describe_exit(exit_code)} ({where}{', stopped' if stopped else ''})"
        return ExecutionStatus(reference, ExecutionState.EXITED, exit_code, reason)
    last = events[-1] if events else {}
    message = (
        last.get("DisplayMessage") or last.get("Message") or allocation.get("ClientDescription")
    )
    detail = f"{last.get('Type')}: {message}" if last.get("Type") else (message or client_status)
    return ExecutionStatus(
        reference,
        ExecutionState.LOST,
        reason=f"{where} {client_status} without an exit status ({detail})",
    )


def _exit_code(events: list[dict[str, Any]]) -> int | None:
    """The exit code of the last ``Terminated`` event (Details hold it as a string)."""
    for event in reversed(events):
        if event.get("Type") != "Terminated":
            continue
        details = event.get("Details") or {}
        value = details.get("exit_code", event.get("ExitCode"))
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    return None


class _Pacer:
    """Spaces calls to at most ``rate`` per second (0: no limit), across threads."""

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)
