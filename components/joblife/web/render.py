"""Rendering: the Jinja2 templates shipped in the package, their filters, and the context
every page gets (the user, the CSRF token, the navigation, the refresh interval)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from joblife import __version__
from joblife.model.status import JobStatus
from joblife.web.security import CSRF_FIELD, CSRF_HEADER, csrf_token

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"

#: The pages of the navigation bar: (path, title).
NAVIGATION = (
    ("/", "Overview"),
    ("/timeliness", "Timeliness"),
    ("/jobs", "Jobs"),
    ("/failures", "Failures"),
    ("/publication", "Publication"),
    ("/stale", "Stale"),
)


def duration(seconds: float | timedelta | None) -> str:
    """A duration for people: 850 ms, 12.3 s, 4 min 05 s, 3 h 07 min, 2 d 04 h."""
    if seconds is None:
        return "-"
    if isinstance(seconds, timedelta):
        seconds = seconds.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours:02d} h"


def timestamp(value: datetime | None) -> str:
    """A UTC time to the second (``2026-12-05 12:34:56Z``); - for none."""
    if value is None:
        return "-"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%SZ")


def status_label(status: JobStatus | int | str) -> str:
    """A status's name, whatever form it comes in."""
    if isinstance(status, str):
        return status
    return JobStatus(status).label


def as_json(value: Any) -> str:
    """Pretty JSON for a details panel (dates and other objects as text)."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def number(value: int | float | None) -> str:
    """A count with thousands separators."""
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


def make_templates() -> Jinja2Templates:
    """The templates with joblife's filters (autoescaping on: page content is untrusted)."""
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    templates.env.filters.update(
        duration=duration,
        timestamp=timestamp,
        status=status_label,
        as_json=as_json,
        number=number,
    )
    templates.env.globals.update(
        navigation=NAVIGATION,
        version=__version__,
        csrf_field=CSRF_FIELD,
        csrf_header=CSRF_HEADER,
    )
    return templates


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    """``template`` rendered with ``context`` and what every page needs."""
    settings = request.app.state.settings
    context.update(
        user=getattr(request.state, "user", None),
        csrf_token=csrf_token(request),
        refresh_seconds=settings.web_refresh_seconds,
        now=datetime.now(UTC),
        flash=request.session.pop("flash", None),
    )
    return request.app.state.templates.TemplateResponse(
        request, template, context, status_code=status_code
    )
