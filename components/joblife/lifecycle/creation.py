"""Creation: turn newly discovered input products into jobs.

Per registered job type: the discovery window starts at the cursor read from the database
(``get_last_inserted_job``: the newest job's input publication date, never an in-memory
value) and ends now; ``get_jobs_to_create(start, end)`` returns the products to create and
those to record as cancelled; ``job_pre_insertion_setup`` completes each; then the jobs are
inserted in batches with ``ON CONFLICT DO NOTHING`` on the natural key (the database trigger
writes their first history row in the same statement). A product discovered twice is
counted as already known, never an error.

A large discovery is inserted over ``creation_parallelism`` connections at once, each a
contiguous range of the products in input publication order in its own transaction; the
ranges are committed in that order and a failure stops the later ones, so the committed
jobs always end at a publication date and the cursor never passes a product that was not
committed. Creation of one type is serialised between replicas by a transaction-level
advisory lock (a replica that finds it taken skips the type for this cycle): two replicas
interleaving their ranges could otherwise wait on each other's uncommitted rows.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, DefaultClause, Engine, TextClause, inspect, literal, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import instance_dict

from joblife.db.copy import copy_columns
from joblife.lifecycle.common import ServiceContext, for_each_job_type, job_logger, utc_now
from joblife.model import JobStatus, JobTemplate, Priority

log = job_logger("creation")

INSERT_BATCH = 10_000
_NATURAL_KEY = ("job_type", "input_product_id", "reprocessing_context")
#: First key of pg_try_advisory_xact_lock(class, hashtext(job type)): creation of one type.
CREATION_LOCK_CLASS = 0x4A4C4352  # "JLCR"
#: How long a parallel range waits for a row lock before it gives up (a backstop: the
#: advisory lock keeps replicas apart, so only an outside writer of the same key waits).
RANGE_LOCK_TIMEOUT = "60s"
LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout


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
    #: Another replica was creating jobs of this type: skipped for this cycle.
    busy: bool = False
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
    locked = session.scalar(
        text("SELECT pg_try_advisory_xact_lock(:lock_class, hashtext(:job_type))"),
        {"lock_class": CREATION_LOCK_CLASS, "job_type": cls.JOB_NAME},
    )
    if not locked:
        report.busy = True
        log.info(
            "%s: another replica is creating jobs of this type; skipped",
            cls.JOB_NAME,
            extra={"job_type": cls.JOB_NAME},
        )
        return
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
    committed: Counter[JobStatus] = Counter()
    try:
        insert_discovered(
            context.engine,
            cls,
            found.to_create,
            found.to_cancel,
            now,
            context.settings.creation_parallelism,
            committed,
        )
    finally:
        report.inserted = committed[JobStatus.INITIALIZED]
        report.cancelled = committed[JobStatus.CANCELLED]
    report.already_known = report.discovered - report.inserted - report.cancelled
    if report.inserted or report.cancelled:
        log.info(
            "%s: %d discovered, %d created, %d cancelled, %d already known",
            cls.JOB_NAME,
            report.discovered,
            report.inserted,
            report.cancelled,
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
    natural key exists; return how many were inserted. Runs in the caller's transaction
    (see :func:`insert_discovered` for creation's parallel ranges)."""
    rows = _unique_by_key([(job, status) for job in jobs])
    return sum(_insert_range(session, cls, rows, now or utc_now()).values())


def insert_discovered(
    engine: Engine,
    cls: type[JobTemplate],
    to_create: Sequence[JobTemplate],
    to_cancel: Sequence[JobTemplate],
    now: datetime | None = None,
    parallelism: int = 1,
    committed: Counter[JobStatus] | None = None,
) -> Counter[JobStatus]:
    """Insert what a discovery found: ``to_create`` as initialized jobs, ``to_cancel`` as
    cancelled ones (a key in both: created), skipping known natural keys; return the jobs
    inserted by status.

    The jobs are ordered by input publication date and cut into at most ``parallelism``
    contiguous ranges (one per ``INSERT_BATCH`` jobs at most), never between two jobs of the
    same date; each range is inserted by its own connection and transaction, in parallel, and
    the ranges are committed in order. If a range fails, the ranges before it stay
    committed, the later ones are rolled back, and its error is raised; ``committed`` (when
    given) then holds what was committed."""
    now = now or utc_now()
    committed = Counter() if committed is None else committed
    rows = _unique_by_key(
        [
            *((job, JobStatus.INITIALIZED) for job in to_create),
            *((job, JobStatus.CANCELLED) for job in to_cancel),
        ]
    )
    if not rows:
        return committed
    rows.sort(key=_publication_order)
    ranges = _ranges(rows, parallelism)
    if len(ranges) == 1:  # no thread, no lock timeout: the common small discovery
        with Session(engine) as session:
            counts = _insert_range(session, cls, ranges[0], now)
            session.commit()
        committed.update(counts)
        return committed
    futures: list[Future[tuple[Session, Counter[JobStatus]]]] = []
    try:
        with ThreadPoolExecutor(len(ranges), thread_name_prefix="joblife-creation") as pool:
            futures = [pool.submit(_open_range, engine, cls, part, now) for part in ranges]
        _commit_in_order(cls.JOB_NAME, futures, committed)
    finally:  # also when interrupted: no range left open (closing rolls back)
        for future in futures:
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result()[0].close()
    return committed


