"""Cancelling jobs that may be running: stop the execution, then cancel through the door."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from joblife.db.status import StatusChange, cancel_jobs
from joblife.executors.base import Executor
from joblife.model import Job
from joblife.model.status import IN_FLIGHT_STATUSES


def cancel_and_stop(
    session: Session, executor: Executor, job_ids: Sequence[int], message: str | None = None
) -> list[StatusChange]:
    """Stop the running executions of ``job_ids`` through the executor, then cancel the jobs
    (all or nothing). Runs in the caller's transaction; the caller commits."""
    references = session.scalars(
        select(Job.nomad_job_id).where(
            Job.id.in_(list(job_ids)),
            Job.status_id.in_([int(s) for s in IN_FLIGHT_STATUSES]),
            Job.nomad_job_id.is_not(None),
        )
    ).all()
    for reference in references:
        executor.stop(reference)
    changes = cancel_jobs(session, job_ids, message)
    session.execute(
        update(Job).where(Job.id.in_(list(job_ids))).values(due_at=None),
        execution_options={"synchronize_session": False},
    )
    return changes
