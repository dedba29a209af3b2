"""The reads behind the dashboard's Jobs page (a filtered, sorted list of jobs, page after
page, and the ids of every job a filter matches, for bulk actions) and Job page (everything
about one job).

Every read is bounded, whatever the size of ``jobs`` and of the history:

- A page starts where the previous one ended: its cursor holds the sort key and the id of
  the last job shown, and the next page reads the index from there (no OFFSET: page 1,000
  costs what page 1 costs). The status-change orders read one range of
  ``ix_jobs_type_status_changed`` per (job type, status) that has jobs (the maintained
  counts say which), merged in order; the id orders read those ranges whole and sort them
  when they hold few jobs (:data:`ID_INDEX_READ`), else the primary key.
- The filters no index serves (priority, error text; in the id orders read from the
  primary key, every filter) are applied to at most :data:`SCAN_LIMIT` jobs per page,
  taken in the page's order from its cursor. When those run out before the page is full,
  the page is short, :attr:`JobPage.truncated_search` says so, and
  :attr:`JobPage.next_cursor` continues after the last job examined: paging on searches
  the rest, a bounded slice at a time.
- A product filter first reads the jobs whose input product or tile matches, at most
  :data:`PRODUCT_CANDIDATES` of them (an index read with the product indexes: see
  :func:`search_jobs`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.types import BigInteger

from joblife.cli.parsing import page_key, parse_statuses
from joblife.cli.queries import get_job, get_type_fields, status_history
from joblife.config import Settings
from joblife.db.counts import job_counts
from joblife.executors.local import REFERENCE_PREFIX as LOCAL_REFERENCE_PREFIX
from joblife.lifecycle.common import utc_now
from joblife.model.priority import Priority
from joblife.model.registry import JobTypeError, load_job_types
from joblife.model.status import IN_FLIGHT_STATUSES, JobStatus
from joblife.publication.outbox import list_publications

S = JobStatus

#: The orders a page can be sorted in (query value: description), each read from an index.
SORTS: dict[str, str] = {
    "changed_desc": "latest status change first",
    "changed_asc": "oldest status change first",
    "id_desc": "newest job first",
    "id_asc": "oldest job first",
}
DEFAULT_SORT = "changed_desc"
#: Jobs a page examines at most for the filters no index serves (priority, error text; in
#: the id orders read from the primary key, every filter).
SCAN_LIMIT = 10_000
#: The same for :func:`matching_ids` and :func:`count_matching`.
MATCH_SCAN_LIMIT = 50_000
#: In the id orders, the most jobs a type and status filter may match to be read through
#: the type-status index and sorted (more: the primary key is read instead).
ID_INDEX_READ = 20_000
#: Jobs a product filter reads at most from the product indexes.
PRODUCT_CANDIDATES = 10_000
#: The largest page.
MAX_PAGE = 500
#: The statuses whose jobs the error text is searched in: the message searched is the one
#: of the job's last change into internal_error or external_error.
ERROR_TEXT_STATUSES: tuple[JobStatus, ...] = (S.INTERNAL_ERROR, S.EXTERNAL_ERROR, S.ERROR_CHECKED)
#: The longest product or error text a filter takes.
MAX_TEXT = 200
#: Outbox rows the Job page shows at most (newest first).
PUBLICATIONS_SHOWN = 200

#: Query-string key of each filter field (``to_query`` writes them in this order).
QUERY_KEYS = {
    "job_type": "type",
    "statuses": "status",
    "priority": "priority",
    "changed_from": "changed_from",
    "changed_to": "changed_to",
    "product": "product",
    "error_text": "error",
    "sort": "sort",
}
#: A product filter ending with this matches by prefix.
PREFIX_MARK = "*"

_JOB_TYPE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")  # the registry's JOB_NAME rule
_ERRORS = ", ".join(str(int(s)) for s in (S.INTERNAL_ERROR, S.EXTERNAL_ERROR))
_IDS = ARRAY(BigInteger)


# -- the filter -----------------------------------------------------------------------------


@dataclass(frozen=True)
class JobFilter:
    """What the Jobs page shows: every given field narrows it. Frozen and hashable (a
    cache key); construction validates (ValueError)."""

    job_type: str | None = None
    #: Any of these statuses (empty: any status), in status-id order, without duplicates.
    statuses: tuple[JobStatus, ...] = ()
    priority: Priority | None = None
    #: ``changed_from <= status_changed_at < changed_to`` (timezone-aware).
    changed_from: datetime | None = None
    changed_to: datetime | None = None
    #: The input product id or the tile id: equal to it, or starting with it when
    #: ``product_prefix``.
    product: str | None = None
    product_prefix: bool = False
    #: In the message of the job's last change into internal_error / external_error
    #: (case-insensitive); only jobs now in :data:`ERROR_TEXT_STATUSES` match.
    error_text: str | None = None
    #: A key of :data:`SORTS`.
    sort: str = DEFAULT_SORT

    def __post_init__(self) -> None:
        if self.job_type is not None and not _JOB_TYPE.match(self.job_type):
            raise ValueError(f"invalid job type {self.job_type!r} (a lower-case identifier)")
        statuses = tuple(sorted({JobStatus.parse(s) for s in self.statuses}))
        object.__setattr__(self, "statuses", statuses)
        if self.priority is not None:
            object.__setattr__(self, "priority", _parse_priority(self.priority))
        for name in ("changed_from", "changed_to"):
            moment = getattr(self, name)
            if moment is not None and moment.tzinfo is None:
                raise ValueError(f"{name} must be timezone-aware")
        if self.changed_from and self.changed_to and self.changed_from >= self.changed_to:
            raise ValueError("changed_from must be before changed_to")
        for name in ("product", "error_text"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ValueError(f"{name} is empty")
            if value is not None and len(value) > MAX_TEXT:
                raise ValueError(f"{name} is longer than {MAX_TEXT} characters")
        if self.product_prefix and self.product is None:
            raise ValueError("product_prefix without a product")
        if self.sort not in SORTS:
            raise ValueError(f"unknown sort {self.sort!r} (known: {', '.join(SORTS)})")

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> JobFilter:
        """The filter of a query string (keys: :data:`QUERY_KEYS`; other keys ignored, an
        empty value is no filter). ``status``: names, comma-separated (or repeated, with a
        multi-dict such as Starlette's ``QueryParams``); ``priority``: 1-3 or nrt /
        delayed / reprocessing; ``changed_from`` / ``changed_to``: ISO 8601 dates or
        date-times, UTC when without offset; ``product``: ``ABC`` (equal) or ``ABC*``
        (prefix). ValueError with a message naming the key for a bad value."""

        keys = QUERY_KEYS

        def value(field_name: str) -> str | None:
            raw = params.get(keys[field_name])
            return (raw.strip() or None) if raw is not None else None

        getlist = getattr(params, "getlist", None)
        status_key = keys["statuses"]
        status_values = getlist(status_key) if getlist else [params.get(status_key) or ""]
        product = value("product")
        prefix = product is not None and product.endswith(PREFIX_MARK)
        if product is not None and prefix:
            product = product[: -len(PREFIX_MARK)]
            if not product:
                raise ValueError(f"product: give at least one character before {PREFIX_MARK}")
        priority = value("priority")
        return cls(
            job_type=value("job_type"),
            statuses=_parse_status_values(status_values),
            priority=_parse_priority(priority) if priority is not None else None,
            changed_from=_parse_time("changed_from", value("changed_from")),
            changed_to=_parse_time("changed_to", value("changed_to")),
            product=product,
            product_prefix=prefix,
            error_text=value("error_text"),
            sort=value("sort") or DEFAULT_SORT,
        )

    def to_query(self) -> dict[str, str]:
        """The query-string parameters of this filter, only the fields that are set (the
        sort when not the default), in :data:`QUERY_KEYS` order: the same filter always
        gives the same URL, and ``from_query(f.to_query()) == f``."""
        values: dict[str, str | None] = {
            "job_type": self.job_type,
            "statuses": ",".join(s.label for s in self.statuses) or None,
            "priority": self.priority.label if self.priority is not None else None,
            "changed_from": _format_time(self.changed_from) if self.changed_from else None,
            "changed_to": _format_time(self.changed_to) if self.changed_to else None,
            "product": (
                self.product + (PREFIX_MARK if self.product_prefix else "")
                if self.product is not None
                else None
            ),
            "error_text": self.error_text,
            "sort": self.sort if self.sort != DEFAULT_SORT else None,
        }
        return {QUERY_KEYS[name]: v for name, v in values.items() if v is not None}


def _parse_status_values(values: Sequence[str]) -> tuple[JobStatus, ...]:
    try:
        return tuple(parse_statuses(values))
    except ValueError as error:
        raise ValueError(f"status: {error}") from None


def _parse_priority(value: Priority | int | str) -> Priority:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and value not in {int(p) for p in Priority}:
        raise ValueError(f"invalid priority {value!r} (1-3, or nrt, delayed, reprocessing)")
    return Priority.parse(value)


def _parse_time(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"invalid {name} {value!r}: give an ISO 8601 date or date-time (2026-11-01, "
            "2026-11-01T08:00, 2026-11-01T08:00+01:00; UTC when without offset)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- the cursor -----------------------------------------------------------------------------


def _encode_cursor(sort: str, row: Mapping[str, Any]) -> str:
    key: list[Any] = [sort, row["id"]]
    if sort.startswith("changed"):
        key.append(row["status_changed_at"].astimezone(UTC).isoformat())
    raw = json.dumps(key, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str) -> dict[str, Any]:
    """The position a cursor of :func:`search_jobs` holds (``after_id``, and
    ``after_time`` for the status-change orders). ValueError if it is not a cursor of
    this sort order."""
    problem = f"invalid cursor {cursor[:40]!r}: not a page cursor of this list"
    if len(cursor) > 200:
        raise ValueError(problem)
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        key = json.loads(raw)
    except (binascii.Error, ValueError):
        raise ValueError(problem) from None
    if not isinstance(key, list) or not key or key[0] not in SORTS:
        raise ValueError(problem)
    if key[0] != sort:
        raise ValueError(f"the cursor is of the order {key[0]!r}, not {sort!r}: start again")
    changed = sort.startswith("changed")
    if len(key) != (3 if changed else 2) or type(key[1]) is not int or key[1] < 0:
        raise ValueError(problem)
    try:  # a position the database takes (the CLI's --before check)
        key_ = page_key(key[1], datetime.fromisoformat(key[2]) if changed else None)
    except (TypeError, ValueError):
        raise ValueError(problem) from None
    position: dict[str, Any] = {"after_id": key_.job_id}
    if changed:
        position["after_time"] = key_.status_changed_at
    return position


# -- the Jobs page --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobRow:
    """One line of the Jobs page."""

    id: int
    job_type: str
    status: JobStatus
    priority: Priority
    input_product_id: str
    tile_id: str | None
    attempt: int
    max_attempts: int
    status_changed_at: datetime
    created_at: datetime
    #: The message of the job's last status change.
    message: str | None


@dataclass
class JobPage:
    """A page of the Jobs page's list."""

    rows: list[JobRow]
    #: The cursor of the next page (``after=``); None at the end of the list.
    next_cursor: str | None
    #: True if the page may miss matching jobs or is short before the end: a filter no
    #: index serves examined :data:`SCAN_LIMIT` jobs from the cursor without filling the
    #: page (``next_cursor`` continues after them), or more than
    #: :data:`PRODUCT_CANDIDATES` jobs match the product filter (only that many are
    #: listed: narrow the product).
    truncated_search: bool = False
    #: Which bound truncated it: ``"scan"`` or ``"product"`` (None if not truncated).
    truncated_by: str | None = None


_ROW = (
    "j.id, j.job_type, j.status, j.priority, j.input_product_id, j.tile_id, j.attempt, "
    "j.max_attempts, j.status_changed_at, j.created_at"
)


@dataclass
class _Plan:
    """One read of the list: the SQL pieces and their parameters."""

    flt: JobFilter
    params: dict[str, Any] = field(default_factory=dict)
    #: The scan: the jobs in the page's order from the cursor, narrowed by what the
    #: indexes serve; ``LIMIT :scan``.
    scan: str = ""
    #: Filters applied to the scanned rows (alias ``c``), with their joins.
    joins: str = ""
    residual: list[str] = field(default_factory=list)
    #: The product filter's candidate ids, and whether there were more.
    candidates: list[int] | None = None
    candidates_truncated: bool = False
    empty: bool = False


def _order(sort: str, alias: str) -> str:
    direction = " DESC" if sort.endswith("_desc") else ""
    if sort.startswith("changed"):
        return f"{alias}.status_changed_at{direction}, {alias}.id{direction}"
    return f"{alias}.id{direction}"


def _after(sort: str) -> str:
    op = "<" if sort.endswith("_desc") else ">"
    if sort.startswith("changed"):
        return f"(j.status_changed_at, j.id) {op} (:after_time, :after_id)"
    return f"j.id {op} :after_id"


def _statuses(flt: JobFilter) -> list[JobStatus]:
    """The statuses a job may be in to match (all when the filter names none)."""
    statuses = list(flt.statuses or JobStatus)
    if flt.error_text is not None:
        statuses = [s for s in statuses if s in ERROR_TEXT_STATUSES]
    return statuses


def _product_candidates(session: Session, flt: JobFilter, cap: int) -> tuple[list[int], bool]:
    """Ids of the jobs whose input product id or tile id matches (of the filter's type), at
    most ``cap``; True if there are more."""
    params: dict[str, Any] = {"cap": cap + 1}
    if flt.product_prefix:
        params["product"] = _like_prefix(flt.product or "")
        match = "(j.input_product_id LIKE :product OR j.tile_id LIKE :product)"
    else:
        params["product"] = flt.product
        match = "(j.input_product_id = :product OR j.tile_id = :product)"
    if flt.job_type is not None:
        match += " AND j.job_type = :job_type"
        params["job_type"] = flt.job_type
    ids = list(session.scalars(text(f"SELECT j.id FROM jobs j WHERE {match} LIMIT :cap"), params))
    return ids[:cap], len(ids) > cap


def _like_prefix(prefix: str) -> str:
    """A LIKE pattern (backslash escapes) of the strings starting with ``prefix``."""
    return re.sub(r"([\\%_])", r"\\\1", prefix) + "%"


def _plan(session: Session, flt: JobFilter, after: str | None, product_cap: int) -> _Plan:
    """How to read the list: one of three scans, each narrowed by what its index serves,
    the other filters left to the scanned rows (``plan.residual``, ``plan.joins``).

    - product filter: the candidates (at most ``product_cap``), every filter applied;
    - status-change orders: one ordered range per (type, status) with jobs, merged (the
      first keys of each; or, to examine up to a scan bound, a Merge Append);
    - id orders: the (type, status) ranges read whole and sorted, when they hold at most
      :data:`ID_INDEX_READ` jobs; else the primary key from the cursor, every filter
      applied to the rows read (a filter matching few of many jobs would otherwise make
      it read without bound)."""
    plan = _Plan(flt)
    params = plan.params
    conditions: list[str] = []  # what every scanned job satisfies (alias j)
    if after is not None:
        params.update(decode_cursor(after, flt.sort))
        conditions.append(_after(flt.sort))
    window = []  # the status-change window, an index range but in the primary key
    if flt.changed_from is not None:
        window.append("{0}.status_changed_at >= :changed_from")
        params["changed_from"] = flt.changed_from
    if flt.changed_to is not None:
        window.append("{0}.status_changed_at < :changed_to")
        params["changed_to"] = flt.changed_to
    if flt.priority is not None:
        plan.residual.append("c.priority = :priority")
        params["priority"] = int(flt.priority)
    if flt.error_text is not None:
        # The last change into an error status: at the job's status change for a job in
        # one (the time bounds let the history's partitions be pruned), before it for an
        # acknowledged one.
        plan.joins = f"""
            JOIN LATERAL (
                SELECT h.message FROM job_status_changes h
                 WHERE h.job_id = c.id AND h.status IN ({_ERRORS})
                   AND h.time <= c.status_changed_at
                   AND h.time >= CASE WHEN c.status = {int(S.ERROR_CHECKED)}
                                      THEN '-infinity' ELSE c.status_changed_at END
                 ORDER BY h.id DESC LIMIT 1) AS e
              ON strpos(lower(e.message), lower(:error_text)) > 0"""
        params["error_text"] = flt.error_text
    statuses = _statuses(flt)
    narrowed = flt.job_type is not None or len(statuses) < len(JobStatus)
    order = _order(flt.sort, "j")
    if not statuses:
        plan.empty = True
        return plan
    if flt.product is not None:
        ids, plan.candidates_truncated = _product_candidates(session, flt, product_cap)
        plan.candidates = ids
        if not ids:
            plan.empty = True
            return plan
        params["ids"] = ids
        conditions += ["j.id = ANY (:ids)", *(w.format("j") for w in window)]
        conditions += _type_and_statuses(flt, statuses, "j", params)
        plan.scan = (
            f"SELECT {_ROW} FROM jobs j WHERE {' AND '.join(conditions)} "
            f"ORDER BY {order} LIMIT :scan"
        )
        return plan
    wanted = set(statuses)
    counts = {
        pair: jobs
        for pair, jobs in job_counts(session).items()
        if pair[1] in wanted and flt.job_type in (None, pair[0])
    }
    if not counts:
        plan.empty = True
        return plan
    if flt.sort.startswith("changed") and not (plan.residual or plan.joins):
        # The page's rows are the first of the pairs' first rows: a short range of each,
        # merged (`jobs list`'s read). Cheaper to plan than the union below: 160 pairs
        # take it 40 ms.
        extra = "".join(f" AND {c}" for c in [*conditions, *(w.format("j") for w in window)])
        pairs = sorted(counts)
        params["pair_types"] = [job_type for job_type, _ in pairs]
        params["pair_statuses"] = [int(status) for _, status in pairs]
        # Keys only (an index-only read), the rows of the page's jobs only.
        plan.scan = f"""
            SELECT {_ROW} FROM (
                SELECT r.* FROM unnest(CAST(:pair_types AS text[]),
                                       CAST(:pair_statuses AS smallint[])) AS k(job_type, status)
                 CROSS JOIN LATERAL (
                     SELECT j.id, j.status_changed_at FROM jobs j
                      WHERE j.job_type = k.job_type AND j.status = k.status{extra}
                      ORDER BY {order} LIMIT :scan) AS r
                 ORDER BY {_order(flt.sort, "r")} LIMIT :scan) AS r
              JOIN jobs j ON j.id = r.id"""
    elif flt.sort.startswith("changed"):
        # Each branch ordered and limited: without it PostgreSQL appends and sorts them all
        # (it keeps no branch's index scan: an ordered scan of a whole range costs more).
        # The Merge Append above them then stops once the jobs to examine are read.
        branches = _branches(counts, [*conditions, *(w.format("j") for w in window)], params)
        union = "\n UNION ALL ".join(f"({b} ORDER BY {order} LIMIT :scan)" for b in branches)
        plan.scan = f"SELECT * FROM ({union}) j ORDER BY {order} LIMIT :scan"
    elif narrowed and sum(counts.values()) <= ID_INDEX_READ:
        # Materialized: otherwise the planner may read the primary key in order instead,
        # filtering out millions of rows to find a rare status.
        branches = _branches(counts, [*conditions, *(w.format("j") for w in window)], params)
        union = "\n UNION ALL ".join(branches)
        plan.scan = (
            f"WITH m AS MATERIALIZED ({union}) SELECT * FROM m j ORDER BY {order} LIMIT :scan"
        )
    else:
        plan.residual += [w.format("c") for w in window]
        plan.residual += _type_and_statuses(flt, statuses, "c", params)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        plan.scan = f"SELECT {_ROW} FROM jobs j{where} ORDER BY {order} LIMIT :scan"
    return plan


def _type_and_statuses(
    flt: JobFilter, statuses: Sequence[JobStatus], alias: str, params: dict[str, Any]
) -> list[str]:
    conditions = []
    if flt.job_type is not None:
        conditions.append(f"{alias}.job_type = :job_type")
        params["job_type"] = flt.job_type
    if len(statuses) < len(JobStatus):
        conditions.append(f"{alias}.status IN ({', '.join(str(int(s)) for s in statuses)})")
    return conditions


def _branches(
    counts: Mapping[tuple[str, JobStatus], int], conditions: list[str], params: dict[str, Any]
) -> list[str]:
    """One SELECT of the jobs of each (type, status) of ``counts`` (an index range)."""
    pairs = sorted(counts)
    types = {job_type: f"t{i}" for i, job_type in enumerate(sorted({t for t, _ in pairs}))}
    params.update({name: job_type for job_type, name in types.items()})
    extra = "".join(f" AND {c}" for c in conditions)
    return [
        f"SELECT {_ROW} FROM jobs j "
        f"WHERE j.job_type = :{types[job_type]} AND j.status = {int(status)}{extra}"
        for job_type, status in pairs
    ]


def _matching(plan: _Plan, limit: int, scan_limit: int) -> tuple[str, dict[str, Any]]:
    """The statement of the matching rows (alias ``c``), in order, at most ``limit``."""
    params = dict(plan.params, limit=limit)
    if plan.candidates is not None:
        params["scan"] = len(plan.candidates)
    else:
        params["scan"] = scan_limit if plan.residual or plan.joins else limit
    where = f" WHERE {' AND '.join(plan.residual)}" if plan.residual else ""
    sql = (
        f"SELECT c.* FROM ({plan.scan}) c {plan.joins}{where} "
        f"ORDER BY {_order(plan.flt.sort, 'c')} LIMIT :limit"
    )
    return sql, params


def _statement(sql: str, params: Mapping[str, Any]) -> Any:
    statement = text(sql)
    if "ids" in params:
        statement = statement.bindparams(bindparam("ids", type_=_IDS))
    return statement


def _last_examined(session: Session, plan: _Plan, scan_limit: int) -> dict[str, Any] | None:
    """The last job the scan examined if it examined ``scan_limit`` (the bound was hit),
    else None (it reached the end of the list)."""
    if plan.candidates is not None or not (plan.residual or plan.joins):
        return None
    params = dict(plan.params, scan=scan_limit, skip=scan_limit - 1)
    sql = (
        f"SELECT c.id, c.status_changed_at FROM ({plan.scan}) c "
        f"ORDER BY {_order(plan.flt.sort, 'c')} OFFSET :skip LIMIT 1"
    )
    row = session.execute(_statement(sql, params), params).first()
    return dict(row._mapping) if row is not None else None


_PAGE = """
    SELECT p.*, m.message FROM ({matching}) p
      LEFT JOIN LATERAL (
          SELECT h.message FROM job_status_changes h
           WHERE h.job_id = p.id AND h.time >= p.status_changed_at
           ORDER BY h.id DESC LIMIT 1) AS m ON true
     ORDER BY {order}
"""


def search_jobs(
    session: Session,
    flt: JobFilter,
    *,
    after: str | None = None,
    limit: int = 50,
    scan_limit: int = SCAN_LIMIT,
) -> JobPage:
    """A page of the jobs ``flt`` matches, in its order, starting after the cursor
    ``after`` (the ``next_cursor`` of the previous page; None: the first page). ValueError
    for a cursor that is not one of this order, or a limit out of 1-:data:`MAX_PAGE`.

    Cost: in the status-change orders, one range of ``ix_jobs_type_status_changed`` per
    (job type, status) that has jobs, from the cursor on, ``limit`` keys long, merged
    (with a filter no index serves: ranges merged by a Merge Append that stops once the
    page is full or ``scan_limit`` jobs were read). In the id orders, the (type, status)
    ranges read whole and sorted when they hold at most :data:`ID_INDEX_READ` jobs, else
    the primary key from the cursor on. A filter no index serves (priority, error text;
    in the id orders read from the primary key, every filter) is applied to at most
    ``scan_limit`` jobs (see :attr:`JobPage.truncated_search`); the error text costs one
    history probe per job read in an error status. Each row's last message is one
    history probe.

    Product filter: the jobs whose input product id or tile id equals the product, or
    starts with it, read first (at most :data:`PRODUCT_CANDIDATES`). An equal input
    product id of a given type is found by the unique constraint (job_type,
    input_product_id, reprocessing_context); the rest needs the indexes
    ``ix_jobs_input_product_pattern`` and ``ix_jobs_tile_pattern`` (``text_pattern_ops``:
    a prefix LIKE uses a plain text index only in a "C" collation), without which it
    reads the whole table."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be 1-{MAX_PAGE}, got {limit}")
    plan = _plan(session, flt, after, PRODUCT_CANDIDATES)
    if plan.empty:
        product = plan.candidates_truncated
        return JobPage([], None, product, "product" if product else None)
    matching, params = _matching(plan, limit + 1, scan_limit)
    sql = _PAGE.format(matching=matching, order=_order(flt.sort, "p"))
    found = [dict(row._mapping) for row in session.execute(_statement(sql, params), params)]
    rows = [_job_row(row) for row in found[:limit]]
    if len(found) > limit:
        return JobPage(
            rows,
            _encode_cursor(flt.sort, found[limit - 1]),
            plan.candidates_truncated,
            "product" if plan.candidates_truncated else None,
        )
    if plan.candidates_truncated:
        return JobPage(rows, None, True, "product")
    last = _last_examined(session, plan, scan_limit)
    if last is None:
        return JobPage(rows, None)
    return JobPage(rows, _encode_cursor(flt.sort, last), True, "scan")


def _job_row(row: Mapping[str, Any]) -> JobRow:
    return JobRow(
        id=row["id"],
        job_type=row["job_type"],
        status=JobStatus(row["status"]),
        priority=Priority(row["priority"]),
        input_product_id=row["input_product_id"],
        tile_id=row["tile_id"],
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        status_changed_at=row["status_changed_at"],
        created_at=row["created_at"],
        message=row["message"],
    )


def matching_ids(
    session: Session,
    flt: JobFilter,
    cap: int = 10_000,
    *,
    scan_limit: int = MATCH_SCAN_LIMIT,
) -> tuple[list[int], bool]:
    """The ids of the jobs ``flt`` matches, in its order, at most ``cap`` (for an action on
    "every job of this filter"), and True if there may be more: more than ``cap`` match, a
    filter no index serves examined ``scan_limit`` jobs (``max(scan_limit, cap)``), or
    more than ``max(cap, PRODUCT_CANDIDATES)`` jobs match the product."""
    if cap < 1:
        raise ValueError(f"cap must be at least 1, got {cap}")
    scan_limit = max(scan_limit, cap)
    plan = _plan(session, flt, None, max(cap, PRODUCT_CANDIDATES))
    if plan.empty:
        return [], plan.candidates_truncated
    matching, params = _matching(plan, cap + 1, scan_limit)
    ids = list(session.scalars(_statement(f"SELECT id FROM ({matching}) p", params), params))
    if len(ids) > cap:
        return ids[:cap], True
    if plan.candidates_truncated:
        return ids, True
    return ids, _last_examined(session, plan, scan_limit) is not None


def count_matching(
    session: Session, flt: JobFilter, cap: int = 10_000, *, scan_limit: int = MATCH_SCAN_LIMIT
) -> tuple[int, bool]:
    """How many jobs ``flt`` matches, at most ``cap``, and True if there may be more (as
    :func:`matching_ids`, whose ids an action then takes): for the confirmation of a bulk
    action. A filter of type and statuses only is counted from the maintained counts."""
    if cap < 1:
        raise ValueError(f"cap must be at least 1, got {cap}")
    if flt == JobFilter(job_type=flt.job_type, statuses=flt.statuses, sort=flt.sort):
        wanted = set(_statuses(flt))
        total = sum(
            jobs
            for (job_type, status), jobs in job_counts(session).items()
            if status in wanted and flt.job_type in (None, job_type)
        )
        return min(total, cap), total > cap
    ids, truncated = matching_ids(session, flt, cap, scan_limit=scan_limit)
    return len(ids), truncated


# -- the Job page ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimelineStep:
    """One status change of a job and the time the job then spent in that status."""

    change_id: int
    time: datetime
    #: None for the job's creation.
    previous_status: JobStatus | None
    status: JobStatus
    message: str | None
    details: dict[str, Any]
    #: Until the next change; for the current status, until ``now``.
    duration: timedelta
    #: The job's current status (the last change).
    current: bool


@dataclass
class Attempt:
    """One execution of a job, from its ``queued`` change (the n-th is attempt n) and the
    changes that name it (``details.attempt``: the worker's and the monitor's)."""

    number: int
    queued_at: datetime | None = None
    #: ``started``: when a worker took it, on which host, as which process.
    started_at: datetime | None = None
    host: str | None = None
    pid: int | None = None
    #: The change that ended it (processed, an error, cancelled): None while it runs.
    ended_at: datetime | None = None
    outcome: JobStatus | None = None
    message: str | None = None
    #: The executor's reference (Nomad dispatched job id, or ``local:<token>``): the job's
    #: ``nomad_job_id`` for its current attempt; for an earlier one, only when the monitor
    #: recorded it in a failure's details.
    reference: str | None = None
    return_code: int | None = None
    #: Seconds per worker step (pre_processing, processing, post_processing).
    durations: dict[str, float] = field(default_factory=dict)
    #: The last science log lines kept in the status details (a failed science step).
    log_tail: list[str] = field(default_factory=list)
    #: Where the worker uploaded the attempt's logs.
    logs_url: str | None = None

    @property
    def executor(self) -> str | None:
        """``local`` or ``nomad`` (from the reference); None without one."""
        if self.reference is None:
            return None
        return "local" if self.reference.startswith(LOCAL_REFERENCE_PREFIX) else "nomad"

    @property
    def duration(self) -> timedelta | None:
        """From queued (or started) to its end; None while it runs."""
        start = self.queued_at or self.started_at
        return self.ended_at - start if start and self.ended_at else None


@dataclass(frozen=True, slots=True)
class JobOutputs:
    """What the job produced, as the database knows it (its last ``processed`` change)."""

    output_path: str | None
    #: The storage URL of the outputs, when uploaded, by which attempt, at what time.
    url: str | None = None
    attempt: int | None = None
    produced_at: str | None = None
    #: Files and bytes uploaded.
    files: int | None = None
    bytes: int | None = None
    output_publication_date: datetime | None = None


@dataclass
class JobDetail:
    """Everything about one job, for the Job page."""

    id: int
    job_type: str
    status: JobStatus
    priority: Priority
    #: Every column of the job (the ``jobs_overview`` row: status and priority by name,
    #: time_in_status; plus input/output paths, due_at, waiting_for, science_image,
    #: input_listing).
    job: dict[str, Any]
    #: The type's own columns; None when the type is not registered here (``type_error``).
    type_fields: dict[str, Any] | None
    type_error: str | None
    #: Every status change, oldest first.
    timeline: list[TimelineStep]
    #: Oldest first.
    attempts: list[Attempt]
    outputs: JobOutputs
    #: The outbox rows of the job (:func:`~joblife.publication.outbox.list_publications`:
    #: product, attempt, republication, message_id, routing_key, created_at,
    #: published_at, error, error_at, state = published / pending / failed / superseded),
    #: newest first, at most :data:`PUBLICATIONS_SHOWN`.
    publications: list[dict[str, Any]]
    now: datetime

    @property
    def log_tail(self) -> list[str]:
        """The last science log lines of the latest attempt that kept any."""
        for attempt in reversed(self.attempts):
            if attempt.log_tail:
                return attempt.log_tail
        return []


#: Columns of jobs the Job page shows besides :func:`get_job`'s own.
_EXTRA_COLUMNS = ("input_listing",)


def job_detail(
    session: Session, job_id: int, settings: Settings, *, now: datetime | None = None
) -> JobDetail | None:
    """Everything about the job ``job_id``; None if there is no such job. ``now``: the end
    of the current status's duration (default: the present). Bounded: a few primary-key
    and index probes, the job's history (one probe per history partition) and at most
    :data:`PUBLICATIONS_SHOWN` outbox rows."""
    job = get_job(session, job_id, _EXTRA_COLUMNS)
    if job is None:
        return None
    type_fields, type_error = _type_fields(session, job, settings)
    now = now or utc_now()
    timeline = _timeline(status_history(session, job_id), now)
    attempts = _attempts(timeline, job)
    return JobDetail(
        id=job_id,
        job_type=job["job_type"],
        status=JobStatus.parse(job["status"]),
        priority=Priority.parse(job["priority"]),
        job=job,
        type_fields=type_fields,
        type_error=type_error,
        timeline=timeline,
        attempts=attempts,
        outputs=_outputs(timeline, job),
        publications=list_publications(session, job_ids=[job_id], limit=PUBLICATIONS_SHOWN),
        now=now,
    )


def _type_fields(
    session: Session, job: Mapping[str, Any], settings: Settings
) -> tuple[dict[str, Any] | None, str | None]:
    try:
        job_class = load_job_types(settings).get(job["job_type"])
    except JobTypeError as error:
        return None, str(error)
    if job_class is None:
        return None, f"job type {job['job_type']!r} is not registered here"
    return get_type_fields(session, job_class, job["id"]), None


def _timeline(history: Sequence[Mapping[str, Any]], now: datetime) -> list[TimelineStep]:
    steps = []
    for index, change in enumerate(history):
        last = index == len(history) - 1
        end = now if last else history[index + 1]["time"]
        previous = change["previous_status"]
        steps.append(
            TimelineStep(
                change_id=change["change_id"],
                time=change["time"],
                previous_status=JobStatus.parse(previous) if previous else None,
                status=JobStatus.parse(change["status"]),
                message=change["message"],
                details=change["details"] or {},
                duration=max(end - change["time"], timedelta(0)),
                current=last,
            )
        )
    return steps


def _attempt_number(details: Mapping[str, Any]) -> int | None:
    number = details.get("attempt")
    return number if type(number) is int and number > 0 else None


def _attempts(timeline: Sequence[TimelineStep], job: Mapping[str, Any]) -> list[Attempt]:
    """The job's attempts from its timeline. A ``queued`` change begins the next attempt
    (the dispatcher numbers it when queuing, without saying so in the change); a change
    whose details name an attempt belongs to it; the first change out of the in-flight
    statuses ends the attempt in flight."""
    attempts: dict[int, Attempt] = {}
    current: Attempt | None = None
    confirmed = False  # the current attempt's number was read in a change, not counted
    for step in timeline:
        number = _attempt_number(step.details)
        if step.status is S.QUEUED:
            current = Attempt(number=max(attempts, default=0) + 1, queued_at=step.time)
            attempts[current.number] = current
            confirmed = False
            continue
        if number is not None:
            if current is not None and not confirmed and number != current.number:
                del attempts[current.number]  # counted wrong (history cut): take its word
                current = attempts.setdefault(number, replace(current, number=number))
            elif current is None or number != current.number:
                current = attempts.setdefault(number, Attempt(number=number))
            confirmed = True
        elif current is None or current.ended_at is not None:
            continue  # not an attempt's change (creation, publication, an operator's)
        _apply(current, step)
    for attempt in attempts.values():
        if attempt.number == job["attempt"] and job.get("nomad_job_id"):
            attempt.reference = job["nomad_job_id"]
    return sorted(attempts.values(), key=lambda a: a.number)


def _apply(attempt: Attempt, step: TimelineStep) -> None:
    details = step.details
    if step.status is S.STARTED:
        attempt.started_at = step.time
        attempt.host = details.get("host")
        attempt.pid = details.get("pid")
    if isinstance(details.get("return_code"), int):
        attempt.return_code = details["return_code"]
    if isinstance(details.get("durations"), dict) and details["durations"]:
        attempt.durations = details["durations"]
    if isinstance(details.get("log_tail"), list):
        attempt.log_tail = [str(line) for line in details["log_tail"]]
    if isinstance(details.get("logs"), str):
        attempt.logs_url = details["logs"]
    if isinstance(details.get("reference"), str):
        attempt.reference = details["reference"]
    if step.status not in IN_FLIGHT_STATUSES and attempt.ended_at is None:
        attempt.ended_at, attempt.outcome, attempt.message = step.time, step.status, step.message


def _outputs(timeline: Sequence[TimelineStep], job: Mapping[str, Any]) -> JobOutputs:
    processed = next((s for s in reversed(timeline) if s.status is S.PROCESSED), None)
    details = processed.details if processed is not None else {}
    upload = details.get("upload") if isinstance(details.get("upload"), dict) else {}
    return JobOutputs(
        output_path=job.get("output_path"),
        url=details.get("outputs"),
        attempt=_attempt_number(details),
        produced_at=details.get("produced_at"),
        files=upload.get("files"),
        bytes=upload.get("bytes"),
        output_publication_date=job.get("output_publication_date"),
    )
