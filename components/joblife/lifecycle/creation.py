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

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, DefaultClause, TextClause, inspect, literal, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import instance_dict

from joblife.db.copy import copy_rows
from joblife.lifecycle.common import ServiceContext, for_each_job_type, job_logger, utc_now
from joblife.model import JobStatus, JobTemplate, Priority

log = job_logger("creation")

INSERT_BATCH = 20_000
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
            extra={"job_type": cls.JOB_NAME},
        )


def insert_jobs(
    session: Session,
    cls: type[JobTemplate],
    jobs: Sequence[JobTemplate],
    status: JobStatus,
    now: datetime | None = None,
) -> int:
    """Insert ``jobs`` of type ``cls`` in ``status`` (a creation status), skipping those whose
    natural key exists; return how many were inserted. Runs in the caller's transaction.

    The rows are ``COPY``-ed into temporary staging tables, then moved by one statement per
    batch: ``INSERT INTO jobs ... SELECT ... ON CONFLICT DO NOTHING RETURNING`` feeding the
    type's own table (the creation trigger writes the history rows of the whole batch)."""
    now = now or utc_now()
    child_columns = _own_columns(cls)
    _create_staging_tables(session, cls, child_columns)
    inserted = 0
    for start in range(0, len(jobs), INSERT_BATCH):
        batch = _unique_by_key(jobs[start : start + INSERT_BATCH])
        if not batch:
            continue
        session.execute(text(f"TRUNCATE {_STAGE_JOBS}, {_stage_child(cls)}"))
        copy_rows(session, _STAGE_JOBS, _PARENT_COLUMNS, _parent_rows(cls, batch))
        copy_rows(
            session,
            _stage_child(cls),
            [*_NATURAL_KEY[1:], *(column.name for _, column in child_columns)],
            _child_rows(batch, child_columns),
        )
        constants = {
            "job_type": cls.JOB_NAME,
            "status": int(status),
            "status_changed_at": now,
            "attempt": 0,
            "created_at": now,
        }
        moved = session.execute(text(_move_statement(cls, child_columns)), constants)
        inserted += moved.scalar_one()
    return inserted


# The jobs columns staged per job, in COPY order (input_product_id and
# reprocessing_context identify a job within its type: the type's rows carry them too);
# the others are the same for a whole batch and are bound once in the moving statement.
_PARENT_COLUMNS = (
    "unique_id",
    "name",
    "input_product_id",
    "tile_id",
    "input_path",
    "input_publication_date",
    "output_path",
    "output_publication_date",
    "priority",
    "reprocessing_context",
    "max_attempts",
    "worker_flavor",
)
_BATCH_CONSTANTS = ("job_type", "status", "status_changed_at", "attempt", "created_at")
_STAGE_JOBS = "joblife_stage_jobs"


def _stage_child(cls: type[JobTemplate]) -> str:
    return f"joblife_stage_{cls.__table__.name}"


def _create_staging_tables(
    session: Session, cls: type[JobTemplate], child_columns: list[tuple[str, Column[Any]]]
) -> None:
    """Temporary tables shaped like the real ones, dropped at the end of the transaction."""
    own = cls.__table__.name
    child_select = ", ".join(
        ["NULL::text AS input_product_id", "NULL::text AS reprocessing_context"]
        + [f"c.{column.name}" for _, column in child_columns]
    )
    for statement in (
        f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE_JOBS} ON COMMIT DROP AS "
        f"SELECT {', '.join(_PARENT_COLUMNS)} FROM jobs WITH NO DATA",
        f"CREATE TEMP TABLE IF NOT EXISTS {_stage_child(cls)} ON COMMIT DROP AS "
        f"SELECT {child_select} FROM {own} c WITH NO DATA",
    ):
        session.execute(text(statement))


