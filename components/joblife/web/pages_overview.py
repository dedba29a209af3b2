"""The Overview, Timeliness, Failures, Publication and Stale pages, and the partials the
Overview refreshes live (the status matrix and the jobs in flight; the services' health).

Every figure comes through :func:`joblife.web.database.cached_read` under a key naming
the read and the page's parameters (prefixed ``ov:``): one database read per key per
refresh interval, whatever the number of browsers. The health checks probe the services,
not the database: they are cached apart, for :data:`HEALTH_SECONDS`, and loaded by their own
htmx request so that a slow probe never delays a page.

Parameters are query-string choices; a bad one is answered 400 with what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from joblife.config import Settings
from joblife.db.counts import job_counts
from joblife.lifecycle.common import utc_now
from joblife.model.priority import Priority
from joblife.model.registry import load_job_types
from joblife.model.status import JobStatus
from joblife.ops.health import CHECKS, CheckResult, run_checks
from joblife.ops.stale import StaleJob, stale_jobs
from joblife.web import charts
from joblife.web.cache import SharedCache
from joblife.web.database import cached_read
from joblife.web.job_reads import JobFilter
from joblife.web.overview_reads import (
    FAILURE_SAMPLE,
    FailureGroup,
    Overview,
    failure_groups,
    late_jobs,
    overview,
    publication_state,
    throughput,
    timeliness,
)
from joblife.web.render import render
from joblife.web.security import requires
from joblife.web.users import Role

S = JobStatus
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

#: The Overview's chart windows: name -> (window, bucket). Done per hour in both.
THROUGHPUT_WINDOWS: dict[str, tuple[timedelta, timedelta]] = {
    "24h": (24 * HOUR, HOUR),
    "7d": (7 * DAY, HOUR),
}
#: The Timeliness windows: name -> (window, bucket). Each reads one range of
#: ix_jobs_output_published (the outputs published in the window) and sorts it for the
#: percentiles: bounded by the window, not by the table. Measured at 10 million jobs (the
#: scale bench's database, 2 busy vCPUs), wall time from Python: 24 h 45 ms, 7 days 290 ms,
#: 30 days 0.7-1.4 s (650 ms of server time for 372,735 outputs, the sort spilling to disk
#: at work_mem=4MB): over the pages' 300 ms goal, so there is no 30-day window (`joblife
#: timeliness --since 30d` gives its figures).
TIMELINESS_WINDOWS: dict[str, tuple[timedelta, timedelta]] = {
    "24h": (24 * HOUR, HOUR),
    "7d": (7 * DAY, 6 * HOUR),
}
#: The Failures windows.
FAILURE_WINDOWS: dict[str, timedelta] = {"24h": 24 * HOUR, "7d": 7 * DAY, "30d": 30 * DAY}
#: Late jobs the Timeliness page lists at most; failure groups the Failures page lists.
LATE_SHOWN = 50
GROUPS_SHOWN = 50
#: The Stale page's limit: default and largest (``joblife jobs stale``'s default is 200).
STALE_DEFAULT = 200
STALE_MAX = 1000
#: How long the health checks' result is kept (the partial polls at this pace too).
HEALTH_SECONDS = 30


class BadParameter(ValueError):
    """A query parameter the page cannot take (answered 400 with this message)."""


# -- parameters -----------------------------------------------------------------------------


def _param(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    return (value.strip() or None) if value is not None else None


def choice(request: Request, name: str, choices: Mapping[str, Any], default: str) -> str:
    """The query parameter ``name``, one of ``choices`` (``default`` when absent)."""
    value = _param(request, name) or default
    if value not in choices:
        raise BadParameter(f"{name}: {value[:40]!r} is not one of {', '.join(choices)}")
    return value


def priority_param(request: Request) -> Priority | None:
    """``priority``: 1-3 or nrt / delayed / reprocessing; None when absent."""
    value = _param(request, "priority")
    if value is None:
        return None
    try:
        return Priority.parse(int(value) if value.isdigit() else value)
    except ValueError:
        names = ", ".join(f"{int(p)} ({p.label})" for p in Priority)
        raise BadParameter(f"priority: {value[:40]!r} is not one of {names}") from None


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within ``[low, high]``."""
    value = _param(request, name)
    if value is None:
        return default
    if not re.fullmatch(r"[0-9]{1,9}", value) or not low <= int(value) <= high:
        raise BadParameter(f"{name}: {value[:40]!r} is not a whole number from {low} to {high}")
    return int(value)


