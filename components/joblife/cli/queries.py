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
from sqlalchemy.types import BigInteger, SmallInteger

from joblife.cli.parsing import PageCursor
from joblife.db.reads import PRESENT_JOB_TYPES
from joblife.errors import JobNotFound
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
    """The ``job_status_summary`` view as a job type x status matrix: the maintained counts
    (revision 0014), read without scanning jobs."""
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
    before: int | PageCursor | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``jobs_overview`` matching every given filter, the most recent status change
    first. ``since`` keeps jobs whose status changed at or after that time (a job's
    creation is its first status change); ``limit`` None returns them all; ``before``
    starts after a key in this order (the next page): a cursor with its time, exactly
    after the job a page ended with, whatever that job did since; a job id (or a cursor
    without time), after that job's current key. JobNotFound if a job id names no job.

    With a limit, the page is found without reading every matching job: the newest
    ``limit`` of each (type, status) pair from ``ix_jobs_type_status_changed`` (one short
    range per pair), merged; then their overview rows."""
    conditions = []
    params: dict[str, Any] = {}
    if since is not None:
        conditions.append("j.status_changed_at >= :since")
        params["since"] = since
    if before is not None:
        # The key as parameters (the dashboard's keyset condition): an index condition on
        # each (type, status) range of ix_jobs_type_status_changed, as the job-id subquery
        # this replaces was.
        conditions.append("(j.status_changed_at, j.id) < (:before_changed_at, :before_id)")
        cursor = before if isinstance(before, PageCursor) else PageCursor(before)
        params["before_id"] = cursor.job_id
        params["before_changed_at"] = _cursor_time(session, cursor)
    order = "ORDER BY {0}status_changed_at DESC, {0}id DESC"
    if limit is None:
        if job_type is not None:
            conditions.append("j.job_type = :job_type")
            params["job_type"] = job_type
        if statuses:
            conditions.append("j.status = ANY (:statuses)")
            params["statuses"] = [int(s) for s in statuses]
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        sql = (
            "SELECT o.* FROM jobs_overview o JOIN jobs j ON j.id = o.id"
            f"{where} {order.format('o.')}"
        )
    else:
        types = (
            "SELECT CAST(:job_type AS text) AS job_type"
            if job_type is not None
            else PRESENT_JOB_TYPES
        )
        if job_type is not None:
            params["job_type"] = job_type
        params["statuses"] = [int(s) for s in statuses or JobStatus]
        params["limit"] = limit
        where = "".join(f" AND {c}" for c in conditions)
        sql = f"""
            WITH types AS ({types}),
            page AS (
                SELECT p.id, p.status_changed_at
                  FROM types t
                 CROSS JOIN unnest(CAST(:statuses AS smallint[])) AS s(status)
                 CROSS JOIN LATERAL (
                     SELECT j.id, j.status_changed_at FROM jobs j
                      WHERE j.job_type = t.job_type AND j.status = s.status{where}
                      {order.format("j.")} LIMIT :limit) AS p
                 {order.format("p.")} LIMIT :limit
            )
            SELECT o.* FROM page JOIN jobs_overview o ON o.id = page.id
            {order.format("page.")}
        """
    statement = text(sql)
    if "statuses" in params:
        statement = statement.bindparams(bindparam("statuses", type_=ARRAY(SmallInteger)))
    return [dict(row._mapping) for row in session.execute(statement, params)]


def _cursor_time(session: Session, cursor: PageCursor) -> datetime:
    """The status change time of ``cursor``'s key: its own, else its job's current one.
    JobNotFound if it has none and names no job."""
    if cursor.status_changed_at is not None:
        return cursor.status_changed_at
    found = session.execute(
        text("SELECT status_changed_at FROM jobs WHERE id = :id"), {"id": cursor.job_id}
    ).first()
    if found is None:
        raise JobNotFound(f"job {cursor.job_id} not found (--before)", [cursor.job_id])
    return found.status_changed_at


#: Columns of ``jobs`` that :func:`get_job` adds to the ``jobs_overview`` row.
JOB_DETAIL_COLUMNS = ("input_path", "output_path", "science_image", "due_at", "waiting_for")


def get_job(session: Session, job_id: int, extra: Sequence[str] = ()) -> dict[str, Any] | None:
    """The ``jobs_overview`` row of a job plus :data:`JOB_DETAIL_COLUMNS` (its paths, the
    science image its last attempt ran, when a configured job is due and what it waits
    for) and the ``extra`` columns of ``jobs`` (names from the caller's code, never from
    input); None if no such job."""
    columns = ", ".join(f"j.{c}" for c in (*JOB_DETAIL_COLUMNS, *extra))
    row = session.execute(
        text(
            f"SELECT o.*, {columns} FROM jobs_overview o "
            "JOIN jobs j ON j.id = o.id WHERE o.id = :id"
        ),
        {"id": job_id},
    ).first()
    return dict(row._mapping) if row is not None else None


def present_job_types(session: Session) -> list[str]:
    """The job types that have jobs, in name order (one index probe per type)."""
    return list(session.execute(text(PRESENT_JOB_TYPES)).scalars())


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
