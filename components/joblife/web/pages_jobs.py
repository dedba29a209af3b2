"""The Jobs page (a filtered, sorted list of jobs, page after page, with bulk actions) and
the Job page (everything about one job, with the actions its status allows).

The Jobs page's filter is its query string (:class:`~joblife.web.job_reads.JobFilter`'s
format, so a URL is a shareable view); pages follow each other by keyset cursor
(``after=``), never by offset. A bad value is answered 400 with the form and the reason.
Both pages read fresh data (no shared cache: an operator acts on what they see); their
reads are bounded (see :mod:`joblife.web.job_reads`).

The action controls are shown to operators only; the action endpoints
(:mod:`joblife.web.actions`) refuse anyone else anyway.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from joblife.config import Settings
from joblife.executors.local import REFERENCE_PREFIX as LOCAL_REFERENCE_PREFIX
from joblife.model.priority import Priority
from joblife.model.status import ERROR_STATUSES, FINAL_STATUSES, JobStatus, is_allowed
from joblife.web.actions import ACTIONS
from joblife.web.database import cached_read, read
from joblife.web.filter_query import parse_filter
from joblife.web.job_reads import (
    MAX_PAGE,
    PRODUCT_CANDIDATES,
    SCAN_LIMIT,
    SORTS,
    Attempt,
    JobDetail,
    JobFilter,
    JobPage,
    decode_cursor,
    job_detail,
    search_jobs,
)
from joblife.web.pages_overview import jobs_link, known_job_types
from joblife.web.render import duration, render, timestamp
from joblife.web.security import requires
from joblife.web.users import Role

S = JobStatus

#: Jobs per page unless ``limit=`` says otherwise.
PAGE_SIZE = 50
#: Characters of a row's last message the list shows (the whole one is its tooltip).
MESSAGE_SHOWN = 80
#: The form fields of the filter (query keys of :data:`~joblife.web.job_reads.QUERY_KEYS`).
_TEXT_KEYS = ("type", "priority", "changed_from", "changed_to", "product", "error", "sort")

#: The statuses each action of the Job page is offered in (the procedures decide: a
#: button shown for a job that changed meanwhile is refused with the reason).
RETRY_STATUSES = frozenset({S.EXTERNAL_ERROR, S.INTERNAL_ERROR, S.ERROR_CHECKED})
ACKNOWLEDGE_STATUSES = ERROR_STATUSES
#: Republish: a done job, or a failed one whose current attempt has outbox rows.
REPUBLISH_FAILED_STATUSES = RETRY_STATUSES


# -- the Jobs page --------------------------------------------------------------------------


class BadListParameter(ValueError):
    """A query parameter of the Jobs page that is not a filter field (``after``, ``limit``)."""


def _limit(params: Mapping[str, str]) -> int:
    value = (params.get("limit") or "").strip()
    if not value:
        return PAGE_SIZE
    if not re.fullmatch(r"[0-9]{1,4}", value) or not 1 <= int(value) <= MAX_PAGE:
        raise BadListParameter(f"limit: {value[:40]!r} is not a whole number from 1 to {MAX_PAGE}")
    return int(value)


def list_url(flt: JobFilter, limit: int = PAGE_SIZE, after: str | None = None) -> str:
    """The Jobs page of ``flt`` (``limit`` when not the default, from the cursor ``after``)."""
    query = flt.to_query()
    if limit != PAGE_SIZE:
        query["limit"] = str(limit)
    if after is not None:
        query["after"] = after
    return "/jobs?" + urlencode(query) if query else "/jobs"


def _form_values(query: Mapping[str, str], statuses: list[str]) -> dict[str, Any]:
    """What the filter form shows: the text fields and the ticked statuses."""
    values: dict[str, Any] = {key: query.get(key) or "" for key in _TEXT_KEYS}
    values["status"] = set(statuses)
    return values


def _raw_statuses(request: Request) -> list[str]:
    return [
        name.strip()
        for value in request.query_params.getlist("status")
        for name in value.split(",")
        if name.strip()
    ]


@requires(Role.VIEWER)
async def jobs_page(request: Request) -> Response:
    """GET /jobs: the jobs of the filter in the query string, a page at a time."""
    settings: Settings = request.app.state.settings
    params = request.query_params
    types = await cached_read(request, ("ov:types",), known_job_types, settings)
    error: str | None = None
    page: JobPage | None = None
    flt: JobFilter | None = None
    limit = PAGE_SIZE
    after = (params.get("after") or "").strip() or None
    try:
        flt = parse_filter(params)
        limit = _limit(params)
        if after is not None:
            decode_cursor(after, flt.sort)  # refused here, not from inside the read
    except ValueError as problem:  # a bad filter value, cursor or limit
        error = str(problem)
    else:  # outside the try: a ValueError of the read itself is a bug, not a bad request
        page = await read(request, search_jobs, flt, after=after, limit=limit)
    if flt is not None and page is not None:
        query = flt.to_query()
        form = _form_values(query, [s.label for s in flt.statuses])
    else:
        form = _form_values(params, _raw_statuses(request))
    if form["type"] and form["type"] not in types:
        types = [*types, form["type"]]  # keep the form's value (it matches no job)
    user = request.state.user
    context: dict[str, Any] = {
        "form": form,
        "types": types,
        "statuses": list(JobStatus),
        "priorities": list(Priority),
        "sorts": SORTS,
        "limit": limit,
        "page_size": PAGE_SIZE,
        "error": error,
        "page": page,
        "can_act": user.may(Role.OPERATOR),
        "actions": ACTIONS,
        "scan_limit": SCAN_LIMIT,
        "product_candidates": PRODUCT_CANDIDATES,
        "message_shown": MESSAGE_SHOWN,
    }
    if flt is not None and page is not None:
        context.update(
            filter_fields={f"f_{key}": value for key, value in flt.to_query().items()},
            next_url=list_url(flt, limit, page.next_cursor) if page.next_cursor else None,
            first_url=list_url(flt, limit) if after is not None else None,
        )
    return render(request, "jobs.html", 400 if error else 200, **context)


# -- the Job page ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shown:
    """A value as the Job page shows it: text, a JSON block, or a link."""

    text: str
    #: JSON (a dict or a list): shown in a collapsible ``<pre>``.
    block: bool = False
    href: str | None = None


def web_url(value: object) -> str | None:
    """``value`` if it is an http(s) URL (a link a browser can follow), else None: file
    paths, ``s3://`` and ``file://`` URLs and storage keys are shown as text, never linked."""
    if not isinstance(value, str):
        return None
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return None
    if parts.scheme.lower() in ("http", "https") and parts.netloc:
        return value.strip()
    return None