def known_job_types(session: Session, settings: Settings) -> list[str]:
    """The job types of the registry and those with jobs (from the maintained counts)."""
    names = set(load_job_types(settings)) | {job_type for job_type, _ in job_counts(session)}
    return sorted(names)


async def job_type_param(request: Request) -> tuple[str | None, list[str]]:
    """``type``: a known job type (None when absent), and the known types."""
    settings = request.app.state.settings
    types = await cached_read(request, ("ov:types",), known_job_types, settings)
    value = _param(request, "type")
    if value is not None and value not in types:
        known = ", ".join(types) or "none"
        raise BadParameter(f"type: unknown job type {value[:64]!r} (known: {known})")
    return value, types


def bad_request(request: Request, error: BadParameter) -> Response:
    """The 400 page naming the bad parameter."""
    return render(request, "error.html", 400, title="Bad request", message=str(error))


# -- links to the Jobs page -----------------------------------------------------------------


def jobs_link(**fields: Any) -> str:
    """The Jobs page filtered by ``fields`` (those of :class:`JobFilter`), with its own
    query-string format."""
    try:
        query = JobFilter(**fields).to_query()
    except ValueError:  # a job type outside the registry's naming rule: not filterable
        return "/jobs"
    return "/jobs?" + urlencode(query) if query else "/jobs"


_PLACEHOLDER = re.compile(r"<(?:n|path|hex|uuid)>")
#: The longest error fragment a failure group's link searches for.
FRAGMENT_LENGTH = 80


def error_fragment(group: FailureGroup) -> str | None:
    """A distinctive piece of a failure group's messages for the Jobs page's error search
    (a case-insensitive substring): the longest literal part of its pattern found in its
    example message; None when the pattern is all placeholders or there is no message."""
    if group.example_message is None or not group.example_message.strip():
        return None
    message = group.example_message.lower()
    pieces = sorted(
        (p.strip(" \t:;,.-=()[]'\"") for p in _PLACEHOLDER.split(group.pattern)),
        key=len,
        reverse=True,
    )
    for piece in pieces:
        piece = piece[:FRAGMENT_LENGTH].strip()
        if len(piece) >= 3 and piece.lower() in message:
            return piece
    return None


@dataclass(frozen=True)
class FailureRow:
    """A failure group with its links."""

    group: FailureGroup
    fragment: str | None
    #: The Jobs page: the group's type, its error fragment, changed in the window.
    jobs_url: str
    #: The same per current status.
    status_urls: dict[JobStatus, str]


def failure_rows(groups: list[FailureGroup], since: datetime) -> list[FailureRow]:
    """The groups with their links to the Jobs page."""
    rows = []
    for group in groups:
        fragment = error_fragment(group)
        common: dict[str, Any] = {
            "job_type": group.job_type,
            "error_text": fragment,
            "changed_from": since,
        }
        if fragment is None:  # the failed statuses, without the text
            common["statuses"] = tuple(group.statuses)
        rows.append(
            FailureRow(
                group,
                fragment,
                jobs_link(**common),
                {
                    status: jobs_link(**{**common, "statuses": (status,)})
                    for status in group.statuses
                },
            )
        )
    return rows


# -- health ---------------------------------------------------------------------------------


def _health_cache(app: Starlette) -> SharedCache:
    cache = getattr(app.state, "health_cache", None)
    if cache is None:  # made on first use, on the event loop (no race)
        cache = app.state.health_cache = SharedCache(HEALTH_SECONDS, max_entries=4)
    return cache


