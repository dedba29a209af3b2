"""Job counts by type and status as the database maintains them (revision 0014): thin
wrappers of ``job_status_counts``, ``fold_job_counts()``, ``check_job_counts()`` and
``repair_job_counts()``.

The counts are exact in any transaction (folded counts plus the changes not folded yet,
read in one statement); folding only keeps the second part short. See
:mod:`joblife.model.counts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from joblife.model.status import JobStatus


@dataclass(frozen=True, slots=True)
class CountDifference:
    """A (type, status) whose maintained count is not the number of its jobs."""

    job_type: str
    status: JobStatus
    maintained: int
    actual: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_type": self.job_type,
            "status": self.status.label,
            "maintained": self.maintained,
            "actual": self.actual,
        }


def job_counts(session: Session) -> dict[tuple[str, JobStatus], int]:
    """The number of jobs of each (type, status) that has any, without reading jobs."""
    rows = session.execute(text("SELECT job_type, status, jobs FROM job_status_counts"))
    return {(row.job_type, JobStatus(row.status)): int(row.jobs) for row in rows}


def fold_job_counts(session: Session) -> int | None:
    """Fold the pending deltas into ``job_counts`` (in the session's transaction, which
    the caller commits); return the number of delta rows folded, or None without waiting
    when another fold or a repair is running (it folds them)."""
    folded = session.execute(text("SELECT fold_job_counts()")).scalar_one()
    return None if folded is None else int(folded)


def _differences(rows: Any) -> list[CountDifference]:
    return [
        CountDifference(row.job_type, JobStatus(row.status), int(row.maintained), int(row.actual))
        for row in rows
    ]


def check_job_counts(session: Session) -> list[CountDifference]:
    """The pairs whose maintained count differs from a count of the jobs (a full read of
    ``jobs``; empty when the counts are right)."""
    return _differences(session.execute(text("SELECT * FROM check_job_counts()")))


def repair_job_counts(session: Session) -> list[CountDifference]:
    """Set the maintained counts to a count of the jobs (in the session's transaction,
    which the caller commits); return the differences it corrected."""
    return _differences(session.execute(text("SELECT * FROM repair_job_counts()")))
