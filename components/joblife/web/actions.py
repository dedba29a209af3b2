"""Operator actions from the dashboard: retry, cancel, acknowledge and republish, on one
job, on selected jobs, or on every job matching the Jobs page's filter.

Each goes through the same operator procedures as the CLI (``joblife jobs retry|cancel|
check|republish``), all or nothing over its jobs, in one transaction that names the
logged-in operator, so the history records who did it. Only operators reach these
endpoints, and only with the session's CSRF token (see :func:`joblife.web.security.requires`).
A bulk action first shows how many jobs it will change and asks for confirmation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import urlencode

from sqlalchemy.orm import Session
from starlette.datastructures import MultiDict
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from joblife.cli.parsing import JOB_ID_MAX
from joblife.db.status import StatusChange, acknowledge_jobs, retry_jobs
from joblife.errors import JoblifeError
from joblife.lifecycle.cancellation import cancel_and_stop
from joblife.publication.outbox import republish
from joblife.web.database import read, write
from joblife.web.filter_query import parse_filter
from joblife.web.job_reads import JobFilter, matching_ids
from joblife.web.render import render
from joblife.web.security import requires
from joblife.web.users import Role

log = logging.getLogger(__name__)

#: The most jobs one bulk action changes (one transaction); the confirmation says when a
#: filter matches more.
BULK_CAP = 10_000
#: Ids shown on the confirmation page.
CONFIRM_SHOWN = 50
#: The longest Jobs page URL a bulk action redirects back to (else the bare list).
MAX_BACK_URL = 4096

Operation = Callable[..., list[StatusChange]]


@dataclass(frozen=True)
class Action:
    """One operator action: its form value, words for the page, and the procedure."""

    name: str
    verb: str  # past tense, for the result
    title: str
    operation: Operation | None  # None: cancel (needs the executor)


ACTIONS = {
    action.name: action
    for action in (
        Action("retry", "retried", "Retry", retry_jobs),
        Action("cancel", "cancelled", "Cancel", None),
        Action("acknowledge", "acknowledged", "Acknowledge (check error)", acknowledge_jobs),
        Action("republish", "republished", "Republish", republish),
    )
}


class _Executors:
    """The executor that stops a cancelled job's running execution, made on first use
    (the CLI's ``jobs cancel`` does the same)."""

    @cached_property
    def executor(self):
        from joblife.executors import build_executor

        return build_executor(dispatching=False)


_EXECUTORS = _Executors()


def _apply(
    session: Session, action: Action, ids: Sequence[int], message: str | None, operator: str
) -> list[StatusChange]:
    if action.operation is None:
        return cancel_and_stop(session, _EXECUTORS.executor, ids, message, operator=operator)
    return action.operation(session, ids, message, operator=operator)


async def _perform(
    request: Request, action: Action, ids: Sequence[int], message: str | None
) -> str | None:
    """Apply ``action`` to ``ids`` as the logged-in operator; the refusal's text if refused
    (nothing changed then), None on success."""
    operator = request.state.user.name
    try:
        changes = await write(request, _apply, action, ids, message, operator)
    except JoblifeError as error:
        log.info("dashboard %s by %s refused: %s", action.name, operator, error)
        return str(error)
    log.info("dashboard %s by %s: %d jobs", action.name, operator, len(changes))
    request.session["flash"] = {
        "kind": "ok",
        "text": f"{action.verb} {len(changes)} job{'' if len(changes) == 1 else 's'}",
    }
    request.app.state.cache.clear()
    return None


def _flash_error(request: Request, text: str) -> None:
    request.session["flash"] = {"kind": "error", "text": text}


@requires(Role.OPERATOR)
async def job_action(request: Request) -> Response:
    """POST /jobs/{id}/action: one job, from its page."""
    job_id: int = request.path_params["job_id"]
    if job_id > JOB_ID_MAX:
        return render(request, "error.html", 404, message=f"no job {job_id}")
    form = await request.form()
    action = ACTIONS.get(str(form.get("action", "")))
    if action is None:
        return render(request, "error.html", 400, message="unknown action")
    message = str(form.get("message", "")).strip() or None
    refusal = await _perform(request, action, [job_id], message)
    if refusal is not None:
        _flash_error(request, f"{action.title} refused: {refusal}")
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@requires(Role.OPERATOR)
async def bulk_action(request: Request) -> Response:
    """POST /jobs/actions: the selected jobs (``job_id`` fields), or every job matching
    the filter (``scope=filter`` and the filter's fields). Without ``confirmed``, a page
    asking for confirmation with the count; with it, the action."""
    form = await request.form()
    action = ACTIONS.get(str(form.get("action", "")))
    if action is None:
        return render(request, "error.html", 400, message="unknown action")
    message = str(form.get("message", "")).strip() or None
    # The filter's fields, repeated ones (status) kept: (name, value) pairs.
    filter_fields = [
        (key, value)
        for key, value in form.multi_items()
        if key.startswith("f_") and isinstance(value, str) and value
    ]
    query = MultiDict([(key[2:], value) for key, value in filter_fields])
    back = _list_url(query)
    flt: JobFilter | None = None
    ids: list[int] = []
    try:
        if form.get("confirmed") == "yes":  # exactly the jobs the confirmation showed
            ids = _parse_ids(str(form.get("ids", "")).split(","))
        elif form.get("scope") == "filter":
            flt = parse_filter(query)
        else:
            ids = _parse_ids(form.getlist("job_id"))
    except ValueError as error:  # the form's ids or filter: refused before any read
        _flash_error(request, f"{action.title}: {error}")
        return RedirectResponse(back, status_code=303)
    truncated = False
    if flt is not None:  # outside the try: a ValueError of the read is a bug, not the form's
        ids, truncated = await read(request, matching_ids, flt, BULK_CAP)
    if not ids:
        _flash_error(request, f"{action.title}: no job selected")
        return RedirectResponse(back, status_code=303)
    if form.get("confirmed") != "yes":
        return render(
            request,
            "confirm.html",
            action=action,
            ids=ids,
            shown=ids[:CONFIRM_SHOWN],
            truncated=truncated,
            cap=BULK_CAP,
            message=message,
            filter_fields=filter_fields,
            back=back,
        )
    refusal = await _perform(request, action, ids, message)
    if refusal is not None:
        _flash_error(request, f"{action.title} refused, nothing changed: {refusal}")
    return RedirectResponse(back, status_code=303)


def _list_url(query: MultiDict) -> str:
    """The Jobs page of the filter the form carried (which says why, if it refuses it),
    or the bare list when that URL would be longer than :data:`MAX_BACK_URL`: the posted
    fields are echoed in the redirect's Location, which a proxy or browser refuses past a
    few kilobytes."""
    url = f"/jobs?{urlencode(query.multi_items())}" if query else "/jobs"
    return url if len(url) <= MAX_BACK_URL else "/jobs"


def _parse_ids(values: Sequence[object]) -> list[int]:
    """Job ids from form fields; ValueError for anything but positive integers."""
    ids = set()
    for value in values:
        text = str(value).strip()
        if not text:
            continue
        if not text.isdigit() or int(text) > JOB_ID_MAX:
            raise ValueError(f"not a job id: {text[:30]!r}")
        ids.add(int(text))
    if len(ids) > BULK_CAP:
        raise ValueError(f"at most {BULK_CAP:,} jobs per action")
    return sorted(ids)


routes = [
    Route("/jobs/actions", bulk_action, methods=["POST"]),
    Route("/jobs/{job_id:int}/action", job_action, methods=["POST"]),
]
