"""Configuration: decide, per job, whether it can run now.

Bounded batches of ``initialized`` jobs and of ``configured`` jobs due for a re-check are
claimed with ``FOR UPDATE SKIP LOCKED``; ``configure_batch_jobs`` runs once per batch, then
``configure_single_job`` per job decides: ``ready``, ``configured`` (waiting for a
dependency: re-checked every ``configure_recheck_seconds``; past the type's
``DEPENDENCY_TIMEOUT`` the job fails with what it waited for), ``cancelled``, or
``internal_error`` when the hook fails. One job's failure never stops the batch.

Logs: one summary line per job type and outcome that jobs moved to (their ids listed),
one line per job that failed (its own reason), one summary line when the batch hook
failed for every job of the batch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from joblife.db.status import set_job_status
from joblife.lifecycle.common import ServiceContext, for_each_job_type, job_logger, utc_now
from joblife.logs import describe_jobs
from joblife.model import Job, JobStatus, JobTemplate

log = job_logger("configuration")
S = JobStatus
_OUTCOMES = (S.READY, S.CONFIGURED, S.CANCELLED)
_MESSAGES = {
    S.READY: "configured: ready to run",
    S.CONFIGURED: "waiting for a dependency",
    S.CANCELLED: "cancelled by its job type's configuration",
}


@dataclass
class ConfigurationReport:
    """What one configuration cycle did for one job type."""

    job_type: str
    examined: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def configure_jobs(
    context: ServiceContext, now: datetime | None = None
) -> list[ConfigurationReport]:
    """One configuration cycle over every registered job type."""
    now = now or utc_now()
    return for_each_job_type(
        context,
        ConfigurationReport,
        lambda session, cls, report: _configure_type(session, cls, context, now, report),
        "configuration",
    )


def _configure_type(
    session: Session,
    cls: type[JobTemplate],
    context: ServiceContext,
    now: datetime,
    report: ConfigurationReport,
) -> None:
    # Two claims, each an ordered index scan that stops at the limit (one OR-ed query
    # would sort every initialized job of the type).
    batch = context.settings.batch_size
    claim = (
        select(cls)
        .order_by(cls.priority, cls.input_publication_date, cls.id)
        .with_for_update(skip_locked=True, of=Job.__table__)
    )
    jobs = list(session.scalars(claim.where(cls.status_id == S.INITIALIZED).limit(batch)))
    if len(jobs) < batch:
        due = claim.where(cls.status_id == S.CONFIGURED, cls.due_at <= now)
        jobs += session.scalars(due.limit(batch - len(jobs)))
    report.examined = len(jobs)
    if not jobs:
        return
    before = {job.id: job.status for job in jobs}
    attempts = {job.id: job.attempt for job in jobs}
    try:
        with session.begin_nested():
            cls.configure_batch_jobs(session, jobs)
    except Exception as exc:
        _fail(session, cls, attempts, f"configure_batch_jobs failed: {exc!r}", report)
        return

    decided: dict[JobStatus, list[int]] = defaultdict(list)
    failed: dict[int, str] = {}
    recheck_at = now + timedelta(seconds=context.settings.configure_recheck_seconds)
    for job in jobs:
        try:
            with session.begin_nested():
                outcome = JobStatus.parse(job.configure_single_job(session))
                if outcome not in _OUTCOMES:
                    raise ValueError(
                        f"configure_single_job returned {outcome}; expected one of "
                        + ", ".join(str(s) for s in _OUTCOMES)
                    )
                if outcome is S.CONFIGURED:
                    waited = now - job.status_changed_at if before[job.id] is S.CONFIGURED else None
                    if waited is not None and waited > cls.DEPENDENCY_TIMEOUT:
                        failed[job.id] = (
                            f"dependency wait deadline ({cls.DEPENDENCY_TIMEOUT}) passed after "
                            f"waiting {_round(waited)} for "
                            f"{job.waiting_for or 'an unnamed dependency'}"
                        )
                        continue
                    job.due_at = recheck_at
                else:
                    job.due_at = None
                    job.waiting_for = None
                decided[outcome].append(job.id)
        except Exception as exc:
            failed[job.id] = f"configure_single_job failed: {exc!r}"
    session.flush()

    for outcome, ids in decided.items():
        moving = [i for i in ids if before[i] is not outcome]
        if moving:
            set_job_status(
                session,
                moving,
                outcome,
                expected=[S.INITIALIZED, S.CONFIGURED],
                message=_MESSAGES[outcome],
            )
            log.jobs(moving, job_type=cls.JOB_NAME, status=outcome).info(
                "%s: %s now %s (%s)",
                cls.JOB_NAME,
                describe_jobs(moving),
                outcome,
                _MESSAGES[outcome],
            )
        report.outcomes[str(outcome)] = len(ids)
    for job_id, message in failed.items():
        _fail(session, cls, {job_id: attempts[job_id]}, message, report)


def _fail(
    session: Session,
    cls: type[JobTemplate],
    attempts: dict[int, int],
    message: str,
    report: ConfigurationReport,
) -> None:
    """The jobs of ``attempts`` (id → attempt) → internal_error with ``message``, logged
    as one line (about the job, or a summary about the batch)."""
    ids = list(attempts)
    status = S.INTERNAL_ERROR
    if len(ids) == 1:
        line = log.job(ids[0], job_type=cls.JOB_NAME, attempt=attempts[ids[0]], status=status)
    else:
        line = log.jobs(ids, job_type=cls.JOB_NAME, status=status)
    line.warning("%s: %s", describe_jobs(ids), message)
    session.execute(update(Job).where(Job.id.in_(ids)).values(due_at=None))
    set_job_status(session, ids, S.INTERNAL_ERROR, message=message)
    key = str(S.INTERNAL_ERROR)
    report.outcomes[key] = report.outcomes.get(key, 0) + len(ids)


def _round(delta: timedelta) -> timedelta:
    return timedelta(seconds=round(delta.total_seconds()))
