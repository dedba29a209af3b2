"""Stale jobs: jobs in a status for longer than that status's deadline, each with the
reason the service that polices the status gives when it acts, and what it will do.

The deadlines and rules are the services' own (same settings, same conditions):

- running (started ... post_processing) without a heartbeat for ``heartbeat_timeout_seconds``
  — the monitor stops the execution and fails the job (``external_error``);
- queued without an executor reference for ``redispatch_grace_seconds`` — the monitor
  dispatches it again with the same token;
- queued with a reference, accepted by the executor ``queued_deadline_seconds`` ago — the
  monitor stops the execution and fails the job (``external_error``);
- ``external_error`` past its retry backoff (``retry_backoff_seconds`` doubling per attempt,
  at most ``retry_backoff_max_seconds``) or out of attempts — the monitor retries it or
  fails it for good;
- ``configured`` past its type's ``DEPENDENCY_TIMEOUT`` — configuration fails it at the
  next re-check;
- the statuses no service polices by time (``stale_after_seconds``: initialized, ready,
  processed, start_publication, published) — a service is not keeping up, or not running.

A stale job the monitor would act on is one the monitor has not reached yet: the monitor
is not running, or is behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, or_, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.types import Text

from joblife.config import Settings
from joblife.db.reads import PRESENT_JOB_TYPES
from joblife.lifecycle.monitor import ACCEPTED_AT, queued_deadline_conditions, retry_conditions
from joblife.model import Job, JobStatus, JobTemplate
from joblife.model.job import TIMESTAMPTZ
from joblife.model.status import IN_FLIGHT_STATUSES

S = JobStatus
_RUNNING = sorted(int(s) for s in IN_FLIGHT_STATUSES - {S.QUEUED})
_UNPOLICED_ACTION = {
    S.INITIALIZED: "configuration is not running, or not keeping up",
    S.READY: "dispatch is held back by the in-flight caps, or not running",
    S.PROCESSED: "publication is not running, or the broker is unreachable",
    S.START_PUBLICATION: "publication is not running, or the broker is unreachable",
    S.PUBLISHED: "publication is not running",
}


@dataclass(frozen=True)
class StaleJob:
    """A job past its status's deadline."""

    job_id: int
    job_type: str
    status: JobStatus
    status_changed_at: datetime
    age: timedelta
    deadline: timedelta
    reason: str
    action: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "job_type": self.job_type,
            "status": self.status.label,
            "status_changed_at": self.status_changed_at,
            "age_seconds": round(self.age.total_seconds(), 3),
            "deadline_seconds": self.deadline.total_seconds(),
            "reason": self.reason,
            "action": self.action,
        }


def retry_backoff(settings: Settings, attempt: int) -> timedelta:
    """The monitor's wait before retrying an ``external_error`` job at ``attempt``."""
    seconds = settings.retry_backoff_seconds * 2 ** (max(attempt, 1) - 1)
    return timedelta(seconds=min(settings.retry_backoff_max_seconds, seconds))


def stale_jobs(
    session: Session,
    settings: Settings,
    job_types: Mapping[str, type[JobTemplate]],
    now: datetime,
    limit: int = 1000,
) -> list[StaleJob]:
    """Stale jobs, oldest status change first, at most ``limit`` (per rule, then overall)."""
    found: list[StaleJob] = []
    found += _stale_heartbeats(session, settings, now, limit)
    found += _lost_dispatches(session, settings, now, limit)
    found += _queued_deadlines(session, settings, now, limit)
    found += _retries_due(session, settings, now, limit)
    found += _dependency_deadlines(session, job_types, now, limit)
    found += _unpoliced(session, settings, now, limit)
    found.sort(key=lambda job: (job.status_changed_at, job.job_id))
    return found[:limit]


_COLUMNS = (
    Job.id,
    Job.job_type,
    Job.status_id,
    Job.status_changed_at,
    Job.attempt,
    Job.max_attempts,
    Job.heartbeat_at,
    Job.nomad_job_id,
    Job.waiting_for,
)


def _rows(session: Session, *conditions: Any, limit: int) -> list[Any]:
    return session.execute(
        select(*_COLUMNS).where(*conditions).order_by(Job.status_changed_at).limit(limit)
    ).all()


# The oldest jobs in one status changed before a cutoff (one per type, or one for all), per
# job type: one range of ix_jobs_type_status_changed each, merged. A status with many jobs
# (initialized, ready, configured) is then read as far as the cutoff and the limit, not
# whole (ix_jobs_status_changed has no entry for initialized and ready jobs).
_OLDEST_PER_TYPE = """
    SELECT p.* FROM ({types}) AS t
     CROSS JOIN LATERAL (
         SELECT j.id, j.job_type, j.status AS status_id, j.status_changed_at, j.attempt,
                j.max_attempts, j.heartbeat_at, j.nomad_job_id, j.waiting_for
           FROM jobs j
          WHERE j.job_type = t.job_type AND j.status = :status
            AND j.status_changed_at < {cutoff}
          ORDER BY j.status_changed_at, j.id LIMIT :limit) AS p
     ORDER BY p.status_changed_at, p.id LIMIT :limit
"""
_EVERY_TYPE = text(_OLDEST_PER_TYPE.format(types=PRESENT_JOB_TYPES, cutoff=":cutoff"))
_EACH_TYPE = text(
    _OLDEST_PER_TYPE.format(
        types="SELECT * FROM unnest(CAST(:types AS text[]), CAST(:cutoffs AS timestamptz[])) "
        "AS u(job_type, cutoff)",
        cutoff="t.cutoff",
    )
).bindparams(bindparam("types", type_=ARRAY(Text)), bindparam("cutoffs", type_=ARRAY(TIMESTAMPTZ)))


