"""Creation: turn newly discovered input products into jobs.

Per registered job type: the discovery window ends now and starts, by the type's
``DISCOVERY_MODE`` (:mod:`joblife.lifecycle.discovery_modes`), at the cursor read from the
database (``get_last_inserted_job``: the newest job's input publication date, never an
in-memory value) less an overlap, or at the beginning of time (``listing_diff``);
``get_jobs_to_create(start, end)`` returns the products to create and those to record as
cancelled; the newest ones, still settling, are left for a later cycle;
``job_pre_insertion_setup`` completes each; the products whose natural key has a job are
skipped (a changed input may be reprocessed under a new reprocessing context); then the
jobs are inserted in batches (the database trigger writes their first history row in the
same statement). A product discovered twice is counted as already known, never an error,
and costs no job id nor any work: known natural keys are looked up (the unique index) and
left out before anything is staged, by :func:`insert_jobs` and :func:`insert_discovered`
too (``ON CONFLICT DO NOTHING`` stays for a concurrent writer of the same key). The counts
are logged per cycle and type, what was skipped and why per product at debug level.

A large discovery is inserted over ``creation_parallelism`` connections at once, each a
contiguous range of the products in input publication order in its own transaction; the
ranges are committed in that order and a failure stops the later ones, so the committed
jobs always end at a publication date and the cursor never passes a product that was not
committed. Creation of one type is serialised between replicas by a transaction-level
advisory lock (a replica that finds it taken skips the type for this cycle): two replicas
interleaving their ranges could otherwise wait on each other's uncommitted rows.

Products are untrusted (their names, their metadata): before anything is staged, each
discovered product is screened (:func:`screen_discovered`), for every job type alike. A
product with a value that cannot be stored (a NUL character, a name that is not valid
UTF-8: such names are not supported) is not created; a product whose ``input_path`` (or
``output_path``) is not a safe key (:func:`joblife.storage.keys.check_location`: ``..``,
empty segments, a leading ``/``, control characters) is created as a cancelled job whose
first history message says why. Either way it is one row of ``rejected_products``
(upserted at each rediscovery), logged and counted in
``joblife_rejected_products_total`` the first time only, and every other product is
created: one poison product never stops its type. Rejected products are not jobs, so
they never hold the discovery cursor back nor move it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import (
    Column,
    DefaultClause,
    Engine,
    TextClause,
    bindparam,
    inspect,
    literal,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import instance_dict
from sqlalchemy.types import Text

from joblife.db.copy import copy_columns
from joblife.db.text import NOT_UTF8_TEXT, storable_text, why_unstorable
from joblife.lifecycle.common import ServiceContext, for_each_job_type, job_logger, utc_now
from joblife.lifecycle.discovery_modes import (
    discovery_policy,
    hold_settling,
    known_keys,
    skip_known,
    summary,
    window_start,
)
from joblife.model import JobStatus, JobTemplate, Priority
from joblife.ops.metrics import record_rejected_product
from joblife.storage.keys import MAX_KEY_BYTES, UnsafeKey, check_location, escape

log = job_logger("creation")

INSERT_BATCH = 10_000
_NATURAL_KEY = ("job_type", "input_product_id", "reprocessing_context")
#: First key of pg_try_advisory_xact_lock(class, hashtext(job type)): creation of one type.
CREATION_LOCK_CLASS = 0x4A4C4352  # "JLCR"
#: How long a parallel range waits for a row lock before it gives up (a backstop: the
#: advisory lock keeps replicas apart, so only an outside writer of the same key waits).
RANGE_LOCK_TIMEOUT = "60s"
LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout
#: Reason classes of a refused product (the label of joblife_rejected_products_total).
UNSAFE_KEY, NUL, NOT_UTF8, TOO_LONG = "unsafe_key", "nul", "not_utf8", "too_long"
#: The natural key's texts (input_product_id, reprocessing_context) the unique index
#: takes: PostgreSQL refuses an index entry over 2,704 bytes, which would fail the whole
#: insert of a type's products, not this one's.
NATURAL_KEY_MAX_BYTES = MAX_KEY_BYTES
#: A known product whose input change could not be judged or given a storable context.
CHANGE_CHECK = "change_check"
#: The transaction-local setting through which the creation trigger gets per-job first
#: history messages (database/sql/v0012_rejected_products.sql).
CREATION_MESSAGES_SETTING = "joblife.creation_messages"
#: A refused product's escaped name longer than this is cut, and a digest of it appended.
REJECTED_NAME_MAX = 512
REJECTED_REASON_MAX_BYTES = 4096
#: Characters of an offending value quoted in a rejection's reason.
QUOTED_VALUE_MAX = 200
#: Columns whose values are storage keys from discovery (a folder if they end with '/').
KEY_COLUMNS = ("input_path", "output_path")


@dataclass
class CreationReport:
    """What one creation cycle did for one job type."""

    job_type: str
    #: The type's ``DISCOVERY_MODE``.
    mode: str | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None
    #: Every product the type's discovery returned (the settling ones included).
    discovered: int = 0
    inserted: int = 0
    already_known: int = 0
    cancelled: int = 0
    #: Products too recent to take (``DISCOVERY_SETTLE_SECONDS``): left for a later cycle.
    settling: int = 0
    #: Known products whose input changed, created again under a new reprocessing context
    #: (``REPROCESS_ON_CHANGE``; counted in ``inserted`` or ``cancelled`` too).
    reprocessed: int = 0
    #: Known products whose input changed, skipped (counted in ``already_known`` too).
    changed_not_reprocessed: int = 0
    #: Products refused (see rejected_products): not created, or created cancelled (an
    #: unsafe key: counted in ``cancelled`` too when inserted).
    rejected: int = 0
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
    policy = discovery_policy(cls, context.settings)
    report.mode = policy.mode
    cursor = cls.get_last_inserted_job(session)
    start = window_start(
        policy,
        cursor.input_publication_date if cursor is not None else None,
        now,
        context.settings.discovery_lookback_hours,
    )
    report.window_start, report.window_end = start, now
    found = cls.get_jobs_to_create(start, now)
    report.discovered = len(found.to_create) + len(found.to_cancel)
    report.settling = hold_settling(cls.JOB_NAME, found, now, policy.settle)
    for job in (*found.to_create, *found.to_cancel):
        job.job_pre_insertion_setup()
    screened = screen_discovered(cls, found.to_create, found.to_cancel)
    report.rejected = len(screened.rejected)
    record_rejections(context.engine, cls.JOB_NAME, screened.rejected, now)
    unknown = skip_known(
        session,
        cls,
        screened.to_create,
        screened.to_cancel,
        screened.messages,
        policy.reprocess_on_change,
    )
    if unknown.failed:  # each product alone, as screening's rejections
        failed = [_rejection(values, CHANGE_CHECK, why) for values, why in unknown.failed]
        report.rejected += len(failed)
        record_rejections(context.engine, cls.JOB_NAME, failed, now)
    report.reprocessed = unknown.reprocessed
    report.changed_not_reprocessed = unknown.changed_skipped
    committed: Counter[JobStatus] = Counter()
    try:
        insert_discovered(
            context.engine,
            cls,
            unknown.to_create,
            unknown.to_cancel,
            now,
            context.settings.creation_parallelism,
            committed,
            unknown.messages,
            known_skipped=True,
        )
    finally:
        report.inserted = committed[JobStatus.INITIALIZED]
        report.cancelled = committed[JobStatus.CANCELLED]
    # Refused without a job: screening's rejections but unsafe keys (created cancelled),
    # and the known products whose change could not be judged.
    not_created = sum(r.reason_class != UNSAFE_KEY for r in screened.rejected)
    not_created += len(unknown.failed)
    report.already_known = (
        report.discovered - report.settling - report.inserted - report.cancelled - not_created
    )
    line = summary(
        cls.JOB_NAME,
        report.discovered,
        report.inserted,
        report.already_known,
        report.settling,
        reprocessed=report.reprocessed,
        changed_skipped=report.changed_not_reprocessed,
        cancelled=report.cancelled,
        refused=report.rejected,
    )
    # At info level when the cycle did something for the type (or holds products back);
    # a cycle that only saw known products is a debug line, one that saw nothing none.
    if report.inserted or report.cancelled or report.settling:
        log.info("%s", line, extra={"job_type": cls.JOB_NAME})
    elif report.discovered:
        log.debug("%s", line, extra={"job_type": cls.JOB_NAME})


@dataclass(frozen=True)
class Rejection:
    """A discovered product that creation refused."""

    #: The product's id, escaped (and cut with a digest if very long): the row's key.
    name: str
    #: UNSAFE_KEY, NUL or NOT_UTF8.
    reason_class: str
    #: What was refused and why, offending values escaped.
    reason: str


@dataclass
class Screened:
    """A discovery after :func:`screen_discovered`."""

    to_create: list[JobTemplate] = field(default_factory=list)
    to_cancel: list[JobTemplate] = field(default_factory=list)
    #: First history message of a refused job created cancelled, by natural key
    #: (input_product_id, reprocessing_context).
    messages: dict[tuple[str, str], str] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)


def screen_discovered(
    cls: type[JobTemplate], to_create: Sequence[JobTemplate], to_cancel: Sequence[JobTemplate]
) -> Screened:
    """Sort a discovery's jobs (already completed by ``job_pre_insertion_setup``): a job
    with a value that cannot be stored (every text of its parent and type columns, at any
    depth of a JSON value) is left out; a job whose key columns (``KEY_COLUMNS``) are not
    safe keys is moved to ``to_cancel`` with a message; both are in ``rejected``."""
    screened = Screened()
    columns = [prop.key for prop in inspect(cls).column_attrs]
    examine = _may_hold_unstorable((*to_create, *to_cancel))
    for jobs, kept in ((to_create, screened.to_create), (to_cancel, screened.to_cancel)):
        for job in jobs:
            values = instance_dict(job)
            rejection = (
                (examine and _unstorable(values, columns))
                or _too_long_key(values)
                or _unsafe_key(values)
            )
            if rejection is None:
                kept.append(job)
                continue
            screened.rejected.append(rejection)
            if rejection.reason_class == UNSAFE_KEY:
                key = (values["input_product_id"], values.get("reprocessing_context") or "")
                screened.messages[key] = f"refused at creation: {rejection.reason}"
                screened.to_cancel.append(job)
    return screened


_TEXT_TYPES = (str, dict, list, tuple)


def _may_hold_unstorable(jobs: Iterable[JobTemplate]) -> bool:
    """Whether any of ``jobs`` may hold an unstorable value, in one scan of all their texts
    joined (a 100,000-job discovery: no regular expression per value); JSON values (dicts,
    lists) are examined one by one. A conservative filter: every value set on a job is
    looked at, mapped or not; :func:`_unstorable` then judges the columns only."""
    values = [
        value for job in jobs for value in instance_dict(job).values() if type(value) in _TEXT_TYPES
    ]
    texts = [value for value in values if type(value) is str]
    if why_unstorable("".join(texts)) is not None:
        return True
    return len(texts) < len(values) and any(
        why_unstorable(value) for value in values if type(value) is not str
    )


def _unstorable(values: Mapping[str, Any], columns: Sequence[str]) -> Rejection | None:
    for column in columns:
        value = values.get(column)
        problem = why_unstorable(value)
        if problem is not None:
            quoted = escape(value) if isinstance(value, str) else ascii(value)
            return _rejection(
                values,
                NOT_UTF8 if problem == NOT_UTF8_TEXT else NUL,
                f"{column} {_cut(quoted)} contains {problem}",
            )
    return None


def _too_long_key(values: Mapping[str, Any]) -> Rejection | None:
    for column in ("input_product_id", "reprocessing_context"):
        value = values.get(column)
        if isinstance(value, str) and len(value.encode("utf-8", "surrogatepass")) > (
            NATURAL_KEY_MAX_BYTES
        ):
            return _rejection(
                values, TOO_LONG, f"{column} is longer than {NATURAL_KEY_MAX_BYTES} bytes"
            )
    return None


def _unsafe_key(values: Mapping[str, Any]) -> Rejection | None:
    for column in KEY_COLUMNS:
        location = values.get(column)
        if not isinstance(location, str):
            continue
        try:
            check_location(location, prefix=location.endswith("/"))
        except UnsafeKey as exc:
            return _rejection(values, UNSAFE_KEY, f"{column}: {exc}")
    return None


def _rejection(values: Mapping[str, Any], reason_class: str, reason: str) -> Rejection:
    product = values.get("input_product_id")
    name = escape(product if isinstance(product, str) else str(product))
    if len(name) > REJECTED_NAME_MAX:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        name = f"{name[:REJECTED_NAME_MAX]}…#{digest}"
    return Rejection(name, reason_class, storable_text(reason, REJECTED_REASON_MAX_BYTES))


def _cut(quoted: str) -> str:
    return quoted if len(quoted) <= QUOTED_VALUE_MAX else quoted[:QUOTED_VALUE_MAX] + "…"


_RECORD_REJECTIONS = text(
    "SELECT name, first_time FROM record_rejected_products(:job_type, :names, :classes, "
    ":reasons, :seen_at)"
).bindparams(
    bindparam("names", type_=ARRAY(Text)),
    bindparam("classes", type_=ARRAY(Text)),
    bindparam("reasons", type_=ARRAY(Text)),
)


def record_rejections(
    engine: Engine, job_type: str, rejections: Sequence[Rejection], now: datetime
) -> list[Rejection]:
    """Upsert ``rejections`` into ``rejected_products`` (one row per product: a product
    rediscovered at every cycle stays one row); log and count those seen for the first
    time, and return them."""
    unique: dict[str, Rejection] = {}
    for rejection in rejections:
        unique.setdefault(rejection.name, rejection)
    if not unique:
        return []
    with Session(engine) as session:
        rows = session.execute(
            _RECORD_REJECTIONS,
            {
                "job_type": job_type,
                "names": list(unique),
                "classes": [r.reason_class for r in unique.values()],
                "reasons": [r.reason for r in unique.values()],
                "seen_at": now,
            },
        ).all()
        session.commit()
    new = [unique[row.name] for row in rows if row.first_time]
    for rejection in new:
        log.warning(
            "%s: product %s refused (%s): %s",
            job_type,
            rejection.name,
            rejection.reason_class,
            rejection.reason,
            extra={"job_type": job_type},
        )
        record_rejected_product(job_type, rejection.reason_class)
    return new


def insert_jobs(
    session: Session,
    cls: type[JobTemplate],
    jobs: Sequence[JobTemplate],
    status: JobStatus,
    now: datetime | None = None,
) -> int:
    """Insert ``jobs`` of type ``cls`` in ``status`` (a creation status), skipping those whose
    natural key exists (they draw no job id); return how many were inserted. Runs in the
    caller's transaction (see :func:`insert_discovered` for creation's parallel ranges)."""
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
    messages: Mapping[tuple[str, str], str] | None = None,
    *,
    known_skipped: bool = False,
) -> Counter[JobStatus]:
    """Insert what a discovery found: ``to_create`` as initialized jobs, ``to_cancel`` as
    cancelled ones (a key in both: created), skipping known natural keys (looked up by every
    range before any range inserts, unless ``known_skipped`` says the caller just did: they
    draw no job id); return the jobs inserted by status. ``messages``: the first history message of
    cancelled jobs, by natural key (input_product_id, reprocessing_context); the others say
    ``created``.

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
            counts = _insert_range(session, cls, ranges[0], now, messages, not known_skipped)
            session.commit()
        committed.update(counts)
        return committed
    futures: list[Future[tuple[Session, Counter[JobStatus]]]] = []
    try:
        with ThreadPoolExecutor(len(ranges), thread_name_prefix="joblife-creation") as pool:
            if not known_skipped:
                # Every range's lookup ends before any range inserts: a lookup running while
                # another range inserts may scan, once per product, a table that was empty
                # when the lookup was planned.
                ranges = list(pool.map(partial(_without_known_in, engine, cls), ranges))
            extra = {"messages": messages} if messages else {}  # most discoveries: none
            futures = [pool.submit(_open_range, engine, cls, part, now, **extra) for part in ranges]
        _commit_in_order(cls.JOB_NAME, futures, committed)
    finally:  # also when interrupted: no range left open (closing rolls back)
        for future in futures:
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result()[0].close()
    return committed


