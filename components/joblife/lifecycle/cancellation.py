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
    session: Session,
    executor: Executor,
    job_ids: Sequence[int],
    message: str | None = None,
    *,
    operator: str | None = None,
) -> list[StatusChange]:
    """Cancel the jobs (all or nothing, through the one door), then stop their running
    executions through the executor. Runs in the caller's transaction; the caller commits.
    ``operator``: who acted, recorded in the history (else the database login).

    Cancelling first means a refused cancel stops nothing; the row locks it takes keep a
    worker from recording anything more before the commit."""
    references = session.scalars(
        select(Job.nomad_job_id).where(
            Job.id.in_(list(job_ids)),
            Job.status_id.in_([int(s) for s in IN_FLIGHT_STATUSES]),
            Job.nomad_job_id.is_not(None),
        )
    ).all()
    changes = cancel_jobs(session, job_ids, message, operator=operator)
    for reference in references:
        executor.stop(reference)
    session.execute(
        update(Job).where(Job.id.in_(list(job_ids))).values(due_at=None),
        execution_options={"synchronize_session": False},
    )
    return changes
