"""Parsing of option values: status names, durations, points in time (a date/time or a
duration back from now). Errors are ValueErrors saying what is expected; the commands make
them usage errors (:func:`joblife.cli.usage.usage`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from joblife.model.status import JobStatus

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(?:\d+(?:\.\d+)?\s*[smhdw]\s*)+$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_statuses(values: Iterable[str] | None) -> list[JobStatus]:
    """Status names (repeated options, or comma-separated) → statuses, in the given order,
    without duplicates. ValueError naming the known statuses for an unknown name."""
    from joblife.model.status import JobStatus

    statuses: list[JobStatus] = []
    for value in values or ():
        for name in value.split(","):
            if not name.strip():
                continue
            status = JobStatus.parse(name)
            if status not in statuses:
                statuses.append(status)
    return statuses


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``2h``, ``3d``, ``1w``, or a sum such as ``1h30m``."""
    if not _DURATION.match(text):
        raise ValueError(f"invalid duration {text!r} (examples: 30m, 2h, 3d, 1w, 1h30m)")
    seconds = sum(
        float(number) * _UNIT_SECONDS[unit.lower()] for number, unit in _DURATION_PART.findall(text)
    )
    return timedelta(seconds=seconds)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A point in time (``--since``, ``--until``): an ISO 8601 date or date-time (local
    time when it has no offset) or a duration back from now (``2h``, ``3d``). Always
    timezone-aware."""
    now = now or datetime.now(UTC)
    if _DURATION.match(text):
        return now - parse_duration(text)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"invalid point in time {text!r}: give a date or date-time (2026-11-01, "
            "2026-11-01T08:00+00:00) or a duration back from now (30m, 2h, 3d, 1w)"
        ) from None
    return moment if moment.tzinfo is not None else moment.astimezone()