def shown(value: object) -> Shown:
    """How the Job page shows one field's value."""
    if value is None:
        return Shown("-")
    if isinstance(value, datetime):
        return Shown(timestamp(value))
    if isinstance(value, timedelta):
        return Shown(duration(value))
    if isinstance(value, (dict, list)):
        return Shown(json.dumps(value, indent=2, sort_keys=True, default=str), block=True)
    return Shown(str(value))


def nomad_ui_link(settings: Settings, reference: str | None) -> str | None:
    """The Nomad UI page of a dispatched child job (``<ui>/jobs/<id>``, ``@<namespace>``
    when a namespace is configured: the UI's form for a namespaced job); None without a
    UI address or for a reference that is not a Nomad job id (``local:...``)."""
    ui = settings.web_nomad_ui_url
    if not ui or not reference or reference.startswith(LOCAL_REFERENCE_PREFIX):
        return None
    target = quote(reference, safe="")
    if settings.nomad_namespace:
        target += "@" + quote(settings.nomad_namespace, safe="")
    return f"{ui.rstrip('/')}/jobs/{target}"


def allowed_actions(detail: JobDetail) -> list[str]:
    """The actions the job's current status allows (keys of :data:`ACTIONS`), in the
    order of the page's buttons."""
    status = detail.status
    allowed = []
    if status in RETRY_STATUSES:
        allowed.append("retry")
    if status in ACKNOWLEDGE_STATUSES:
        allowed.append("acknowledge")
    current_rows = any(p["state"] != "superseded" for p in detail.publications)
    if status is S.DONE or (status in REPUBLISH_FAILED_STATUSES and current_rows):
        allowed.append("republish")
    if is_allowed(status, S.CANCELLED):
        allowed.append("cancel")
    return allowed