def _without_known(
    session: Session, cls: type[JobTemplate], rows: Sequence[tuple[JobTemplate, JobStatus]]
) -> Sequence[tuple[JobTemplate, JobStatus]]:
    """``rows`` (unique natural keys) without those whose natural key has a job, looked up
    by probing the unique index once per product (:func:`known_keys`) before anything is
    staged. Left to ``ON CONFLICT``, each would draw a job id (the column default is
    evaluated before the conflict is found). An anti-join inside the insert statement is
    at the planner's mercy: planned on a table that looks empty (a first creation), it
    scans the rows the statement itself inserts once per staged row (quadratic), and on
    stale statistics it hashes every job of the type per batch."""
    if not rows:
        return rows
    products = [instance_dict(job)["input_product_id"] for job, _ in rows]
    known = known_keys(session, cls.JOB_NAME or "", products)
    if not known:
        return rows
    return [
        row
        for row, product in zip(rows, products, strict=True)
        if (product, instance_dict(row[0]).get("reprocessing_context") or "") not in known
    ]


def _without_known_in(
    engine: Engine, cls: type[JobTemplate], rows: Sequence[tuple[JobTemplate, JobStatus]]
) -> Sequence[tuple[JobTemplate, JobStatus]]:
    """:func:`_without_known` in a session of its own."""
    with Session(engine) as session:
        return _without_known(session, cls, rows)


