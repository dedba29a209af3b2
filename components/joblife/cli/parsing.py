"""Parsing of option values: status names, durations, points in time (a date/time or a
duration back from now), ``jobs list`` page cursors. Errors are ValueErrors saying what is
expected; the commands make them usage errors (:func:`joblife.cli.usage.usage`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from joblife.model.status import JobStatus

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(?:\d+(?:\.\d+)?\s*[smhdw]\s*)+$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: ``ID`` or ``ID@TIME``: what --before accepts (TIME checked by datetime.fromisoformat).
_PAGE_CURSOR = re.compile(r"^([0-9]{1,19})(?:@(\S+))?$")
#: The largest job id (jobs.id is a bigint): a larger number names no job.
JOB_ID_MAX = 2**63 - 1


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


@dataclass(frozen=True, slots=True)
class PageCursor:
    """Where a page of ``jobs list`` ended, for the next page (``--before``): the list's
    key, (status_changed_at, id), of the last job printed. ``status_changed_at`` None (a
    bare job id) stands for that job's current status change time, read when the next
    page is: it moves when the job changes status."""

    job_id: int
    status_changed_at: datetime | None = None

    def __str__(self) -> str:
        """``ID@TIME``, TIME in UTC to the microsecond (PostgreSQL's precision, so the key
        is exact): ``1234@2026-12-05T14:48:30.123456Z``, nothing the shell interprets."""
        if self.status_changed_at is None:
            return str(self.job_id)
        moment = self.status_changed_at.astimezone(UTC).isoformat(timespec="microseconds")
        return f"{self.job_id}@{moment.replace('+00:00', 'Z')}"


def parse_page_cursor(text: str) -> PageCursor:
    """``ID@TIME`` (the next-page hint of ``jobs list``; TIME an ISO 8601 date-time with
    its offset, ``Z`` for UTC) or a bare job ``ID``."""
    problem = (
        f"invalid page cursor {text[:80]!r}: give the ID@TIME the previous page printed "
        "(1234@2026-12-05T14:48:30.123456Z) or a job ID"
    )
    match = _PAGE_CURSOR.match(text.strip())
    if match is None:
        raise ValueError(problem)
    try:
        moment = datetime.fromisoformat(match[2]) if match[2] else None
    except ValueError:
        raise ValueError(problem) from None
    try:
        return page_key(int(match[1]), moment)
    except ValueError as exc:
        raise ValueError(f"{problem} ({exc})" if str(exc) else problem) from None


def page_key(job_id: int, moment: datetime | None) -> PageCursor:
    """The list position (job id, status change time in UTC) of a page cursor, as the
    database can take it: ValueError (saying why, or empty) for an id beyond a bigint, a
    time without its offset (a local time would shift the key), an offset PostgreSQL
    refuses (whole seconds within ±15:59:59) or a time out of range in UTC. Shared by
    ``jobs list --before`` and the dashboard's Jobs page cursor."""
    if not 0 <= job_id <= JOB_ID_MAX:
        raise ValueError("")
    if moment is None:
        return PageCursor(job_id)
    if moment.tzinfo is None:
        raise ValueError("the time needs its offset, Z for UTC")
    offset = moment.utcoffset()
    if offset is None or abs(offset) >= timedelta(hours=16) or offset.microseconds:
        raise ValueError("an offset between -15:59 and +15:59")
    try:
        return PageCursor(job_id, moment.astimezone(UTC))
    except OverflowError:  # out of range in UTC
        raise ValueError("") from None
