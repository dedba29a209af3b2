"""Creation: turn newly discovered input products into jobs.

Per registered job type: the discovery window starts at the cursor read from the database
(``get_last_inserted_job``: the newest job's input publication date, never an in-memory
value) and ends now; ``get_jobs_to_create(start, end)`` returns the products to create and
those to record as cancelled; ``job_pre_insertion_setup`` completes each; then the jobs are
inserted in batches with ``ON CONFLICT DO NOTHING`` on the natural key (the database trigger
writes their first history row in the same statement). A product discovered twice is
counted as already known, never an error.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from joblife.lifecycle.common import ServiceContext, for_each_job_type, job_logger, utc_now
from joblife.model import Job, JobStatus, JobTemplate, Priority

log = job_logger("creation")

INSERT_BATCH = 5000
_NATURAL_KEY = ("job_type", "input_product_id", "reprocessing_context")


@dataclass
class CreationReport:
    """What one creation cycle did for one job type."""

    job_type: str
    window_start: datetime | None = None
    window_end: datetime | None = None
    discovered: int = 0
    inserted: int = 0
    already_known: int = 0
    cancelled: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("window_start", "window_end"):
            data[key] = data[key].isoformat() if data[key] else None
        return data


def create_jobs(context: ServiceContext, now: datetime | None = None) -> list[CreationReport]:
    """One creation cycle over every registered job type; one type's failure is reported
    and the others go on."""
    now = now or utc_now()
    return for_each_job_type(
        context,
        CreationReport,
        lambda session, cls, report: _create_for_type(session, cls, now, context, report),
        "creation",
    )


def _create_for_type(
    session: Session,
    cls: type[JobTemplate],
    now: datetime,
    context: ServiceContext,
    report: CreationReport,
) -> None:
    cursor = cls.get_last_inserted_job(session)
    if cursor is not None and cursor.input_publication_date is not None:
        start = cursor.input_publication_date
    else:
        start = now - timedelta(hours=context.settings.discovery_lookback_hours)
    report.window_start, report.window_end = start, now
    found = cls.get_jobs_to_create(start, now)
    for job in (*found.to_create, *found.to_cancel):
        job.job_pre_insertion_setup()
    report.discovered = len(found.to_create) + len(found.to_cancel)
    created = insert_jobs(session, cls, found.to_create, JobStatus.INITIALIZED, now)
    cancelled = insert_jobs(session, cls, found.to_cancel, JobStatus.CANCELLED, now)
    report.inserted, report.cancelled = created, cancelled
    report.already_known = report.discovered - created - cancelled
    if report.inserted or report.cancelled:
        log.info(
            "%s: %d discovered, %d created, %d cancelled, %d already known",
            cls.JOB_NAME,
            report.discovered,
            created,
            cancelled,
            report.already_known,
        )


def insert_jobs(
    session: Session,
    cls: type[JobTemplate],
    jobs: Sequence[JobTemplate],
    status: JobStatus,
    now: datetime | None = None,
) -> int:
    """Insert ``jobs`` of type ``cls`` in ``status`` (a creation status), skipping those whose
    natural key exists; return how many were inserted. Runs in the caller's transaction."""
    now = now or utc_now()
    inserted = 0
    for start in range(0, len(jobs), INSERT_BATCH):
        batch = jobs[start : start + INSERT_BATCH]
        parent_rows = _unique_by_key([_parent_row(cls, job, status, now) for job in batch])
        if not parent_rows:
            continue
        table = Job.__table__
        statement = (
            insert(table)
            .on_conflict_do_nothing(index_elements=list(_NATURAL_KEY))
            .returning(table.c.id, table.c.input_product_id, table.c.reprocessing_context)
        )
        new_ids = {
            (row.input_product_id, row.reprocessing_context): row.id
            for row in session.execute(statement, parent_rows)
        }
        inserted += len(new_ids)
        child_rows = [
            {"id": new_ids[key], **_child_values(cls, job)}
            for job, key in ((job, _key(job)) for job in batch)
            if key in new_ids
        ]
        # A type's table can have no column of its own besides id.
        if child_rows:
            session.execute(insert(cls.__table__), _unique_ids(child_rows))
    return inserted


def _key(job: JobTemplate) -> tuple[str, str]:
    return (job.input_product_id, job.reprocessing_context or "")


def _parent_row(
    cls: type[JobTemplate], job: JobTemplate, status: JobStatus, now: datetime
) -> dict[str, Any]:
    if not job.input_product_id:
        raise ValueError(f"{cls.__name__}: a discovered job has no input_product_id")
    return {
        "unique_id": job.unique_id or uuid.uuid4(),
        "job_type": cls.JOB_NAME,
        "name": job.name,
        "input_product_id": job.input_product_id,
        "tile_id": job.tile_id,
        "input_path": job.input_path,
        "input_publication_date": job.input_publication_date,
        "output_path": job.output_path,
        "output_publication_date": job.output_publication_date,
        "priority": int(job.priority or Priority.NRT),
        "reprocessing_context": job.reprocessing_context or "",
        "status": int(status),
        "status_changed_at": now,
        "attempt": 0,
        "max_attempts": job.max_attempts or cls.MAX_ATTEMPTS,
        "worker_flavor": job.worker_flavor or cls.WORKER_FLAVOR_NAME,
        "created_at": now,
    }


def _child_values(cls: type[JobTemplate], job: JobTemplate) -> dict[str, Any]:
    own = cls.__table__
    return {
        prop.key: getattr(job, prop.key)
        for prop in inspect(cls).column_attrs
        if prop.columns[0].table is own and prop.key != "id"
    }


def _unique_by_key(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        seen.setdefault((row["input_product_id"], row["reprocessing_context"]), row)
    return list(seen.values())


def _unique_ids(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list({row["id"]: row for row in rows}.values())