def _open_range(
    engine: Engine,
    cls: type[JobTemplate],
    rows: Sequence[tuple[JobTemplate, JobStatus]],
    now: datetime,
    messages: Mapping[tuple[str, str], str] | None = None,
) -> tuple[Session, Counter[JobStatus]]:
    """Insert one range (its known keys left out already) in a new session, left
    uncommitted for :func:`_commit_in_order`."""
    session = Session(engine)
    try:
        session.execute(text(f"SET LOCAL lock_timeout = '{RANGE_LOCK_TIMEOUT}'"))
        return session, _insert_range(session, cls, rows, now, messages, False)
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
    messages: Mapping[tuple[str, str], str] | None = None,
    look_up_known: bool = True,
) -> Counter[JobStatus]:
    """Insert ``rows`` (unique natural keys) in batches, in ``session``'s transaction; return
    the jobs inserted by status.

    Known natural keys are left out first (:func:`_without_known`; ``look_up_known`` False:
    the caller just did). The rows are ``COPY``-ed into temporary staging tables, then moved
    by one statement per batch: ``INSERT INTO jobs ... SELECT ... ON CONFLICT DO NOTHING
    RETURNING`` (the conflict: a concurrent writer of the same key) feeding the type's own
    table (the creation trigger writes the history rows of the whole batch, with the
    batch's cancelled jobs' ``messages`` when there are some)."""
    if look_up_known:
        rows = _without_known(session, cls, rows)
    if not rows:
        return Counter()
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
        if messages:
            _set_creation_messages(session, _batch_messages(batch, values, messages))
        for status, count in session.execute(moving, constants):
            inserted[JobStatus(status)] += count
    if messages:
        _set_creation_messages(session, {})
    return inserted


def _batch_messages(
    batch: Sequence[tuple[JobTemplate, JobStatus]],
    values: Sequence[dict[str, Any]],
    messages: Mapping[tuple[str, str], str],
) -> dict[str, dict[str, str]]:
    """The messages of the batch's cancelled jobs, as the creation trigger reads them:
    ``{input_product_id: {reprocessing_context: message}}``."""
    found: dict[str, dict[str, str]] = {}
    for (_, status), job in zip(batch, values, strict=True):
        if status is not JobStatus.CANCELLED:
            continue
        product, context = job["input_product_id"], job.get("reprocessing_context") or ""
        message = messages.get((product, context))
        if message is not None:
            found.setdefault(product, {})[context] = message
    return found


def _set_creation_messages(session: Session, messages: dict[str, dict[str, str]]) -> None:
    """Set (or clear, when empty) the creation trigger's messages for the transaction."""
    session.execute(
        text("SELECT set_config(:name, :value, true)"),
        {"name": CREATION_MESSAGES_SETTING, "value": json.dumps(messages) if messages else ""},
    )


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
    "input_listing",
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
        "input_listing": plain("input_listing"),  # NULL but for multi-object inputs
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