def _open_range(
    engine: Engine,
    cls: type[JobTemplate],
    rows: Sequence[tuple[JobTemplate, JobStatus]],
    now: datetime,
) -> tuple[Session, Counter[JobStatus]]:
    """Insert one range in a new session, left uncommitted for :func:`_commit_in_order`."""
    session = Session(engine)
    try:
        session.execute(text(f"SET LOCAL lock_timeout = '{RANGE_LOCK_TIMEOUT}'"))
        return session, _insert_range(session, cls, rows, now)
    except BaseException as exc:
        session.close()  # rolls back
        if isinstance(exc, OperationalError) and (
            getattr(exc.orig, "pgcode", None) == LOCK_NOT_AVAILABLE
        ):
            # Not an outage (the caller would back off every service): a range of this type.
            raise RuntimeError(
                f"{cls.JOB_NAME}: a creation range waited more than {RANGE_LOCK_TIMEOUT} for "
                "a row lock (another transaction is inserting the same products)"
            ) from exc
        raise


def _commit_in_order(
    job_type: str,
    futures: Sequence[Future[tuple[Session, Counter[JobStatus]]]],
    committed: Counter[JobStatus],
) -> None:
    """Commit the ranges' transactions in publication order; at the first failure, roll
    back every later range and raise it (later failures are logged)."""
    error: BaseException | None = None
    for number, future in enumerate(futures, 1):
        failure = future.exception()
        if failure is not None:
            if error is None:
                error = failure
            else:
                log.warning("%s: creation range %d also failed: %s", job_type, number, failure)
            continue
        session, counts = future.result()
        with session:
            if error is not None:
                continue  # closing rolls back
            try:
                session.commit()
            except Exception as exc:
                error = exc
                continue
        committed.update(counts)
    if error is not None:
        log.warning(
            "%s: %d jobs committed before a creation range failed; the next cycle "
            "discovers the rest",
            job_type,
            sum(committed.values()),
            extra={"job_type": job_type},
        )
        raise error


