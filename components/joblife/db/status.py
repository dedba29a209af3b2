"""The one door for status changes, from Python: thin wrappers of the stored procedures
``set_job_status``, ``acknowledge_jobs``, ``cancel_jobs``, ``retry_jobs`` and
``republish_jobs``.

Each call is all-or-nothing over its jobs. A refusal raises a typed
:class:`joblife.errors.StatusError` (the enclosing transaction is then aborted: roll back).
Jobs of the session whose status changed are refreshed, so that no stale object keeps an
old status in memory.

Every text a call carries into the history (the message, and every string of the details,
keys included, at any depth) is made storable here, the door's one caller side: NUL and
undecodable bytes replaced with U+FFFD, the message capped at
:data:`~joblife.db.text.MESSAGE_MAX_BYTES` and each details string at
:data:`~joblife.db.text.DETAILS_TEXT_MAX_BYTES` (see :mod:`joblife.db.text`). Text from
science output can then never make a status change fail.

The operator wrappers take the acting operator's name (``operator=``): the procedures
record it in each history row's details under ``"operator"`` (migration 0017), and the
login of the database session when no name is given.

Details are always a JSON object: no details (None) is sent as ``{}``, never as JSON
``null`` (which the doors before migration 0018 stored as ``null``, and the worker door
as ``[null, {"attempt": n}]``); the doors make any non-object an object too (0018).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.types import BigInteger, Text

from joblife.db.text import MESSAGE_MAX_BYTES, storable_details, storable_text
from joblife.errors import (
    InvalidTransition,
    JobNotFound,
    RepublishRefused,
    StatusConflict,
    StatusError,
    StatusWriteRefused,
    UnknownStatus,
)
from joblife.model.job import Job
from joblife.model.status import JobStatus


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One job's status change as applied by the database."""

    job_id: int
    previous_status: JobStatus
    status: JobStatus
    changed_at: datetime


#: The details parameter: a None that still reached it is SQL NULL, not JSON ``null``
#: (SQLAlchemy's JSON default); :func:`_storable` sends ``{}`` for None anyway.
_DETAILS = JSONB(none_as_null=True)

_SET_JOB_STATUS = text(
    "SELECT * FROM set_job_status(:ids, :new_status, :expected, :message, :details)"
).bindparams(
    bindparam("ids", type_=ARRAY(BigInteger)),
    bindparam("expected", type_=ARRAY(Text)),
    bindparam("details", type_=_DETAILS),
)


_WORKER_SET_JOB_STATUS = text(
    "SELECT * FROM worker_set_job_status(:job_id, :attempt, :new_status, :expected, "
    ":message, :details)"
).bindparams(
    bindparam("expected", type_=ARRAY(Text)),
    bindparam("details", type_=_DETAILS),
)


_OPERATOR_CALLS = {
    name: text(f"SELECT * FROM {name}(:ids, :message)").bindparams(
        bindparam("ids", type_=ARRAY(BigInteger))
    )
    for name in ("acknowledge_jobs", "cancel_jobs", "retry_jobs", "republish_jobs")
}

#: The longest operator name recorded (UTF-8 bytes); a longer one is cut, with a note.
OPERATOR_NAME_MAX_BYTES = 200

#: Name the operator for the rest of the transaction (``joblife.operator``, read by the
#: procedures through ``joblife_operator_name()``); the name it had before, to put back.
#: Transaction-local (is_local => true), never a session SET: through PgBouncer in
#: transaction mode the next transaction may be another client's on the same server
#: connection. The subquery reads the old value before set_config writes the new one.
_NAME_OPERATOR = text(
    "SELECT o.previous, set_config('joblife.operator', :name, true) "
    "FROM (SELECT current_setting('joblife.operator', true) AS previous OFFSET 0) AS o"
)
_RESTORE_OPERATOR = text("SELECT set_config('joblife.operator', :name, true)")