def _oldest(
    session: Session, status: JobStatus, cutoff: datetime | Mapping[str, datetime], limit: int
) -> list[Any]:
    """Jobs in ``status`` changed before ``cutoff`` (one time for every type, or one per
    job type named), oldest change first, at most ``limit``."""
    params: dict[str, Any] = {"status": int(status), "limit": limit}
    if isinstance(cutoff, datetime):
        return session.execute(_EVERY_TYPE, {**params, "cutoff": cutoff}).all()
    params.update(types=list(cutoff), cutoffs=list(cutoff.values()))
    return session.execute(_EACH_TYPE, params).all()


def _job(row: Any, now: datetime, deadline: timedelta, reason: str, action: str) -> StaleJob:
    return StaleJob(
        row.id,
        row.job_type,
        JobStatus(row.status_id),
        row.status_changed_at,
        now - row.status_changed_at,
        deadline,
        reason,
        action,
    )


def _stale_heartbeats(session: Session, settings: Settings, now: datetime, limit: int) -> list:
    deadline = timedelta(seconds=settings.heartbeat_timeout_seconds)
    cutoff = now - deadline
    rows = _rows(
        session,
        Job.status_id.in_(_RUNNING),
        or_(Job.heartbeat_at < cutoff, Job.heartbeat_at.is_(None)),
        Job.status_changed_at < cutoff,
        limit=limit,
    )
    result = []
    for row in rows:
        last = row.heartbeat_at.isoformat() if row.heartbeat_at else "never"
        result.append(
            _job(
                row,
                now,
                deadline,
                f"worker heartbeat stale (last {last}) while the job was "
                f"{JobStatus(row.status_id)}",
                "the monitor stops the execution and fails the job (external_error)",
            )
        )
    return result


def _lost_dispatches(session: Session, settings: Settings, now: datetime, limit: int) -> list:
    deadline = timedelta(seconds=settings.redispatch_grace_seconds)
    rows = _rows(
        session,
        Job.status_id == S.QUEUED,
        Job.nomad_job_id.is_(None),
        Job.status_changed_at < now - deadline,
        limit=limit,
    )
    return [
        _job(
            row,
            now,
            deadline,
            f"attempt {row.attempt}: queued without execution",
            "the monitor dispatches it again with the same token",
        )
        for row in rows
    ]


def _queued_deadlines(session: Session, settings: Settings, now: datetime, limit: int) -> list:
    deadline = timedelta(seconds=settings.queued_deadline_seconds)
    rows = session.execute(
        select(*_COLUMNS, ACCEPTED_AT.label("accepted_at"))
        .where(*queued_deadline_conditions(settings, now))
        .order_by(ACCEPTED_AT)
        .limit(limit)
    ).all()
    return [
        _job(
            row,
            now,
            deadline,
            f"execution never started: accepted by the executor at "
            f"{row.accepted_at.isoformat()}, past the queued deadline of "
            f"{settings.queued_deadline_seconds:.0f} s",
            "the monitor stops the execution and fails the job (external_error)",
        )
        for row in rows
    ]


def _retries_due(session: Session, settings: Settings, now: datetime, limit: int) -> list:
    rows = _rows(session, *retry_conditions(settings, now), limit=limit)
    result = []
    for row in rows:
        if row.attempt >= row.max_attempts:
            reason = f"attempts exhausted ({row.attempt} of {row.max_attempts})"
            action = "the monitor fails it for good (internal_error)"
            deadline = timedelta(0)
        else:
            deadline = retry_backoff(settings, row.attempt)
            reason = f"automatic retry due (backoff {deadline} after attempt {row.attempt})"
            action = "the monitor retries it (ready)"
        result.append(_job(row, now, deadline, reason, action))
    return result


def _dependency_deadlines(
    session: Session, job_types: Mapping[str, type[JobTemplate]], now: datetime, limit: int
) -> list:
    if not job_types:
        return []
    cutoffs = {name: now - cls.DEPENDENCY_TIMEOUT for name, cls in job_types.items()}
    rows = _oldest(session, S.CONFIGURED, cutoffs, limit)
    result = []
    for row in rows:
        timeout = job_types[row.job_type].DEPENDENCY_TIMEOUT
        waited = timedelta(seconds=round((now - row.status_changed_at).total_seconds()))
        result.append(
            _job(
                row,
                now,
                timeout,
                f"dependency wait deadline ({timeout}) passed after waiting {waited} for "
                f"{row.waiting_for or 'an unnamed dependency'}",
                "configuration fails it (internal_error) at its next re-check",
            )
        )
    return result


def _unpoliced(session: Session, settings: Settings, now: datetime, limit: int) -> list:
    result = []
    for name, seconds in settings.stale_after_seconds.items():
        status = JobStatus.parse(name)
        deadline = timedelta(seconds=seconds)
        if status is S.QUEUED:  # policed by the monitor (the two rules above)
            continue
        for row in _oldest(session, status, now - deadline, limit):
            age = timedelta(seconds=round((now - row.status_changed_at).total_seconds()))
            result.append(
                _job(
                    row,
                    now,
                    deadline,
                    f"{status} for {age}, past its deadline of {deadline}",
                    _UNPOLICED_ACTION.get(status, "no service acts on it by itself"),
                )
            )
    return result