@dataclass(frozen=True, slots=True)
class AttemptView:
    """An attempt with its links."""

    attempt: Attempt
    #: The Nomad UI page of its execution.
    nomad_url: str | None
    #: Its uploaded logs, when an http(s) URL.
    logs_url: str | None
    #: Whether its log lines are the page's log tail (shown once, in their own panel).
    tail_shown: bool
    #: Seconds per worker step, in the order the worker runs them.
    steps: list[tuple[str, float]]


#: The worker's steps in the order it runs them (others follow, by name).
_STEP_ORDER = ("pre_processing", "processing", "post_processing")


def _steps(durations: Mapping[str, float]) -> list[tuple[str, float]]:
    def rank(step: str) -> tuple[int, str]:
        return (_STEP_ORDER.index(step) if step in _STEP_ORDER else len(_STEP_ORDER), step)

    return [(step, durations[step]) for step in sorted(durations, key=rank)]


def _attempt_views(detail: JobDetail, settings: Settings) -> list[AttemptView]:
    tail_owner = next((a.number for a in reversed(detail.attempts) if a.log_tail), None)
    return [
        AttemptView(
            attempt=attempt,
            nomad_url=nomad_ui_link(settings, attempt.reference),
            logs_url=web_url(attempt.logs_url),
            tail_shown=attempt.number == tail_owner,
            steps=_steps(attempt.durations),
        )
        for attempt in detail.attempts
    ]


@requires(Role.VIEWER)
async def job_page(request: Request) -> Response:
    """GET /jobs/{id}: everything about one job."""
    settings: Settings = request.app.state.settings
    job_id: int = request.path_params["job_id"]
    detail = await read(request, job_detail, job_id, settings)
    if detail is None:
        return render(
            request, "error.html", 404, title="No such job", message=f"There is no job {job_id}."
        )
    # The bars' scale: the job's life, without the time since it reached a final status
    # (a job done months ago would shrink every other step to nothing).
    total = sum(
        step.duration.total_seconds()
        for step in detail.timeline
        if not (step.current and step.status in FINAL_STATUSES)
    )
    outputs = detail.outputs
    return render(
        request,
        "job.html",
        detail=detail,
        fields=[(name, shown(value)) for name, value in detail.job.items()],
        type_fields=(
            [(name, shown(value)) for name, value in detail.type_fields.items()]
            if detail.type_fields is not None
            else None
        ),
        timeline_seconds=max(total, 0.001),
        attempts=_attempt_views(detail, settings),
        outputs=[
            ("output path", Shown(outputs.output_path or "-", href=web_url(outputs.output_path))),
            ("outputs", Shown(outputs.url or "-", href=web_url(outputs.url))),
            ("by attempt", shown(outputs.attempt)),
            ("produced at", shown(outputs.produced_at)),
            ("files", shown(outputs.files)),
            ("bytes", shown(outputs.bytes)),
            ("published at", shown(outputs.output_publication_date)),
        ],
        allowed=allowed_actions(detail),
        actions=ACTIONS,
        can_act=request.state.user.may(Role.OPERATOR),
        type_url=jobs_link(job_type=detail.job_type),
    )


routes = [
    Route("/jobs", jobs_page),
    Route("/jobs/{job_id:int}", job_page),
]