def _move_statement(cls: type[JobTemplate], child_columns: list[tuple[str, Column[Any]]]) -> str:
    """One statement moving a staged batch into jobs and the type's table; returns the
    number of jobs inserted."""
    columns = ", ".join((*_PARENT_COLUMNS, *_BATCH_CONSTANTS))
    parent_values = (
        "COALESCE(unique_id, gen_random_uuid())" if column == "unique_id" else column
        for column in _PARENT_COLUMNS
    )
    values = ", ".join((*parent_values, *(f":{name}" for name in _BATCH_CONSTANTS)))
    own_columns = "".join(f", {column.name}" for _, column in child_columns)
    # A NULL staged for a column with a server default (unset, no Python default) takes
    # the server default, as it would in an INSERT that leaves the column out.
    staged = "".join(
        f", COALESCE(s.{column.name}, {_server_default_sql(column)})"
        if isinstance(column.server_default, DefaultClause)
        else f", s.{column.name}"
        for _, column in child_columns
    )
    # Every job has a row in its type's table, even a type with no column besides id.
    source = (
        f"inserted i JOIN {_stage_child(cls)} s ON s.input_product_id = i.input_product_id "
        "AND s.reprocessing_context = i.reprocessing_context"
        if child_columns
        else "inserted i"
    )
    children = (
        f", children AS (INSERT INTO {cls.__table__.name} (id{own_columns}) "
        f"SELECT i.id{staged} FROM {source} RETURNING 1)"
    )
    return f"""
        WITH inserted AS (
            INSERT INTO jobs ({columns}) SELECT {values} FROM {_STAGE_JOBS}
            ON CONFLICT ({", ".join(_NATURAL_KEY)}) DO NOTHING
            RETURNING id, input_product_id, reprocessing_context){children}
        SELECT count(*) FROM inserted"""


def _key(job: JobTemplate) -> tuple[str, str]:
    return (job.input_product_id, job.reprocessing_context or "")


def _unique_by_key(jobs: Sequence[JobTemplate]) -> list[JobTemplate]:
    """The jobs of a batch without repeated natural keys (the first one wins)."""
    seen: dict[tuple[str, str], JobTemplate] = {}
    for job in jobs:
        if not job.input_product_id:
            raise ValueError(f"{type(job).__name__}: a discovered job has no input_product_id")
        seen.setdefault(_key(job), job)
    return list(seen.values())


def _parent_rows(cls: type[JobTemplate], jobs: Iterable[JobTemplate]) -> Iterator[tuple[Any, ...]]:
    """The staged ``jobs`` rows, in ``_PARENT_COLUMNS`` order."""
    # instance_dict: the values set on a new (transient) object, read without going
    # through the attribute instrumentation once per column (a 100,000-job batch).
    flavor, max_attempts = cls.WORKER_FLAVOR_NAME, cls.MAX_ATTEMPTS
    for job in jobs:
        get = instance_dict(job).get
        yield (
            get("unique_id"),  # NULL: the database draws it (gen_random_uuid())
            get("name"),
            get("input_product_id"),
            get("tile_id"),
            get("input_path"),
            get("input_publication_date"),
            get("output_path"),
            get("output_publication_date"),
            int(get("priority") or Priority.NRT),
            get("reprocessing_context") or "",
            get("max_attempts") or max_attempts,
            get("worker_flavor") or flavor,
        )


def _child_rows(
    jobs: Iterable[JobTemplate], child_columns: list[tuple[str, Column[Any]]]
) -> Iterator[tuple[Any, ...]]:
    """The staged rows of the type's own table: the natural key, then its own columns.
    A column left unset takes its scalar Python-side default, as an ORM insert would;
    NULL otherwise (see ``_move_statement`` for server defaults)."""
    defaults = [(key, _scalar_default(column)) for key, column in child_columns]
    for job in jobs:
        values = instance_dict(job)
        yield (
            values.get("input_product_id"),
            values.get("reprocessing_context") or "",
            *(values.get(key, default) for key, default in defaults),
        )


def _server_default_sql(column: Column[Any]) -> str:
    arg = column.server_default.arg  # type: ignore[union-attr]
    if isinstance(arg, TextClause):
        return arg.text
    return str(
        literal(arg).compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    )


def _scalar_default(column: Column[Any]) -> Any:
    default = column.default
    return default.arg if default is not None and default.is_scalar else None


def _own_columns(cls: type[JobTemplate]) -> list[tuple[str, Column[Any]]]:
    """(attribute, column) of the type's own table, its id excepted."""
    own = cls.__table__
    return [
        (prop.key, prop.columns[0])
        for prop in inspect(cls).column_attrs
        if prop.columns[0].table is own and prop.key != "id"
    ]
