"""The reads behind the dashboard's Overview, Timeliness, Failures and Publication pages.

Every read is bounded, whatever the size of ``jobs`` and of the history: it reads the
maintained counts (``job_status_counts`` / ``job_status_summary``, revision 0014), short
index ranges limited by a time window, or the newest rows of an index up to a LIMIT.
The functions take ``now`` (the end of every window, the reference of every age) so that
tests and benches read the same figures at any later time. The Stale page reuses
:func:`joblife.ops.stale.stale_jobs` as it is.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.types import SmallInteger

from joblife.cli.queries import StatusSummary, status_summary
from joblife.config import Settings
from joblife.db.counts import job_counts
from joblife.model.flavors import flavor_catalogue
from joblife.model.priority import Priority
from joblife.model.status import ERROR_STATUSES, IN_FLIGHT_STATUSES, JobStatus
from joblife.publication.outbox import pending_count
from joblife.publication.timeliness import TimelinessRow

S = JobStatus
#: Buckets a series may have at most (a window of 7 days in hours is 168).
MAX_BUCKETS = 1000
#: Failed jobs :func:`failure_groups` reads at most (the newest in the window).
FAILURE_SAMPLE = 5_000
#: The sort memory of the timeliness read, for its transaction only.
SORT_WORK_MEM = "64MB"
#: Example job ids kept per failure group.
FAILURE_EXAMPLES = 5
#: Outbox rows :func:`publication_state` classifies at most (the oldest unpublished).
OUTBOX_SCAN = 10_000
#: Failed outbox rows :func:`publication_state` lists (the newest).
FAILED_PUBLICATIONS_SHOWN = 20
#: The origin of every bucket: buckets of an hour, 6 hours or a day start at UTC hours.
BUCKET_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)

_IN_FLIGHT = sorted(int(s) for s in IN_FLIGHT_STATUSES)
_FAILED = sorted(int(s) for s in ERROR_STATUSES)  # internal_error, external_error


def _age(now: datetime, since: datetime | None) -> float | None:
    return None if since is None else max(0.0, (now - since).total_seconds())


# -- buckets ------------------------------------------------------------------------------


def bucket_starts(since: datetime, until: datetime, bucket: timedelta) -> list[datetime]:
    """The starts of the buckets covering ``[since, until)``: multiples of ``bucket`` from
    :data:`BUCKET_ORIGIN` (as PostgreSQL's ``date_bin``), the first and last possibly cut
    by the window. ValueError for an empty window, a bucket of no length or more than
    :data:`MAX_BUCKETS` buckets."""
    if bucket <= timedelta(0):
        raise ValueError("the bucket must be longer than zero")
    if until <= since:
        raise ValueError("empty window")
    first = BUCKET_ORIGIN + (since - BUCKET_ORIGIN) // bucket * bucket
    count = -(-(until - first) // bucket)  # ceiling
    if count > MAX_BUCKETS:
        raise ValueError(f"{count} buckets: at most {MAX_BUCKETS} (take longer buckets)")
    return [first + i * bucket for i in range(count)]


# -- Overview ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InFlight:
    """Jobs in flight (queued ... post_processing) of one worker flavor or job type."""

    name: str
    jobs: int
    #: The dispatcher's cap on it; None when uncapped.
    cap: int | None


@dataclass(frozen=True, slots=True)
class OldestJob:
    """The longest time a job has been in a status (of one type, or of any type)."""

    status: JobStatus
    #: The type of that job.
    job_type: str
    status_changed_at: datetime
    age_seconds: float


@dataclass
class Overview:
    """The Overview page: counts, in-flight against the caps, oldest job per status."""

    now: datetime
    #: The type x status matrix (maintained counts) and the rejected products per type.
    summary: StatusSummary
    #: Jobs in flight in all, and ``max_in_flight``.
    in_flight: int
    in_flight_cap: int
    #: One row per worker flavor with jobs in flight or a cap (the flavor catalogue's
    #: flavors included), by name.
    in_flight_by_flavor: list[InFlight]
    #: One row per job type with jobs in flight or a cap (every type of the matrix), by name.
    in_flight_by_type: list[InFlight]
    #: The oldest status change of each status that has jobs, whatever the type.
    oldest_by_status: dict[JobStatus, OldestJob]
    #: The same per (job type, status).
    oldest_by_type_status: dict[tuple[str, JobStatus], OldestJob]

    @property
    def rejected(self) -> dict[str, int]:
        """Products creation refused, by job type (not jobs)."""
        return self.summary.rejected


def flavor_cap(settings: Settings, flavor: str) -> int | None:
    """The in-flight cap dispatch applies to ``flavor`` as far as the configuration tells
    (``max_in_flight_per_flavor`` and, with the local executor, its slots); None when
    uncapped. The Nomad executor adds no cap of its own, except 0 while Nomad does not
    answer, which only the dispatching process knows (see
    ``joblife.lifecycle.dispatch._flavor_cap``)."""
    caps = [settings.max_in_flight_per_flavor.get(flavor)]
    if not settings.nomad_addr:  # the local executor: see joblife.executors.factory
        caps.append(settings.local_slots.get(flavor, settings.local_default_slots))
    known = [c for c in caps if c is not None]
    return min(known) if known else None


# The oldest status change of each (type, status) that has jobs: one probe of
# ix_jobs_type_status_changed per pair, made by the view (revision 0014).
_OLDEST = text(
    "SELECT job_type, status_id, oldest_status_change FROM job_status_summary "
    "WHERE status_id = ANY (:statuses)"
).bindparams(bindparam("statuses", type_=ARRAY(SmallInteger)))
# Jobs in flight per worker flavor: the flavor is not in the maintained counts; the jobs in
# flight are few (the caps keep them under max_in_flight) and found by the partial index
# ix_jobs_status_changed (status, status_changed_at) WHERE status NOT IN (1, 3).
_FLAVORS = text(
    f"SELECT worker_flavor, count(*) AS jobs FROM jobs "
    f"WHERE status IN ({', '.join(map(str, _IN_FLIGHT))}) GROUP BY worker_flavor"
)


def oldest_changes(
    session: Session, now: datetime, statuses: list[JobStatus] | None = None
) -> dict[tuple[str, JobStatus], OldestJob]:
    """The oldest status change of each (job type, status) with jobs, of ``statuses``
    (default all), from ``job_status_summary`` (one index probe per pair)."""
    wanted = [int(s) for s in (statuses if statuses is not None else JobStatus)]
    result = {}
    for row in session.execute(_OLDEST, {"statuses": wanted}):
        if row.oldest_status_change is None:  # counted, gone since (another snapshot)
            continue
        status = JobStatus(row.status_id)
        result[(row.job_type, status)] = OldestJob(
            status,
            row.job_type,
            row.oldest_status_change,
            _age(now, row.oldest_status_change) or 0.0,
        )
    return result


def _oldest_per_status(
    by_pair: dict[tuple[str, JobStatus], OldestJob],
) -> dict[JobStatus, OldestJob]:
    result: dict[JobStatus, OldestJob] = {}
    for (_, status), oldest in sorted(by_pair.items()):
        if status not in result or oldest.status_changed_at < result[status].status_changed_at:
            result[status] = oldest
    return dict(sorted(result.items()))


def overview(session: Session, settings: Settings, now: datetime) -> Overview:
    """The Overview page's figures. Reads the maintained counts (:func:`status_summary`),
    one index probe per (type, status) for the oldest change, and the jobs in flight (a
    range of ``ix_jobs_status_changed``, as many rows as jobs in flight)."""
    summary = status_summary(session)
    by_pair = oldest_changes(session, now)
    flavors = {row.worker_flavor: int(row.jobs) for row in session.execute(_FLAVORS)}
    per_type = {
        job_type: sum(n for status, n in counts.items() if status in IN_FLIGHT_STATUSES)
        for job_type, counts in summary.counts.items()
    }
    flavor_names = set(flavors) | set(settings.max_in_flight_per_flavor)
    flavor_names |= set(flavor_catalogue(settings))
    type_names = set(per_type) | set(settings.max_in_flight_per_type)
    return Overview(
        now=now,
        summary=summary,
        in_flight=sum(per_type.values()),
        in_flight_cap=settings.max_in_flight,
        in_flight_by_flavor=[
            InFlight(f, flavors.get(f, 0), flavor_cap(settings, f)) for f in sorted(flavor_names)
        ],
        in_flight_by_type=[
            InFlight(t, per_type.get(t, 0), settings.max_in_flight_per_type.get(t))
            for t in sorted(type_names)
        ],
        oldest_by_status=_oldest_per_status(by_pair),
        oldest_by_type_status=by_pair,
    )


# -- Throughput ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThroughputBucket:
    """Jobs that reached ``done`` and that failed in one bucket ``[start, end)``: the jobs
    now done, internal_error or external_error whose status changed in the bucket (a job
    failed in the bucket and retried or acknowledged since is not counted)."""

    start: datetime
    end: datetime
    done: int
    internal_error: int
    external_error: int

    @property
    def failed(self) -> int:
        """internal_error + external_error."""
        return self.internal_error + self.external_error


# Counted from the jobs, not from the history. Both reads are bounded by the window, but:
# - the history (partitioned by month, ix_job_status_changes_time) has no index on status:
#   a window reads every change of the window (about 5 per job), each from the heap, to
#   keep the few into done or an error; at 10 million jobs, 7 days are 480,000 rows (the
#   same range `joblife stats --since 7d` reads: 700-800 ms);
# - ix_jobs_status_changed (status, status_changed_at) holds the status: one index-only
#   range per status, exactly the jobs counted (7 days at 10 million jobs: 80,000 index
#   entries, 11 ms).
# So a job counts in the bucket of its *current* status's change: done is final (a job
# republished since counts at its new done); a failed job counts while it is still in
# internal_error / external_error (one retried or acknowledged since no longer counts).
_THROUGHPUT = text(
    f"""
    WITH counted AS (
        SELECT j.status, date_bin(:bucket, j.status_changed_at, :origin) AS start,
               count(*) AS jobs
          FROM jobs j
         WHERE j.status IN ({int(S.DONE)}, {", ".join(map(str, _FAILED))})
           AND j.status_changed_at >= :since AND j.status_changed_at < :until
         GROUP BY 1, 2
    )
    SELECT b.start,
           coalesce(sum(c.jobs) FILTER (WHERE c.status = {int(S.DONE)}), 0) AS done,
           coalesce(sum(c.jobs) FILTER (WHERE c.status = {int(S.INTERNAL_ERROR)}), 0)
               AS internal_error,
           coalesce(sum(c.jobs) FILTER (WHERE c.status = {int(S.EXTERNAL_ERROR)}), 0)
               AS external_error
      FROM generate_series(CAST(:first AS timestamptz), CAST(:last AS timestamptz), :bucket)
           AS b(start)
      LEFT JOIN counted c ON c.start = b.start
     GROUP BY b.start
     ORDER BY b.start
    """
)


def throughput(
    session: Session, now: datetime, window: timedelta, bucket: timedelta
) -> list[ThroughputBucket]:
    """Jobs done and failed per bucket over ``[now - window, now)``, every bucket present
    (zeros included); buckets as :func:`bucket_starts`, each cut to the window. See the
    comment above ``_THROUGHPUT`` for what counts (the jobs' current status)."""
    since = now - window
    starts = bucket_starts(since, now, bucket)
    rows = session.execute(
        _THROUGHPUT,
        {
            "bucket": bucket,
            "origin": BUCKET_ORIGIN,
            "since": since,
            "until": now,
            "first": starts[0],
            "last": starts[-1],
        },
    ).all()
    return [
        ThroughputBucket(
            start=max(row.start, since),
            end=min(row.start + bucket, now),
            done=int(row.done),
            internal_error=int(row.internal_error),
            external_error=int(row.external_error),
        )
        for row in rows
    ]


# -- Timeliness ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimelinessPoint:
    """Input → output publication of one job type and priority, over one bucket (or the
    whole window when ``start`` is None); seconds, None without any publication."""

    job_type: str
    priority: Priority
    start: datetime | None
    published: int
    p50_seconds: float | None
    p90_seconds: float | None
    p99_seconds: float | None
    max_seconds: float | None
    within_target: int

    @property
    def within_target_share(self) -> float | None:
        return self.within_target / self.published if self.published else None


@dataclass
class TimelinessSeries:
    """The Timeliness page over ``[since, until)``: per job type and priority, each bucket
    (:attr:`series`, every bucket present) and the whole window (:attr:`totals`); per job
    type, priorities together, with the jobs still pending (:attr:`summary`: the rows
    :func:`timeliness_summary` gives, computed in the same pass, plus a count of the
    pending jobs)."""

    since: datetime
    until: datetime
    bucket: timedelta
    #: The target: ``timeliness_target_hours`` (the code has no per-type target).
    target: timedelta
    buckets: list[datetime]
    series: list[TimelinessPoint] = field(default_factory=list)
    totals: list[TimelinessPoint] = field(default_factory=list)
    summary: list[TimelinessRow] = field(default_factory=list)

    def points(self, job_type: str, priority: Priority) -> list[TimelinessPoint]:
        """The buckets of one job type and priority, in time order."""
        return [p for p in self.series if p.job_type == job_type and p.priority == priority]


def timeliness_target(settings: Settings, job_type: str | None = None) -> timedelta:
    """The timeliness target of ``job_type``: ``timeliness_target_hours`` for every type
    (there is no per-type target)."""
    return timedelta(hours=settings.timeliness_target_hours)


_FILTERS = """
           AND (CAST(:job_type AS text) IS NULL OR j.job_type = CAST(:job_type AS text))
           AND (CAST(:priority AS smallint) IS NULL
                OR j.priority = CAST(:priority AS smallint))"""
# The outputs published in the window: one range of ix_jobs_output_published, whose
# INCLUDE columns hold the type and the input date; the priority is read from the jobs'
# rows (one heap read per job published in the window). Percentiles per (type, priority,
# bucket), per (type, priority) and per type in one pass (grouping sets): calling
# timeliness_summary() too would read and sort the window a second time (60 ms at 7 days
# of 10 million jobs), for the per-type figures this pass gives.
_SERIES = text(
    f"""
    WITH published AS (
        SELECT j.job_type, j.priority,
               date_bin(:bucket, j.output_publication_date, :origin) AS start,
               extract(epoch FROM j.output_publication_date - j.input_publication_date)
                   ::float8 AS seconds
          FROM jobs j
         WHERE j.output_publication_date IS NOT NULL
           AND j.output_publication_date >= :since AND j.output_publication_date < :until
           AND j.input_publication_date IS NOT NULL{_FILTERS}
    )
    SELECT job_type, priority, start, GROUPING(priority, start) AS level,
           count(*) AS published,
           percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY seconds) AS pct,
           max(seconds) AS worst,
           count(*) FILTER (WHERE seconds <= :target) AS within
      FROM published
     GROUP BY GROUPING SETS ((job_type, priority, start), (job_type, priority), (job_type))
    """
)
# The jobs whose input was published in the window and whose output is not yet (neither
# done nor cancelled), per type: the `pending` of job_timeliness_summary() (revision
# 0014), same conditions, so an index-only range of ix_jobs_publication_pending (the
# priority filter, if any, reads the jobs' rows).
_PENDING = text(
    f"""
    SELECT j.job_type, count(*) AS pending
      FROM jobs j
     WHERE j.output_publication_date IS NULL AND j.status NOT IN (12, 16)
       AND j.input_publication_date >= :since AND j.input_publication_date < :until{_FILTERS}
     GROUP BY j.job_type
    """
)
_LEVEL_WINDOW, _LEVEL_TYPE = 1, 3  # GROUPING(priority, start); 0: a bucket


def _point(row: Any, start: datetime | None) -> TimelinessPoint:
    p50, p90, p99 = row.pct
    return TimelinessPoint(
        job_type=row.job_type,
        priority=Priority(row.priority),
        start=start,
        published=int(row.published),
        p50_seconds=p50,
        p90_seconds=p90,
        p99_seconds=p99,
        max_seconds=row.worst,
        within_target=int(row.within),
    )


def _summary_row(job_type: str, row: Any | None, pending: int) -> TimelinessRow:
    if row is None:
        return TimelinessRow(job_type, 0, pending, None, None, None, None, 0, None)
    p50, p90, p99 = row.pct
    published, within = int(row.published), int(row.within)
    return TimelinessRow(
        job_type, published, pending, p50, p90, p99, row.worst, within, within / published
    )


def timeliness(
    session: Session,
    settings: Settings,
    now: datetime,
    window: timedelta,
    bucket: timedelta,
    job_type: str | None = None,
    priority: Priority | int | None = None,
) -> TimelinessSeries:
    """Input → output publication over ``[now - window, now)`` (outputs published in it):
    p50/p90/p99/max and the jobs within the target per job type and priority, per bucket
    and over the window; per job type, as :func:`timeliness_summary` gives it (with the
    jobs whose input was published in the window and whose output is pending).
    ``job_type`` and ``priority`` keep only those jobs (the summary too)."""
    since = now - window
    starts = bucket_starts(since, now, bucket)
    target = timeliness_target(settings, job_type)
    params = {
        "bucket": bucket,
        "origin": BUCKET_ORIGIN,
        "since": since,
        "until": now,
        "job_type": job_type,
        "priority": None if priority is None else int(priority),
        "target": target.total_seconds(),
    }
    result = TimelinessSeries(since, now, bucket, target, starts)
    found: dict[tuple[str, int], dict[datetime, Any]] = {}
    per_type: dict[str, Any] = {}
    # The percentiles sort the window's delays: in memory rather than spilled to disk at
    # the server's default work_mem (4 MB: 77,000 outputs of a week at 10 million jobs).
    session.execute(text(f"SET LOCAL work_mem = '{SORT_WORK_MEM}'"))
    for row in session.execute(_SERIES, params):
        if row.level == _LEVEL_TYPE:
            per_type[row.job_type] = row
        elif row.level == _LEVEL_WINDOW:
            result.totals.append(_point(row, None))
        else:
            found.setdefault((row.job_type, row.priority), {})[row.start] = row
    result.totals.sort(key=lambda p: (p.job_type, p.priority))
    for (name, level), by_start in sorted(found.items()):
        for start in starts:
            row = by_start.get(start)
            if row is not None:
                result.series.append(_point(row, start))
            else:
                result.series.append(
                    TimelinessPoint(name, Priority(level), start, 0, None, None, None, None, 0)
                )
    pending = {row.job_type: int(row.pending) for row in session.execute(_PENDING, params)}
    result.summary = [
        _summary_row(name, per_type.get(name), pending.get(name, 0))
        for name in sorted(set(per_type) | set(pending))
    ]
    return result


@dataclass(frozen=True, slots=True)
class LateJob:
    """A job outside the timeliness target: published late, or not published yet
    (``output_publication_date`` None) although its input was published longer ago than
    the target."""

    job_id: int
    job_type: str
    priority: Priority
    status: JobStatus
    input_publication_date: datetime
    output_publication_date: datetime | None
    #: Input → output publication, or input → ``now`` while not published.
    delay_seconds: float
    target_seconds: float

    @property
    def over_target_seconds(self) -> float:
        return self.delay_seconds - self.target_seconds


# Two bounded reads, the worst first, at most :limit in all:
# - published late in the window: an index-only range of ix_jobs_output_published (the
#   delay is computed from its INCLUDE columns, so on-time jobs cost no heap read), the
#   worst :limit dates kept, then their rows by the same index (equality on the date);
# - pending past the target: a range of ix_jobs_publication_pending (input published in
#   [since, now - target), output not published, job not done or cancelled).
_LATE = text(
    """
    WITH late_dates AS (
        SELECT DISTINCT d.output_publication_date
          FROM (SELECT j.output_publication_date
                  FROM jobs j
                 WHERE j.output_publication_date IS NOT NULL
                   AND j.output_publication_date >= :since
                   AND j.output_publication_date < :until
                   AND j.input_publication_date IS NOT NULL
                   AND j.output_publication_date - j.input_publication_date > :target
                   AND (CAST(:job_type AS text) IS NULL OR j.job_type = CAST(:job_type AS text))
                 ORDER BY j.output_publication_date - j.input_publication_date DESC
                 LIMIT :limit) AS d
    ), published AS (
        SELECT j.id, j.job_type, j.priority, j.status, j.input_publication_date,
               j.output_publication_date,
               extract(epoch FROM j.output_publication_date - j.input_publication_date)
                   ::float8 AS delay
          FROM late_dates d
          JOIN jobs j ON j.output_publication_date = d.output_publication_date
         WHERE j.input_publication_date IS NOT NULL
           AND j.output_publication_date - j.input_publication_date > :target
           AND (CAST(:job_type AS text) IS NULL OR j.job_type = CAST(:job_type AS text))
    ), pending AS (
        SELECT j.id, j.job_type, j.priority, j.status, j.input_publication_date,
               j.output_publication_date,
               extract(epoch FROM CAST(:until AS timestamptz) - j.input_publication_date)
                   ::float8 AS delay
          FROM jobs j
         WHERE j.output_publication_date IS NULL AND j.status NOT IN (12, 16)
           AND j.input_publication_date >= :since
           AND j.input_publication_date < CAST(:until AS timestamptz) - :target
           AND (CAST(:job_type AS text) IS NULL OR j.job_type = CAST(:job_type AS text))
         ORDER BY j.input_publication_date
         LIMIT :limit
    )
    SELECT * FROM (SELECT * FROM published UNION ALL SELECT * FROM pending) AS late
     ORDER BY delay DESC, id
     LIMIT :limit
    """
)


def late_jobs(
    session: Session,
    settings: Settings,
    now: datetime,
    window: timedelta,
    limit: int = 50,
    job_type: str | None = None,
) -> list[LateJob]:
    """The jobs outside the timeliness target over ``[now - window, now)``, the longest
    delay first, at most ``limit``: those whose output was published in the window more
    than the target after their input, and those whose input was published in the window
    more than the target before ``now`` and whose output is not published yet (neither
    done nor cancelled)."""
    target = timeliness_target(settings, job_type)
    rows = session.execute(
        _LATE,
        {
            "since": now - window,
            "until": now,
            "target": target,
            "job_type": job_type,
            "limit": limit,
        },
    )
    return [
        LateJob(
            job_id=row.id,
            job_type=row.job_type,
            priority=Priority(row.priority),
            status=JobStatus(row.status),
            input_publication_date=row.input_publication_date,
            output_publication_date=row.output_publication_date,
            delay_seconds=float(row.delay),
            target_seconds=target.total_seconds(),
        )
        for row in rows
    ]


# -- Failures -----------------------------------------------------------------------------


@dataclass
class FailureGroup:
    """Failed jobs of one type whose error messages share a pattern."""

    job_type: str
    #: The message with numbers, hexadecimal ids, UUIDs and paths replaced by placeholders.
    pattern: str
    #: Jobs in the group (of those read: see :func:`failure_groups`).
    count: int
    #: The earliest and latest failure (the change into the error) of the group's jobs.
    first_seen: datetime
    last_seen: datetime
    #: The group's jobs by current status (internal_error, external_error, error_checked).
    statuses: dict[JobStatus, int]
    #: A few of its jobs, the latest failure first.
    example_job_ids: list[int]
    #: The message of the latest failure, as it is.
    example_message: str | None


_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I)
# A URL (scheme://...) or an absolute path (/a/b), not the slash of "3/4" or "and/or".
_PATH = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+|(?<![\w.~/])/[^\s'\"<>,;()\[\]]*", re.I)
_HEX = re.compile(r"\b0x[0-9a-f]+\b|\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{8,}\b", re.I)
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)*")
_SPACES = re.compile(r"\s+")
#: Patterns longer than this are cut (a traceback is grouped by its beginning).
PATTERN_LENGTH = 300


@functools.lru_cache(maxsize=8192)
def message_pattern(message: str | None) -> str:
    """``message`` with its variable parts replaced: UUIDs by ``<uuid>``, URLs and absolute
    paths by ``<path>``, hexadecimal ids (``0x1f``, ``deadbeef42``) by ``<hex>``, numbers by
    ``<n>``; spaces collapsed, at most :data:`PATTERN_LENGTH` characters. "job 12 failed at
    /a/b" and "job 13 failed at /c/d" both become "job <n> failed at <path>"."""
    if not message:
        return "(no message)"
    pattern = _UUID.sub("<uuid>", message)
    pattern = _PATH.sub("<path>", pattern)
    pattern = _HEX.sub("<hex>", pattern)
    pattern = _NUMBER.sub("<n>", pattern)
    pattern = _SPACES.sub(" ", pattern).strip()
    return pattern[:PATTERN_LENGTH]


_FAILED_STATUSES = [*sorted(ERROR_STATUSES), S.ERROR_CHECKED]
# The newest failed jobs of the window: one backward range of ix_jobs_type_status_changed
# per (type, failed status) that has jobs (from the maintained counts), the ranges merged
# in order (UNION ALL of ordered branches: a Merge Append, which stops after :sample rows
# in all, instead of reading :sample rows of every pair and sorting them). Then each job's
# last change into internal_error or external_error, by the history's (job_id, id) index
# (a job still in that status changed into it at its status_changed_at: the run-time
# partition pruning leaves one partition to probe).
_BRANCH = """
        (SELECT j.id, j.job_type, j.status, j.status_changed_at FROM jobs j
          WHERE j.job_type = :type_{i} AND j.status = :status_{i}
            AND j.status_changed_at >= :since AND j.status_changed_at < :until
          ORDER BY j.status_changed_at DESC, j.id DESC LIMIT :sample)"""
_FAILURES = f"""
    WITH latest AS (
        SELECT * FROM ({{branches}}) AS u
         ORDER BY u.status_changed_at DESC, u.id DESC
         LIMIT :sample
    )
    SELECT l.id, l.job_type, l.status, l.status_changed_at, c.time AS failed_at, c.message
      FROM latest l
      LEFT JOIN LATERAL (
          SELECT h.time, h.message FROM job_status_changes h
           WHERE h.job_id = l.id AND h.status IN ({", ".join(map(str, _FAILED))})
             AND h.time <= l.status_changed_at
             AND h.time >= CASE WHEN l.status = {int(S.ERROR_CHECKED)}
                                THEN '-infinity' ELSE l.status_changed_at END
           ORDER BY h.id DESC
           LIMIT 1) AS c ON true
     ORDER BY l.status_changed_at DESC, l.id DESC
"""


def _failed_jobs(session: Session, since: datetime, until: datetime, sample: int) -> list[Any]:
    """The ``sample`` newest failed jobs changed in ``[since, until)``, newest first, with
    the time and message of their failure."""
    pairs = sorted(
        (job_type, status)
        for (job_type, status), jobs in job_counts(session).items()
        if status in _FAILED_STATUSES and jobs > 0
    )
    if not pairs:
        return []
    params: dict[str, Any] = {"since": since, "until": until, "sample": sample}
    for i, (job_type, status) in enumerate(pairs):
        params[f"type_{i}"], params[f"status_{i}"] = job_type, int(status)
    branches = " UNION ALL ".join(_BRANCH.format(i=i) for i in range(len(pairs)))
    return session.execute(text(_FAILURES.format(branches=branches)), params).all()


def failure_groups(
    session: Session,
    now: datetime,
    window: timedelta,
    limit: int = 50,
    sample: int = FAILURE_SAMPLE,
) -> list[FailureGroup]:
    """The failed jobs (now internal_error, external_error or error_checked) whose status
    changed in ``[now - window, now)``, grouped by job type and :func:`message_pattern` of
    the message of their last change into internal_error / external_error; the largest
    groups first (then the latest), at most ``limit``.

    Bounded: only the ``sample`` (default :data:`FAILURE_SAMPLE`) newest such jobs are
    read (newest status change first), each with one history probe; older failures of the
    window are not counted. A job retried since its failure is not failed any more and is
    not counted."""
    # One history probe per job makes the planner's estimate high enough for PostgreSQL to
    # compile the query (JIT): 15 ms or more to save nothing on a read of this size. For
    # this transaction only (as joblife.ops.stats does).
    session.execute(text("SET LOCAL jit = off"))
    rows = _failed_jobs(session, now - window, now, sample)
    groups: dict[tuple[str, str], FailureGroup] = {}
    for row in rows:  # newest first
        failed_at = row.failed_at or row.status_changed_at
        key = (row.job_type, message_pattern(row.message))
        group = groups.get(key)
        if group is None:
            group = groups[key] = FailureGroup(
                job_type=row.job_type,
                pattern=key[1],
                count=0,
                first_seen=failed_at,
                last_seen=failed_at,
                statuses={},
                example_job_ids=[],
                example_message=row.message,
            )
        group.count += 1
        if failed_at < group.first_seen:
            group.first_seen = failed_at
        if failed_at > group.last_seen:
            group.last_seen, group.example_message = failed_at, row.message
        status = JobStatus(row.status)
        group.statuses[status] = group.statuses.get(status, 0) + 1
        if len(group.example_job_ids) < FAILURE_EXAMPLES:
            group.example_job_ids.append(row.id)
    for group in groups.values():
        group.statuses = dict(sorted(group.statuses.items()))
    ordered = sorted(groups.values(), key=lambda g: (-g.count, -g.last_seen.timestamp()))
    return ordered[:limit]


# -- Publication --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FailedPublication:
    """An outbox row that failed (returned unroutable, nacked, or too large to send: error
    set), not superseded."""

    id: int
    job_id: int
    job_type: str
    job_status: JobStatus
    product: str
    routing_key: str | None
    error: str
    error_at: datetime | None


@dataclass
class PublicationState:
    """The Publication page: the outbox and the jobs waiting for publication."""

    now: datetime
    #: Outbox rows not confirmed by the broker, all of them (``pending_count``).
    unpublished: int
    # The figures below classify the OUTBOX_SCAN oldest of those (all of them unless
    # ``scan_capped``).
    #: Rows of the job's current attempt without error, waiting for the broker ...
    pending: int
    #: ... of which not sent yet (job processed) ...
    unsent: int
    #: ... or sent and not confirmed yet (job start_publication).
    unconfirmed: int
    #: ``pending`` by the job's status (a job in another status waits for an operator).
    pending_by_job_status: dict[JobStatus, int]
    #: Age of the oldest pending row; None without any.
    oldest_pending_age_seconds: float | None
    #: Rows that failed (returned unroutable, nacked, too large: error set), current attempt.
    failed: int
    #: Rows of an earlier attempt of their job: never sent again.
    superseded: int
    #: More unpublished rows than OUTBOX_SCAN: the figures above are of the oldest ones.
    scan_capped: bool
    #: The latest failed rows (at most FAILED_PUBLICATIONS_SHOWN).
    failed_rows: list[FailedPublication]
    #: Jobs in processed / start_publication / published (maintained counts).
    jobs_waiting: dict[JobStatus, int]
    #: The oldest of those per status.
    oldest_waiting: dict[JobStatus, OldestJob]


_WAITING = [S.PROCESSED, S.START_PUBLICATION, S.PUBLISHED]
# The oldest unpublished rows (ix_publications_unpublished), at most :cap, each with its
# job by key: as many rows as the outbox backlog, up to the cap.
_OUTBOX = text(
    """
    WITH rows AS (
        SELECT p.id, p.created_at, p.error, p.attempt <> j.attempt AS superseded,
               j.status AS job_status
          FROM (SELECT id FROM publications WHERE published_at IS NULL
                 ORDER BY id LIMIT :cap) AS u
          JOIN publications p ON p.id = u.id
          JOIN jobs j ON j.id = p.job_id
    )
    SELECT job_status, superseded, error IS NOT NULL AS failed, count(*) AS n,
           min(created_at) AS oldest
      FROM rows GROUP BY 1, 2, 3
    """
)
_FAILED_ROWS = text(
    """
    SELECT p.id, p.job_id, j.job_type, j.status AS job_status, p.product, p.routing_key,
           p.error, p.error_at
      FROM (SELECT id FROM publications WHERE published_at IS NULL
             ORDER BY id LIMIT :cap) AS u
      JOIN publications p ON p.id = u.id
      JOIN jobs j ON j.id = p.job_id AND j.attempt = p.attempt
     WHERE p.error IS NOT NULL
     ORDER BY p.error_at DESC NULLS LAST, p.id DESC
     LIMIT :shown
    """
)


def publication_state(session: Session, now: datetime, scan: int = OUTBOX_SCAN) -> PublicationState:
    """The outbox backlog and the jobs waiting for publication. Reads the unpublished
    outbox rows (the ``scan`` oldest at most, by ``ix_publications_unpublished``, each with
    its job by key), the maintained counts and one index probe per (type, waiting status)."""
    state = PublicationState(
        now=now,
        unpublished=pending_count(session),
        unsent=0,
        unconfirmed=0,
        pending=0,
        pending_by_job_status={},
        oldest_pending_age_seconds=None,
        failed=0,
        superseded=0,
        scan_capped=False,
        failed_rows=[],
        jobs_waiting={},
        oldest_waiting={},
    )
    scanned = 0
    oldest: datetime | None = None
    by_status: Counter[JobStatus] = Counter()
    for row in session.execute(_OUTBOX, {"cap": scan}):
        scanned += row.n
        if row.superseded:
            state.superseded += row.n
        elif row.failed:
            state.failed += row.n
        else:
            by_status[JobStatus(row.job_status)] += row.n
            if oldest is None or row.oldest < oldest:
                oldest = row.oldest
    state.scan_capped = state.unpublished > scanned
    state.pending_by_job_status = dict(sorted(by_status.items()))
    state.pending = by_status.total()
    state.unsent = by_status[S.PROCESSED]
    state.unconfirmed = by_status[S.START_PUBLICATION]
    state.oldest_pending_age_seconds = _age(now, oldest)
    state.failed_rows = [
        FailedPublication(
            row.id,
            row.job_id,
            row.job_type,
            JobStatus(row.job_status),
            row.product,
            row.routing_key,
            row.error,
            row.error_at,
        )
        for row in session.execute(_FAILED_ROWS, {"cap": scan, "shown": FAILED_PUBLICATIONS_SHOWN})
    ]
    counts = job_counts(session)
    state.jobs_waiting = {
        s: sum(n for (_, status), n in counts.items() if status is s) for s in _WAITING
    }
    by_pair = oldest_changes(session, now, _WAITING)
    state.oldest_waiting = {s: o for s, o in _oldest_per_status(by_pair).items() if s in _WAITING}
    return state