def translate_status_error(error: DBAPIError) -> StatusError | None:
    """The typed error for a refusal raised by the status machine (SQLSTATE JL00x), or
    None when ``error`` is something else."""
    orig = error.orig
    code = getattr(orig, "pgcode", None)
    if not code or not code.startswith("JL"):
        return None
    diag = getattr(orig, "diag", None)
    message = (getattr(diag, "message_primary", None) or str(orig)).strip()
    hint = getattr(diag, "message_hint", None)
    if hint:
        message = f"{message} ({hint})"
    try:
        detail = json.loads(getattr(diag, "message_detail", None) or "{}")
    except ValueError:
        detail = {}
    if code == "JL001":
        return UnknownStatus(message, detail.get("status"))
    if code == "JL002":
        return InvalidTransition(message, detail.get("job_id"), detail.get("from"), detail["to"])
    if code == "JL003":
        return StatusConflict(
            message,
            detail["job_id"],
            detail["actual"],
            detail.get("expected") or [],
            detail["requested"],
        )
    if code == "JL004":
        return JobNotFound(message, detail.get("job_ids") or [])
    if code == "JL060":
        return RepublishRefused(message, detail.get("job_id"))
    return StatusWriteRefused(message)


def _storable(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with the message and the details made storable (see the module
    docstring), no details sent as ``{}``; the caller's objects are not changed."""
    params = dict(params)
    message = params.get("message")
    if message is not None:
        value = message if isinstance(message, str | bytes) else str(message)
        params["message"] = storable_text(value, MESSAGE_MAX_BYTES)
    if "details" in params:
        details = params["details"]
        params["details"] = {} if details is None else storable_details(details)
    return params


def _run(
    executor: Session | Connection, statement: Any, params: dict[str, Any]
) -> list[StatusChange]:
    try:
        rows = executor.execute(statement, _storable(params)).all()
    except DBAPIError as error:
        typed = translate_status_error(error)
        if typed is None:
            raise
        raise typed from error
    changes = [
        StatusChange(
            row.job_id,
            JobStatus.parse(row.previous_status),
            JobStatus.parse(row.status),
            row.changed_at,
        )
        for row in rows
    ]
    if isinstance(executor, Session):
        _refresh_in_session(executor, changes)
    return changes


def _refresh_in_session(session: Session, changes: Sequence[StatusChange]) -> None:
    """Expire what the procedures changed on jobs the session holds: the next read loads
    the database's values, so no stale status survives in memory."""
    changed = {change.job_id for change in changes}
    for obj in list(session.identity_map.values()):
        if isinstance(obj, Job) and obj.id in changed:
            session.expire(obj, ["status_id", "status_changed_at", "max_attempts"])


def _ids(job_ids: int | Iterable[int]) -> list[int]:
    return [job_ids] if isinstance(job_ids, int) else [int(i) for i in job_ids]


def _names(statuses: Iterable[JobStatus | str] | JobStatus | str | None) -> list[str] | None:
    if statuses is None:
        return None
    if isinstance(statuses, JobStatus | str):
        statuses = [statuses]
    return [_name(s) for s in statuses]


def _name(status: JobStatus | str) -> str:
    # Names are passed through unchanged so that the database judges unknown ones.
    return status.label if isinstance(status, JobStatus) else status


def set_job_status(
    executor: Session | Connection,
    job_ids: int | Iterable[int],
    new_status: JobStatus | str,
    expected: Iterable[JobStatus | str] | JobStatus | str | None = None,
    message: str | None = None,
    details: dict[str, Any] | None = None,
) -> list[StatusChange]:
    """Move the jobs to ``new_status`` through the one door, all or nothing.

    ``expected``: the status(es) the jobs must be in now (compare-and-set); of concurrent
    callers expecting the same status, exactly one succeeds and the others get
    :class:`~joblife.errors.StatusConflict`. Raises :class:`~joblife.errors.InvalidTransition`,
    :class:`~joblife.errors.JobNotFound` or :class:`~joblife.errors.UnknownStatus` otherwise.
    Runs in the caller's transaction; the caller commits.
    """
    return _run(
        executor,
        _SET_JOB_STATUS,
        {
            "ids": _ids(job_ids),
            "new_status": _name(new_status),
            "expected": _names(expected),
            "message": message,
            "details": details,
        },
    )


def worker_set_job_status(
    executor: Session | Connection,
    job_id: int,
    attempt: int,
    new_status: JobStatus | str,
    expected: Iterable[JobStatus | str] | JobStatus | str | None = None,
    message: str | None = None,
    details: dict[str, Any] | None = None,
) -> list[StatusChange]:
    """A worker's status change of its own job, through ``worker_set_job_status`` (the one
    function the ``joblife_worker`` role may call): only the worker's transitions
    (queued → started → … → processed → done, or an error from a running status), only on
    the job's current ``attempt``; otherwise as :func:`set_job_status`."""
    return _run(
        executor,
        _WORKER_SET_JOB_STATUS,
        {
            "job_id": job_id,
            "attempt": attempt,
            "new_status": _name(new_status),
            "expected": _names(expected),
            "message": message,
            "details": details,
        },
    )


def acknowledge_jobs(
    executor: Session | Connection,
    job_ids: int | Iterable[int],
    message: str | None = None,
    *,
    operator: str | None = None,
) -> list[StatusChange]:
    """internal_error | external_error → error_checked (an operator saw the error).
    ``operator``: who acted (see :func:`operator_name`)."""
    return _operator(executor, "acknowledge_jobs", job_ids, message, operator)


def cancel_jobs(
    executor: Session | Connection,
    job_ids: int | Iterable[int],
    message: str | None = None,
    *,
    operator: str | None = None,
) -> list[StatusChange]:
    """Any job whose status allows it → cancelled. ``operator``: who acted (see
    :func:`operator_name`)."""
    return _operator(executor, "cancel_jobs", job_ids, message, operator)


def retry_jobs(
    executor: Session | Connection,
    job_ids: int | Iterable[int],
    message: str | None = None,
    *,
    operator: str | None = None,
) -> list[StatusChange]:
    """external_error | error_checked (and internal_error, acknowledged on the way) → ready;
    a job out of attempts gets one more. ``operator``: who acted (see
    :func:`operator_name`)."""
    return _operator(executor, "retry_jobs", job_ids, message, operator)


def republish_jobs(
    executor: Session | Connection,
    job_ids: int | Iterable[int],
    message: str | None = None,
    *,
    operator: str | None = None,
) -> list[StatusChange]:
    """Publish the jobs' products again (``republish_jobs``, installed by migration 0006;
    see :func:`joblife.publication.outbox.republish`). Raises
    :class:`~joblife.errors.RepublishRefused` for a job that cannot be republished.
    ``operator``: who acted (see :func:`operator_name`)."""
    return _operator(executor, "republish_jobs", job_ids, message, operator)


def operator_name(name: str) -> str:
    """``name`` as the operator procedures record it: surrounding blanks stripped, made
    storable (NUL and undecodable bytes replaced) and cut at
    :data:`OPERATOR_NAME_MAX_BYTES`. An empty result stands for no name: the procedures
    then record the session's login."""
    return storable_text(name.strip(), OPERATOR_NAME_MAX_BYTES)


def _operator(
    executor: Session | Connection,
    function: str,
    job_ids: int | Iterable[int],
    message: str | None,
    operator: str | None,
) -> list[StatusChange]:
    """Call an operator procedure; with ``operator``, named for this call only.

    The name is set in the caller's transaction just before the call, and the previous
    value is put back after it, so that a later call of the same transaction without a
    name is not recorded under this one. (If the call fails, the transaction, or the
    savepoint it ran in, is rolled back and the setting with it.) The executor must be in
    a transaction: on an autocommit connection the setting would end with its statement.
    """
    params = {"ids": _ids(job_ids), "message": message}
    if operator is None:
        return _run(executor, _OPERATOR_CALLS[function], params)
    previous = executor.execute(_NAME_OPERATOR, {"name": operator_name(operator)}).scalar()
    changes = _run(executor, _OPERATOR_CALLS[function], params)
    executor.execute(_RESTORE_OPERATOR, {"name": previous or ""})
    return changes
