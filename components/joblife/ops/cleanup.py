"""Clean-up: remove finished jobs (done or cancelled for longer than a retention period)
with their history, their job type's row and their outbox rows.

- **Dry run by default**: counts what would go, changes nothing.
- **Only final statuses**: a job is taken only if it is done or cancelled, checked under a
  row lock in the transaction that deletes it; no other job is ever touched.
- **Bounded batches**: ``batch_size`` jobs per transaction, claimed with ``FOR UPDATE SKIP
  LOCKED`` (a job an operator is republishing at that moment is skipped, not waited for).
- **Export first** (optional): each batch is appended to a JSON-lines file (one object per
  job: the job, its type's own columns, its history, its outbox rows), flushed to disk
  before the batch's delete commits. A crash between the two exports a batch twice at
  most, never loses one.

The deletes need the table owner's rights (the migrating user): none of the least-privilege
roles may delete jobs or history.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, Engine, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import BigInteger

from joblife.model.status import FINAL_STATUSES, JobStatus

_FINAL = ", ".join(str(int(s)) for s in sorted(FINAL_STATUSES))  # literals: partial index
_CANDIDATES = f"status IN ({_FINAL}) AND status_changed_at < :cutoff"
_IDS = bindparam("ids", type_=ARRAY(BigInteger))

_COUNT = text(
    f"""
    SELECT j.status, count(*) AS jobs,
           coalesce(sum((SELECT count(*) FROM job_status_changes c WHERE c.job_id = j.id)), 0)
               AS history,
           coalesce(sum((SELECT count(*) FROM publications p WHERE p.job_id = j.id)), 0)
               AS publications
      FROM jobs j WHERE {_CANDIDATES.replace("status", "j.status")}
     GROUP BY j.status
    """
)
_CLAIM = text(
    f"SELECT id FROM jobs WHERE {_CANDIDATES} ORDER BY status_changed_at, id "
    "LIMIT :limit FOR UPDATE SKIP LOCKED"
)
_DELETE = text(
    f"DELETE FROM jobs WHERE id = ANY (:ids) AND status IN ({_FINAL}) RETURNING id, status"
).bindparams(_IDS)
_SIZES = text(
    "SELECT (SELECT count(*) FROM job_status_changes WHERE job_id = ANY (:ids)) AS history, "
    "(SELECT count(*) FROM publications WHERE job_id = ANY (:ids)) AS publications"
).bindparams(_IDS)
_EXPORT_JOBS = text("SELECT id, to_jsonb(j) AS row FROM jobs j WHERE id = ANY (:ids)").bindparams(
    _IDS
)
_EXPORT_HISTORY = text(
    "SELECT job_id, to_jsonb(c) - 'job_id' AS row FROM job_status_changes c "
    "WHERE job_id = ANY (:ids) ORDER BY job_id, id"
).bindparams(_IDS)
_EXPORT_PUBLICATIONS = text(
    "SELECT job_id, to_jsonb(p) - 'job_id' AS row FROM publications p "
    "WHERE job_id = ANY (:ids) ORDER BY job_id, id"
).bindparams(_IDS)
# Job-type tables: their id references jobs(id) (the joined-table inheritance).
_TYPE_TABLES = text(
    """
    SELECT c.conrelid::regclass::text
      FROM pg_constraint c
      JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
     WHERE c.contype = 'f' AND c.confrelid = 'jobs'::regclass
       AND cardinality(c.conkey) = 1 AND a.attname = 'id'
    """
)


@dataclass
class CleanupReport:
    """What a clean-up removed (or, in a dry run, would remove)."""

    cutoff: datetime
    executed: bool
    jobs: int = 0
    history_rows: int = 0
    publications: int = 0
    batches: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    export: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "cutoff": self.cutoff,
            "executed": self.executed,
            "jobs": self.jobs,
            "history_rows": self.history_rows,
            "publications": self.publications,
            "batches": self.batches,
            "by_status": self.by_status,
            "export": self.export,
        }


def cleanup(
    engine: Engine,
    older_than: timedelta,
    now: datetime,
    *,
    execute: bool = False,
    export: Path | None = None,
    batch_size: int = 1000,
    max_batches: int | None = None,
) -> CleanupReport:
    """Remove (``execute``) or count (dry run) the jobs done or cancelled before
    ``now - older_than``; see the module docstring."""
    if older_than <= timedelta(0):
        raise ValueError("--older-than must be a positive duration")
    if batch_size <= 0:
        raise ValueError("the batch size must be positive")
    report = CleanupReport(cutoff=now - older_than, executed=execute)
    if not execute:
        with engine.connect() as conn:
            for row in conn.execute(_COUNT, {"cutoff": report.cutoff}):
                _add(report, JobStatus(row.status), row.jobs, row.history, row.publications)
        return report
    report.export = str(export) if export is not None else None
    out = export.open("a", encoding="utf-8") if export is not None else None
    try:
        while max_batches is None or report.batches < max_batches:
            with engine.begin() as conn:
                ids = list(
                    conn.execute(_CLAIM, {"cutoff": report.cutoff, "limit": batch_size}).scalars()
                )
                if not ids:
                    break
                sizes = conn.execute(_SIZES, {"ids": ids}).one()
                if out is not None:
                    _export(conn, ids, out)
                statuses = Counter(
                    JobStatus(row.status) for row in conn.execute(_DELETE, {"ids": ids})
                )
            report.batches += 1
            for status, count in statuses.items():
                _add(report, status, count, 0, 0)
            report.history_rows += sizes.history
            report.publications += sizes.publications
            if len(ids) < batch_size:
                break
    finally:
        if out is not None:
            out.close()
    return report


def _add(report: CleanupReport, status: JobStatus, jobs: int, history: int, pubs: int) -> None:
    report.jobs += jobs
    report.history_rows += history
    report.publications += pubs
    report.by_status[status.label] = report.by_status.get(status.label, 0) + jobs


def _export(conn: Connection, ids: list[int], out: IO[str]) -> None:
    """Append one JSON line per job to ``out`` and force it to disk."""
    jobs = {
        row.id: {"job": row.row, "type_fields": None, "history": [], "publications": []}
        for row in conn.execute(_EXPORT_JOBS, {"ids": ids})
    }
    for table in conn.execute(_TYPE_TABLES).scalars():
        rows = conn.execute(
            text(
                f"SELECT id, to_jsonb(t) - 'id' AS row FROM {table} t WHERE id = ANY (:ids)"
            ).bindparams(_IDS),
            {"ids": ids},
        )
        for row in rows:
            jobs[row.id]["type_fields"] = row.row
    for key, query in (("history", _EXPORT_HISTORY), ("publications", _EXPORT_PUBLICATIONS)):
        for row in conn.execute(query, {"ids": ids}):
            jobs[row.job_id][key].append(row.row)
    for job_id in sorted(jobs):
        out.write(json.dumps(jobs[job_id], ensure_ascii=False, separators=(",", ":")) + "\n")
    out.flush()
    os.fsync(out.fileno())