@dataclass(frozen=True)
class Health:
    """The health checks' results and when they ran."""

    checked_at: datetime
    results: list[CheckResult]


async def health_results(request: Request) -> Health:
    """Every health check's result, run at most once per :data:`HEALTH_SECONDS` whatever
    the number of browsers (off the event loop: a probe may wait for its timeout)."""
    settings = request.app.state.settings
    url = request.app.state.engine.url.render_as_string(hide_password=False)

    def compute() -> Health:
        checked_at = utc_now()
        return Health(checked_at, run_checks(settings, lambda: url))

    return await run_in_threadpool(_health_cache(request.app).get, "health", compute)


# -- pages ----------------------------------------------------------------------------------


@requires(Role.VIEWER)
async def overview_page(request: Request) -> Response:
    """Jobs by type and status, in flight against the caps, the oldest job per status,
    done and failed per hour (24 h or 7 d), and the services' health (loaded apart)."""
    try:
        window_name = choice(request, "window", THROUGHPUT_WINDOWS, "24h")
    except BadParameter as error:
        return bad_request(request, error)
    window, bucket = THROUGHPUT_WINDOWS[window_name]
    now = utc_now()
    view = await _overview(request, now)
    buckets = await cached_read(
        request, ("ov:throughput", window_name), throughput, now, window, bucket
    )
    return render(
        request,
        "overview.html",
        view=view,
        live=_live_context(view),
        window=window_name,
        windows=list(THROUGHPUT_WINDOWS),
        done=sum(b.done for b in buckets),
        failed=sum(b.failed for b in buckets),
        throughput_chart=charts.throughput_chart(buckets, bucket),
        failures_chart=charts.failures_chart(buckets, bucket),
    )


async def _overview(request: Request, now: datetime) -> Overview:
    settings = request.app.state.settings
    return await cached_read(request, ("ov:overview",), overview, settings, now)


def _live_context(view: Overview) -> dict[str, Any]:
    """The links of the live part: each matrix count, each oldest job."""
    counts = {
        (job_type, status): jobs_link(job_type=job_type, statuses=(status,))
        for job_type, by_status in view.summary.counts.items()
        for status in by_status
    }
    return {
        "count_urls": counts,
        "type_urls": {t: jobs_link(job_type=t) for t in view.summary.counts},
        "status_urls": {s: jobs_link(statuses=(s,)) for s in view.summary.statuses},
        "oldest_urls": {
            s: jobs_link(job_type=o.job_type, statuses=(s,), sort="changed_asc")
            for s, o in view.oldest_by_status.items()
        },
    }


@requires(Role.VIEWER)
async def overview_partial(request: Request) -> Response:
    """The Overview's live part (matrix, in flight, oldest per status), for htmx."""
    view = await _overview(request, utc_now())
    return render(request, "partials/ov_live.html", view=view, live=_live_context(view))


@requires(Role.VIEWER)
async def health_partial(request: Request) -> Response:
    """The health checks' results (``check``: one of them only), for htmx."""
    try:
        only = choice(request, "check", {"": None, **dict.fromkeys(CHECKS)}, "")
    except BadParameter as error:
        return bad_request(request, error)
    health = await health_results(request)
    results = [r for r in health.results if not only or r.name == only]
    return render(
        request,
        "partials/ov_health.html",
        results=results,
        only=only,
        checked_at=health.checked_at,
        health_seconds=HEALTH_SECONDS,
        health_timeout=request.app.state.settings.health_timeout_seconds,
    )