def _ranges(
    rows: list[tuple[JobTemplate, JobStatus]], parallelism: int
) -> list[list[tuple[JobTemplate, JobStatus]]]:
    """``rows`` (in publication order) cut into at most ``parallelism`` contiguous ranges of
    about equal size, no more ranges than ``INSERT_BATCH`` rows allow; a cut never falls
    between two rows of the same input publication date (it moves later), so committing a
    prefix of the ranges never leaves a job of the last committed date behind."""
    count = max(1, min(parallelism, len(rows) // INSERT_BATCH))
    ranges, start = [], 0
    for index in range(1, count + 1):
        end = len(rows) if index == count else max(start, len(rows) * index // count)
        while 0 < end < len(rows) and _publication_order(rows[end]) == _publication_order(
            rows[end - 1]
        ):
            end += 1
        if end > start:
            ranges.append(rows[start:end])
            start = end
    return ranges or [rows]


def _publication_order(row: tuple[JobTemplate, JobStatus]) -> float:
    """Sort key: the input publication date (jobs without one first: they never move the
    discovery cursor)."""
    published = instance_dict(row[0]).get("input_publication_date")
    return published.timestamp() if published is not None else -math.inf


def _insert_range(
    session: Session,
    cls: type[JobTemplate],
    rows: Sequence[tuple[JobTemplate, JobStatus]],
    now: datetime,
) -> Counter[JobStatus]:
    """Insert ``rows`` (unique natural keys) in batches, in ``session``'s transaction; return
    the jobs inserted by status.

    The rows are ``COPY``-ed into temporary staging tables, then moved by one statement per
    batch: ``INSERT INTO jobs ... SELECT ... ON CONFLICT DO NOTHING RETURNING`` feeding the
    type's own table (the creation trigger writes the history rows of the whole batch)."""
    child_columns = _own_columns(cls)
    _create_staging_tables(session, cls, child_columns)
    constants = {
        "job_type": cls.JOB_NAME,
        "status_changed_at": now,
        "attempt": 0,
        "created_at": now,
    }
    moving = text(_move_statement(cls, child_columns))
    inserted: Counter[JobStatus] = Counter()
    for start in range(0, len(rows), INSERT_BATCH):
        batch = rows[start : start + INSERT_BATCH]
        session.execute(text(f"TRUNCATE {_STAGE_JOBS}, {_stage_child(cls)}"))
        # instance_dict: the values set on a new (transient) object, read without going
        # through the attribute instrumentation once per column.
        values = [instance_dict(job) for job, _ in batch]
        copy_columns(session, _STAGE_JOBS, _parent_columns(cls, batch, values))
        copy_columns(session, _stage_child(cls), _child_columns(values, child_columns))
        for status, count in session.execute(moving, constants):
            inserted[JobStatus(status)] += count
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
    "status",
)
_BATCH_CONSTANTS = ("job_type", "status_changed_at", "attempt", "created_at")
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
    number of jobs inserted per status."""
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
            RETURNING id, status, input_product_id, reprocessing_context){children}
        SELECT status, count(*) FROM inserted GROUP BY status"""


def _unique_by_key(
    rows: Iterable[tuple[JobTemplate, JobStatus]],
) -> list[tuple[JobTemplate, JobStatus]]:
    """``rows`` without repeated natural keys (the first one wins). A job without a product
    id, or whose input publication date is not a timezone-aware datetime, is refused: the
    creation ranges are cut and committed in publication order, which a naive date (read
    by the server in its own time zone) would not follow."""
    seen: dict[tuple[str, str], tuple[JobTemplate, JobStatus]] = {}
    for row in rows:
        # instance_dict: read without the attribute instrumentation (100,000-job batches).
        values = instance_dict(row[0])
        product = values.get("input_product_id")
        if not product:
            raise ValueError(f"{type(row[0]).__name__}: a discovered job has no input_product_id")
        published = values.get("input_publication_date")
        if published is not None and (
            not isinstance(published, datetime) or published.utcoffset() is None
        ):
            raise ValueError(
                f"{type(row[0]).__name__} {product}: input_publication_date must be a "
                f"timezone-aware datetime, not {published!r}"
            )
        seen.setdefault((product, values.get("reprocessing_context") or ""), row)
    return list(seen.values())


def _parent_columns(
    cls: type[JobTemplate],
    batch: Sequence[tuple[JobTemplate, JobStatus]],
    values: Sequence[dict[str, Any]],
) -> dict[str, list[Any]]:
    """The staged ``jobs`` columns (``_PARENT_COLUMNS``) of ``batch``, whose objects'
    values are ``values``."""

    def plain(key: str) -> list[Any]:
        return [job.get(key) for job in values]

    def or_default(key: str, default: Any) -> list[Any]:
        return [job.get(key) or default for job in values]

    columns = {
        "unique_id": plain("unique_id"),  # NULL: the database draws it (gen_random_uuid())
        "name": plain("name"),
        "input_product_id": plain("input_product_id"),
        "tile_id": plain("tile_id"),
        "input_path": plain("input_path"),
        "input_publication_date": plain("input_publication_date"),
        "output_path": plain("output_path"),
        "output_publication_date": plain("output_publication_date"),
        "priority": [int(job.get("priority") or Priority.NRT) for job in values],
        "reprocessing_context": or_default("reprocessing_context", ""),
        "max_attempts": or_default("max_attempts", cls.MAX_ATTEMPTS),
        "worker_flavor": or_default("worker_flavor", cls.WORKER_FLAVOR_NAME),
        "status": [int(status) for _, status in batch],
    }
    assert tuple(columns) == _PARENT_COLUMNS
    return columns


def _child_columns(
    values: Sequence[dict[str, Any]], child_columns: list[tuple[str, Column[Any]]]
) -> dict[str, list[Any]]:
    """The staged columns of the type's own table: the natural key, then its own columns.
    A column left unset takes its scalar Python-side default, as an ORM insert would;
    NULL otherwise (see ``_move_statement`` for server defaults)."""
    columns = {
        "input_product_id": [job.get("input_product_id") for job in values],
        "reprocessing_context": [job.get("reprocessing_context") or "" for job in values],
    }
    for key, column in child_columns:
        default = _scalar_default(column)
        columns[column.name] = [job.get(key, default) for job in values]
    return columns


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
