"""Clean-up: remove finished jobs (done or cancelled for longer than a retention period)
with their history, their job type's row and their outbox rows; drop the history of whole
months instead of deleting it row by row.

- **Dry run by default**: counts what would go, changes nothing.
- **Only final statuses**: a job is taken only if it is done or cancelled, checked under a
  row lock in the transaction that deletes it; no other job is ever touched.
- **Bounded batches**: ``batch_size`` jobs per transaction, claimed with ``FOR UPDATE SKIP
  LOCKED`` (a job an operator is republishing at that moment is skipped, not waited for).
- **Whole months dropped** (revision 0015): the history is partitioned by UTC month
  (:mod:`joblife.db.history_partitions`). The history partitions that lie entirely before
  the cutoff are removed with DROP TABLE once the jobs are deleted: the jobs' deletes leave
  their rows there (the rest of a job's history goes with it as before), then each such
  partition is replaced by a copy of the rows of the jobs that are kept (not finished,
  finished after the cutoff, or skipped because locked: usually few) and dropped. A job's
  history is never removed while the job is kept. A partition whose rows all belong to
  kept jobs is left as it is. Dropping takes the history's exclusive lock for a moment
  (detach, attach, drop): it waits at most ``lock_timeout_ms`` for it, then tries again,
  and after ``lock_attempts`` leaves the partition for the next run.
- **Export first** (optional): each batch is appended to a JSON-lines file (one object per
  job: the job, its type's own columns, its history outside the partitions about to be
  dropped, its outbox rows), and before a partition is dropped its rows of jobs gone (one
  object per row: ``{"partition": name, "history_row": row}``, streamed by the server with
  COPY); flushed to disk before the delete or the drop commits. A crash between the two
  exports a batch or a month twice at most, never loses one.
- **Partitions ahead**: an executed clean-up first creates the history's partitions of
  the months ahead (and moves rows out of the DEFAULT partition).

The deletes and drops need the table owner's rights (the migrating user): none of the
least-privilege roles may delete jobs or history.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, Engine, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError
from sqlalchemy.types import BigInteger

from joblife.db.history_partitions import (
    DEFAULT_PARTITION,
    HistoryPartition,
    ensure_history_partitions,
    history_partitions,
    is_history_partition,
)
from joblife.model.status import FINAL_STATUSES, JobStatus

_FINAL = ", ".join(str(int(s)) for s in sorted(FINAL_STATUSES))  # literals: partial index
_CANDIDATES = f"status IN ({_FINAL}) AND status_changed_at < :cutoff"
_J_CANDIDATES = _CANDIDATES.replace("status", "j.status")
_IDS = bindparam("ids", type_=ARRAY(BigInteger))
# History rows not in a partition about to be dropped (see jobs_delete_history, 0015).
_OUTSIDE = f"(c.time >= :boundary OR c.tableoid = '{DEFAULT_PARTITION}'::regclass)"
_LOCK_NOT_AVAILABLE = "55P03"


def _count(boundary: datetime | None) -> Any:
    outside = f" AND {_OUTSIDE}" if boundary else ""
    return text(
        f"""
        SELECT j.status, count(*) AS jobs,
               coalesce(sum((SELECT count(*) FROM job_status_changes c
                              WHERE c.job_id = j.id{outside})), 0) AS history,
               coalesce(sum((SELECT count(*) FROM publications p WHERE p.job_id = j.id)), 0)
                   AS publications
          FROM jobs j WHERE {_J_CANDIDATES}
         GROUP BY j.status
        """
    )


def _sizes(boundary: datetime | None) -> Any:
    outside = f" AND {_OUTSIDE}" if boundary else ""
    return text(
        "SELECT (SELECT count(*) FROM job_status_changes c WHERE c.job_id = ANY (:ids)"
        f"{outside}) AS history, "
        "(SELECT count(*) FROM publications WHERE job_id = ANY (:ids)) AS publications"
    ).bindparams(_IDS)


def _export_history(boundary: datetime | None) -> Any:
    outside = f" AND {_OUTSIDE}" if boundary else ""
    return text(
        "SELECT job_id, to_jsonb(c) - 'job_id' AS row FROM job_status_changes c "
        f"WHERE job_id = ANY (:ids){outside} ORDER BY job_id, id"
    ).bindparams(_IDS)


_CLAIM = text(
    f"SELECT id FROM jobs WHERE {_CANDIDATES} ORDER BY status_changed_at, id "
    "LIMIT :limit FOR UPDATE SKIP LOCKED"
)
_DELETE = text(
    f"DELETE FROM jobs WHERE id = ANY (:ids) AND status IN ({_FINAL}) RETURNING id, status"
).bindparams(_IDS)
_LEAVE_HISTORY_BEFORE = text(
    "SELECT set_config('joblife.history_dropped_before', CAST(:boundary AS text), true)"
)
_EXPORT_JOBS = text("SELECT id, to_jsonb(j) AS row FROM jobs j WHERE id = ANY (:ids)").bindparams(
    _IDS
)
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
_DROP_PARTITION = text("SELECT joblife_drop_history_partition(CAST(:name AS regclass))")


@dataclass
class PartitionReport:
    """One month of history (a partition) entirely before the cutoff: its rows, those of
    jobs gone or going (``dropped``) and those of jobs kept (copied into its replacement)."""

    name: str
    lower: datetime | None
    upper: datetime
    rows: int = 0
    dropped: int = 0
    kept: int = 0
    #: Why it was left as it is (every row belongs to a kept job; a lock not granted).
    left: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "from": self.lower,
            "to": self.upper,
            "rows": self.rows,
            "dropped": self.dropped,
            "kept": self.kept,
            "left": self.left,
        }


@dataclass
class CleanupReport:
    """What a clean-up removed (or, in a dry run, would remove)."""

    cutoff: datetime
    executed: bool
    jobs: int = 0
    #: History rows deleted with their jobs (outside the dropped partitions).
    history_rows: int = 0
    publications: int = 0
    batches: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    export: str | None = None
    #: The history partitions entirely before the cutoff, and what became of them.
    partitions: list[PartitionReport] = field(default_factory=list)
    #: Partitions of the months ahead created first (executed runs only).
    partitions_created: list[str] = field(default_factory=list)

    @property
    def history_rows_dropped(self) -> int:
        """History rows removed with the partitions dropped."""
        return sum(p.dropped for p in self.partitions if p.left is None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cutoff": self.cutoff,
            "executed": self.executed,
            "jobs": self.jobs,
            "history_rows": self.history_rows,
            "history_rows_dropped": self.history_rows_dropped,
            "publications": self.publications,
            "batches": self.batches,
            "by_status": self.by_status,
            "export": self.export,
            "partitions": [p.as_dict() for p in self.partitions],
            "partitions_created": self.partitions_created,
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
    months_ahead: int = 3,
    lock_timeout_ms: int = 2000,
    lock_attempts: int = 5,
    lock_retry_pause: float = 5.0,
) -> CleanupReport:
    """Remove (``execute``) or count (dry run) the jobs done or cancelled before
    ``now - older_than``, and the history partitions entirely before it; see the module
    docstring."""
    if older_than <= timedelta(0):
        raise ValueError("--older-than must be a positive duration")
    if batch_size <= 0:
        raise ValueError("the batch size must be positive")
    report = CleanupReport(cutoff=now - older_than, executed=execute)
    if execute:
        with engine.begin() as conn:
            report.partitions_created = ensure_history_partitions(conn, months_ahead)
    with engine.connect() as conn:
        droppable = [
            p
            for p in history_partitions(conn)
            if not p.is_default and p.upper is not None and p.upper <= report.cutoff
        ]
    boundary = max((p.upper for p in droppable if p.upper is not None), default=None)
    if not execute:
        _dry_run(engine, report, droppable, boundary)
        return report
    report.export = str(export) if export is not None else None
    out = export.open("ab") if export is not None else None
    try:
        _delete_jobs(engine, report, boundary, out, batch_size, max_batches)
        for partition in droppable:
            report.partitions.append(
                _drop_partition(
                    engine, partition, out, lock_timeout_ms, lock_attempts, lock_retry_pause
                )
            )
    finally:
        if out is not None:
            out.close()
    return report


def _dry_run(
    engine: Engine,
    report: CleanupReport,
    droppable: list[HistoryPartition],
    boundary: datetime | None,
) -> None:
    params = {"cutoff": report.cutoff, "boundary": boundary}
    with engine.connect() as conn:
        for row in conn.execute(_count(boundary), params):
            _add(report, JobStatus(row.status), row.jobs, row.history, row.publications)
        for partition in droppable:
            rows, dropped = conn.execute(
                text(
                    "SELECT count(*), count(*) FILTER (WHERE j.id IS NULL OR "
                    f"({_J_CANDIDATES})) "
                    f"FROM {_partition_name(partition)} c LEFT JOIN jobs j ON j.id = c.job_id"
                ),
                params,
            ).one()
            report.partitions.append(
                PartitionReport(
                    partition.name,
                    partition.lower,
                    _upper(partition),
                    rows,
                    dropped,
                    rows - dropped,
                    left="every row belongs to a job kept" if rows and not dropped else None,
                )
            )


def _delete_jobs(
    engine: Engine,
    report: CleanupReport,
    boundary: datetime | None,
    out: IO[bytes] | None,
    batch_size: int,
    max_batches: int | None,
) -> None:
    """The jobs, in batches; their history outside the partitions to drop goes with them."""
    sizes_query = _sizes(boundary)
    while max_batches is None or report.batches < max_batches:
        with engine.begin() as conn:
            if boundary is not None:
                conn.execute(_LEAVE_HISTORY_BEFORE, {"boundary": boundary})
            ids = list(
                conn.execute(_CLAIM, {"cutoff": report.cutoff, "limit": batch_size}).scalars()
            )
            if not ids:
                break
            sizes = conn.execute(sizes_query, {"ids": ids, "boundary": boundary}).one()
            if out is not None:
                _export(conn, ids, boundary, out)
            statuses = Counter(JobStatus(row.status) for row in conn.execute(_DELETE, {"ids": ids}))
        report.batches += 1
        for status, count in statuses.items():
            _add(report, status, count, 0, 0)
        report.history_rows += sizes.history
        report.publications += sizes.publications
        if len(ids) < batch_size:
            break


def _drop_partition(
    engine: Engine,
    partition: HistoryPartition,
    out: IO[bytes] | None,
    lock_timeout_ms: int,
    attempts: int,
    pause: float,
) -> PartitionReport:
    """Export (if asked) and drop one partition entirely before the cutoff, keeping the
    rows of the jobs that still exist; retried when its lock is not granted in time."""
    name = _partition_name(partition)
    result = PartitionReport(partition.name, partition.lower, _upper(partition))
    for attempt in range(1, attempts + 1):
        mark = _mark(out)
        try:
            with engine.begin() as conn:
                conn.execute(text(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}"))
                # No write to this month from here on; readers go on until the detach.
                conn.execute(text(f"LOCK TABLE {name} IN SHARE MODE"))
                rows, gone = conn.execute(
                    text(
                        "SELECT count(*), count(*) FILTER (WHERE NOT EXISTS "
                        f"(SELECT 1 FROM jobs j WHERE j.id = c.job_id)) FROM {name} c"
                    )
                ).one()
                result.rows = rows
                if rows and not gone:
                    result.kept = rows
                    result.left = "every row belongs to a job kept"
                    return result
                if out is not None and gone:
                    _export_partition(conn, name, out)
                result.kept = conn.execute(_DROP_PARTITION, {"name": name}).scalar_one()
                result.dropped = rows - result.kept
            return result
        except DBAPIError as exc:
            _rewind(out, mark)
            if getattr(exc.orig, "pgcode", None) != _LOCK_NOT_AVAILABLE:
                raise
            if attempt == attempts:
                result.left = (
                    f"its lock was not granted within {lock_timeout_ms} ms, "
                    f"{attempts} times: left for the next run"
                )
                result.dropped = result.kept = 0
                return result
            time.sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover


def _partition_name(partition: HistoryPartition) -> str:
    if not is_history_partition(partition.name) or partition.name == DEFAULT_PARTITION:
        raise ValueError(f"{partition.name!r} is not a month of the history")
    return partition.name


def _upper(partition: HistoryPartition) -> datetime:
    assert partition.upper is not None
    return partition.upper


def _mark(out: IO[bytes] | None) -> int | None:
    if out is None:
        return None
    out.flush()
    return out.tell()


def _rewind(out: IO[bytes] | None, mark: int | None) -> None:
    """Take back what an attempt that did not commit wrote to the export."""
    if out is not None and mark is not None:
        out.flush()
        out.truncate(mark)
        out.seek(mark)


def _add(report: CleanupReport, status: JobStatus, jobs: int, history: int, pubs: int) -> None:
    report.jobs += jobs
    report.history_rows += history
    report.publications += pubs
    report.by_status[status.label] = report.by_status.get(status.label, 0) + jobs


def _sync(out: IO[bytes]) -> None:
    out.flush()
    os.fsync(out.fileno())


def _export(conn: Connection, ids: list[int], boundary: datetime | None, out: IO[bytes]) -> None:
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
    queries = (("history", _export_history(boundary)), ("publications", _EXPORT_PUBLICATIONS))
    for key, query in queries:
        for row in conn.execute(query, {"ids": ids, "boundary": boundary}):
            jobs[row.job_id][key].append(row.row)
    for job_id in sorted(jobs):
        line = json.dumps(jobs[job_id], ensure_ascii=False, separators=(",", ":")) + "\n"
        out.write(line.encode("utf-8"))
    _sync(out)


def _export_partition(conn: Connection, name: str, out: IO[bytes]) -> None:
    """Append the partition's rows of jobs gone, one JSON line each, streamed by the server
    (COPY: bounded memory whatever the month's size), and force them to disk.

    CSV with a quote and a delimiter that JSON text never holds unescaped: each row goes
    out as it is, one line."""
    copy = (
        f"COPY (SELECT jsonb_build_object('partition', '{name}', 'history_row', to_jsonb(c))"
        f"::text FROM {name} c WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = c.job_id)) "
        "TO STDOUT WITH (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')"
    )
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.copy_expert(copy, out)
    finally:
        cursor.close()
    _sync(out)