@requires(Role.VIEWER)
async def timeliness_page(request: Request) -> Response:
    """Input → output publication per type and priority over time against the target, the
    summary, and the late jobs."""
    try:
        window_name = choice(request, "window", TIMELINESS_WINDOWS, "24h")
        priority = priority_param(request)
        job_type, types = await job_type_param(request)
    except BadParameter as error:
        return bad_request(request, error)
    settings = request.app.state.settings
    window, bucket = TIMELINESS_WINDOWS[window_name]
    now = utc_now()
    key = (window_name, job_type, None if priority is None else int(priority))
    series = await cached_read(
        request,
        ("ov:timeliness", *key),
        timeliness,
        settings,
        now,
        window,
        bucket,
        job_type,
        priority,
    )
    late = await cached_read(
        request,
        ("ov:late", window_name, job_type),
        late_jobs,
        settings,
        now,
        window,
        LATE_SHOWN,
        job_type,
    )
    # late_jobs takes no priority: the priority filter keeps those of the LATE_SHOWN read.
    late_shown = [j for j in late if priority is None or j.priority == priority]
    tl_charts = [
        (
            total,
            charts.timeliness_chart(
                series.points(total.job_type, total.priority), bucket, series.target
            ),
        )
        for total in series.totals
    ]
    return render(
        request,
        "timeliness.html",
        series=series,
        charts=tl_charts,
        late=late_shown,
        late_read=len(late),
        late_limit=LATE_SHOWN,
        window=window_name,
        windows=list(TIMELINESS_WINDOWS),
        job_type=job_type,
        types=types,
        priority=priority,
        priorities=list(Priority),
    )


@requires(Role.VIEWER)
async def failures_page(request: Request) -> Response:
    """Failed jobs grouped by type and message pattern, with links to them."""
    try:
        window_name = choice(request, "window", FAILURE_WINDOWS, "24h")
    except BadParameter as error:
        return bad_request(request, error)
    window = FAILURE_WINDOWS[window_name]
    now = utc_now()
    groups = await cached_read(
        request, ("ov:failures", window_name), failure_groups, now, window, GROUPS_SHOWN
    )
    since = groups_since(now, window)
    return render(
        request,
        "failures.html",
        rows=failure_rows(groups, since),
        window=window_name,
        windows=list(FAILURE_WINDOWS),
        sample=FAILURE_SAMPLE,
        groups_limit=GROUPS_SHOWN,
    )


def groups_since(now: datetime, window: timedelta) -> datetime:
    """The start of a failure window, to the minute below (a stable link for the
    minute the cached groups are shown)."""
    return (now - window).replace(second=0, microsecond=0)


@requires(Role.VIEWER)
async def publication_page(request: Request) -> Response:
    """The outbox backlog and the jobs waiting for publication; the broker's health is
    loaded apart (the health partial)."""
    state = await cached_read(request, ("ov:publication",), publication_state, utc_now())
    return render(
        request,
        "publication.html",
        state=state,
        waiting_urls={s: jobs_link(statuses=(s,)) for s in state.jobs_waiting},
        oldest_urls={
            s: jobs_link(job_type=o.job_type, statuses=(s,), sort="changed_asc")
            for s, o in state.oldest_waiting.items()
        },
    )


def _stale(session: Session, settings: Settings, limit: int) -> list[StaleJob]:
    return stale_jobs(session, settings, load_job_types(settings), utc_now(), limit)


@requires(Role.VIEWER)
async def stale_page(request: Request) -> Response:
    """The ``joblife jobs stale`` report: jobs past their status's deadline, why, and what
    the service that polices the status will do."""
    try:
        limit = int_param(request, "limit", STALE_DEFAULT, 1, STALE_MAX)
    except BadParameter as error:
        return bad_request(request, error)
    settings = request.app.state.settings
    rows = await cached_read(request, ("ov:stale", limit), _stale, settings, limit)
    reasons: dict[str, int] = {}
    for row in rows:
        reasons[row.action] = reasons.get(row.action, 0) + 1
    return render(
        request,
        "stale.html",
        rows=rows,
        limit=limit,
        limit_max=STALE_MAX,
        by_action=sorted(reasons.items(), key=lambda item: -item[1]),
    )


routes = [
    Route("/", overview_page),
    Route("/partials/overview", overview_partial),
    Route("/partials/health", health_partial),
    Route("/timeliness", timeliness_page),
    Route("/failures", failures_page),
    Route("/publication", publication_page),
    Route("/stale", stale_page),
]
