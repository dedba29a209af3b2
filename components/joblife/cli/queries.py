"""The read queries behind the CLI, on the operator views and procedures of the database
(``job_status_summary``, ``jobs_overview``, ``job_status_history``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.types import BigInteger, Text

from joblife.model.status import JobStatus


@dataclass
class StatusSummary:
    """Job counts by type and status; ``statuses`` are those present, in status-id order."""

    statuses: list[JobStatus] = field(default_factory=list)
    counts: dict[str, dict[JobStatus, int]] = field(default_factory=dict)
    #: Products creation refused (``rejected_products``), by job type: not jobs, not counted
    #: above.
    rejected: dict[str, int] = field(default_factory=dict)

    def type_total(self, job_type: str) -> int:
        """All jobs of ``job_type``."""
        return sum(self.counts[job_type].values())

    def status_total(self, status: JobStatus) -> int:
        """All jobs in ``status``, whatever their type."""
        return sum(by_status.get(status, 0) for by_status in self.counts.values())

    @property
    def total(self) -> int:
        """All jobs."""
        return sum(self.type_total(t) for t in self.counts)


def status_summary(session: Session) -> StatusSummary:
    """The ``job_status_summary`` view as a job type x status matrix."""
    rows = session.execute(
        text(
            "SELECT job_type, status_id, jobs FROM job_status_summary ORDER BY job_type, status_id"
        )
    ).all()
    summary = StatusSummary()
    present: set[JobStatus] = set()
    for row in rows:
        status = JobStatus(row.status_id)
        present.add(status)
        summary.counts.setdefault(row.job_type, {})[status] = int(row.jobs)
    summary.statuses = sorted(present)
    summary.rejected = {
        row.job_type: int(row.products)
        for row in session.execute(
            text(
                "SELECT job_type, count(*) AS products FROM rejected_products "
                "GROUP BY job_type ORDER BY job_type"
            )
        )
    }
    return summary


_HISTORY = text(
    "SELECT change_id, time, previous_status, status, message, details "
    "FROM job_status_history(:ids)"
).bindparams(bindparam("ids", type_=ARRAY(BigInteger)))


def list_jobs(
    session: Session,
    *,
    job_type: str | None = None,
    statuses: Sequence[JobStatus] = (),
    since: datetime | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``jobs_overview`` matching every given filter, the most recent status change
    first. ``since`` keeps jobs whose status changed at or after that time (a job's
    creation is its first status change); ``limit`` None returns them all."""
    conditions = []
    params: dict[str, Any] = {}
    if job_type is not None:
        conditions.append("job_type = :job_type")
        params["job_type"] = job_type
    if statuses:
        conditions.append("status = ANY (:statuses)")
        params["statuses"] = [s.label for s in statuses]
    if since is not None:
        conditions.append("status_changed_at >= :since")
        params["since"] = since
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    sql = f"SELECT * FROM jobs_overview{where} ORDER BY status_changed_at DESC, id DESC"
    if limit is not None:
        sql += " LIMIT :limit"
        params["limit"] = limit
    statement = text(sql)
    if statuses:
        statement = statement.bindparams(bindparam("statuses", type_=ARRAY(Text)))
    return [dict(row._mapping) for row in session.execute(statement, params)]


def get_job(session: Session, job_id: int) -> dict[str, Any] | None:
    """The ``jobs_overview`` row of a job plus its input and output paths; None if no such job."""
    row = session.execute(
        text(
            "SELECT o.*, j.input_path, j.output_path FROM jobs_overview o "
            "JOIN jobs j ON j.id = o.id WHERE o.id = :id"
        ),
        {"id": job_id},
    ).first()
    return dict(row._mapping) if row is not None else None


def get_type_fields(session: Session, job_class: type, job_id: int) -> dict[str, Any]:
    """The job type's own columns (its ``__tablename__`` table, without ``id``)."""
    table = job_class.__table__  # type: ignore[attr-defined]
    columns = [c for c in table.c if c.name != "id"]
    if not columns:
        return {}
    row = session.execute(select(*columns).where(table.c.id == job_id)).first()
    return dict(row._mapping) if row is not None else {}


def status_history(session: Session, job_id: int) -> list[dict[str, Any]]:
    """The job's full status timeline, oldest change first (``job_status_history``)."""
    return [dict(row._mapping) for row in session.execute(_HISTORY, {"ids": [job_id]})]


def current_statuses(session: Session, job_ids: Sequence[int]) -> dict[int, JobStatus]:
    """The current status of each existing job of ``job_ids``, rows locked (in id order,
    the order the status procedures lock them in) until the transaction ends."""
    rows = session.execute(
        text("SELECT id, status FROM jobs WHERE id = ANY (:ids) ORDER BY id FOR UPDATE").bindparams(
            bindparam("ids", type_=ARRAY(BigInteger))
        ),
        {"ids": list(job_ids)},
    ).all()
    return {row.id: JobStatus(row.status) for row in rows}
