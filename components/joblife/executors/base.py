"""The executor interface: how joblife starts, inspects and stops the execution of one
processing attempt. The local executor runs workers as processes on this machine; the Nomad
executor dispatches a child of the type's parameterized job."""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from joblife.errors import ExecutorError


@dataclass(frozen=True, slots=True)
class ExecutionRequest:
    """What an executor needs to start one attempt of a job."""

    job_id: int
    attempt: int
    job_type: str
    worker_flavor: str
    nomad_job_name: str | None = None
    #: The job's ``unique_id`` (drawn per job): with the job id and attempt, what names this
    #: attempt's execution (see :func:`execution_token`). None only in tests that start
    #: executions by hand.
    unique_id: str | None = None
    #: The attempt's secret (see :mod:`joblife.db.worker_doors`), passed to the worker:
    #: without it the worker can write nothing. Never logged (not in the repr).
    attempt_secret: str | None = field(default=None, repr=False)


class ExecutionState(enum.Enum):
    """What an executor knows of one execution."""

    PENDING = "pending"  # accepted, not running yet (e.g. waiting for placement)
    RUNNING = "running"
    EXITED = "exited"  # ended; exit_code says how
    LOST = "lost"  # gone without an exit status (killed, node lost, garbage-collected...)


@dataclass(frozen=True, slots=True)
class ExecutionStatus:
    """An execution's state; ``reason`` explains EXITED/LOST in words an operator reads."""

    reference: str
    state: ExecutionState
    exit_code: int | None = None
    reason: str | None = None

    @property
    def ended(self) -> bool:
        return self.state in (ExecutionState.EXITED, ExecutionState.LOST)


class ExecutorUnavailable(ExecutorError):
    """The executor cannot be reached right now (no answer after its bounded retries, or
    it said it cannot serve, e.g. no cluster leader): nothing was started, stopped or
    refused. A queued job stays queued without a reference and keeps its attempt; the
    monitor dispatches it again with the same token once the executor answers."""


class JobTypeUnavailable(ExecutorUnavailable):
    """The executor answers, but cannot start executions of one job type now (for Nomad:
    the type's parameterized job is missing, stopped, not parameterized, or refuses
    joblife's dispatches): nothing was started. For the jobs of that type as
    :class:`ExecutorUnavailable` (queued without a reference, attempt kept, dispatched
    again with the same token once the type is back), while the other types go on.

    An executor that pauses job types this way also has ``job_type_unavailable(job_type,
    nomad_job_name) -> str | None``: the reason while dispatch of the type is paused (None
    otherwise), which the dispatch service and the monitor ask before choosing jobs (see
    :func:`joblife.lifecycle.dispatch.paused_job_types`)."""

    def __init__(self, job_type: str, reason: str) -> None:
        super().__init__(f"dispatch of job type {job_type!r} paused: {reason}")
        self.job_type = job_type
        self.reason = reason


def execution_token(job_id: int, attempt: int, unique_id: uuid.UUID | str) -> str:
    """The idempotency token of a job's attempt, ``<job id>-<attempt>-<unique id, 32 hex>``:
    dispatching twice with it runs it once. The job's ``unique_id`` makes it unique across
    databases: a database re-created against the same Nomad cluster (or local state
    directory) numbers its jobs and attempts from 1 again, and Nomad returns the child of
    any earlier dispatch with the same token until that child is garbage-collected. 52
    characters at most for ids below 10^15: Nomad bounds neither the token nor the id
    prefix template (``nomad/job_endpoint.go``, ``structs.DispatchedID``)."""
    return f"{job_id}-{attempt}-{uuid.UUID(str(unique_id)).hex}"


def parse_execution_token(token: str) -> tuple[int, int, str | None] | None:
    """``(job id, attempt, unique id hex)`` of a token of :func:`execution_token`; the
    unique id is None for a token of the old form ``<job id>-<attempt>``, and None is
    returned for a token of neither form."""
    parts = token.split("-")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[:2]):
        return None
    unique = parts[2] if len(parts) == 3 else None
    if unique is not None and not re.fullmatch(r"[0-9a-f]{32}", unique):
        return None
    return int(parts[0]), int(parts[1]), unique


@runtime_checkable
class Executor(Protocol):
    """Runs ``joblife worker run JOB_ID`` for one attempt of a job, somewhere."""

    name: str

    def dispatch(self, request: ExecutionRequest, token: str) -> str:
        """Start the attempt (idempotent per ``token``: a repeated token returns the existing
        execution's reference and starts nothing); return its reference. Raises
        :class:`ExecutorUnavailable` when the executor cannot be reached (the attempt
        waits), :class:`joblife.errors.ExecutorError` with the reason when it refuses
        (the attempt fails)."""
        ...

    def status(self, references: Iterable[str]) -> dict[str, ExecutionStatus]:
        """The state of each execution, keyed by reference (one call for many)."""
        ...

    def stop(self, reference: str) -> None:
        """Stop the execution if it still runs (no error if it already ended); raises
        :class:`ExecutorUnavailable` when the executor cannot be reached."""
        ...

    def capacity(self, flavor: str) -> int | None:
        """How many executions of ``flavor`` may run at once here (None: no limit of the
        executor's own; the dispatcher's caps still apply)."""
        ...
