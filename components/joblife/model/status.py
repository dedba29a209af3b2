"""The 16 job statuses and the transitions allowed between them.

The database is the authority (tables ``job_statuses`` and ``job_status_transitions``,
seeded by the first migration); this module mirrors it for Python code, and a test checks
that both agree. Ids and names are those of the system joblife replaces.
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Self


class NamedIntEnum(IntEnum):
    """An IntEnum shown and parsed by its lower-case name (as stored in lookup tables)."""

    def __str__(self) -> str:
        return self.name.lower()

    @property
    def label(self) -> str:
        """The lower-case name."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: Self | str | int) -> Self:
        """Accept a member, its name (any case) or its value; ValueError names the choices."""
        if isinstance(value, cls):
            return value
        if isinstance(value, int):
            return cls(value)
        try:
            return cls[value.strip().upper()]
        except KeyError:
            names = ", ".join(member.label for member in cls)
            kind = re.sub(r"(?<!^)(?=[A-Z])", " ", cls.__name__).lower()  # JobStatus: job status
            raise ValueError(f"unknown {kind} {value!r} (known: {names})") from None


class JobStatus(NamedIntEnum):
    """A job status; the value is the id in ``job_statuses``, ``str()`` is its name."""

    INITIALIZED = 1
    CONFIGURED = 2  # waiting for a dependency
    READY = 3
    QUEUED = 4  # dispatch requested
    STARTED = 5
    PRE_PROCESSING = 6
    PROCESSING = 7
    POST_PROCESSING = 8
    PROCESSED = 9
    START_PUBLICATION = 10
    PUBLISHED = 11
    DONE = 12
    INTERNAL_ERROR = 13  # a bug: never retried automatically
    EXTERNAL_ERROR = 14  # a dependency failed: retried with backoff
    ERROR_CHECKED = 15  # an operator acknowledged the error
    CANCELLED = 16


S = JobStatus

#: Statuses a job is created in (the transition from "no status yet").
CREATION_STATUSES: frozenset[JobStatus] = frozenset({S.INITIALIZED, S.CANCELLED})

#: Statuses a job never leaves by itself (``done`` may still be republished by an operator).
FINAL_STATUSES: frozenset[JobStatus] = frozenset({S.DONE, S.CANCELLED})

#: Statuses in which an execution may be alive (queued ... post_processing).
IN_FLIGHT_STATUSES: frozenset[JobStatus] = frozenset(
    {S.QUEUED, S.STARTED, S.PRE_PROCESSING, S.PROCESSING, S.POST_PROCESSING}
)

#: Statuses that count as failed until an operator or the retry policy acts.
ERROR_STATUSES: frozenset[JobStatus] = frozenset({S.INTERNAL_ERROR, S.EXTERNAL_ERROR})


def _allowed_transitions() -> frozenset[tuple[JobStatus, JobStatus]]:
    pairs: set[tuple[JobStatus, JobStatus]] = {
        (S.INITIALIZED, S.CONFIGURED),
        (S.INITIALIZED, S.READY),
        (S.INITIALIZED, S.CANCELLED),
        (S.CONFIGURED, S.READY),
        (S.CONFIGURED, S.CANCELLED),
        (S.READY, S.QUEUED),
        (S.READY, S.CANCELLED),
        (S.QUEUED, S.STARTED),
        (S.STARTED, S.PRE_PROCESSING),
        (S.PRE_PROCESSING, S.PROCESSING),
        (S.PROCESSING, S.POST_PROCESSING),
        (S.POST_PROCESSING, S.PROCESSED),
        (S.PROCESSED, S.START_PUBLICATION),
        (S.PROCESSED, S.DONE),
        (S.START_PUBLICATION, S.PUBLISHED),
        (S.PUBLISHED, S.DONE),
        (S.DONE, S.START_PUBLICATION),  # republish
        (S.EXTERNAL_ERROR, S.READY),  # automatic retry
        (S.EXTERNAL_ERROR, S.ERROR_CHECKED),
        (S.EXTERNAL_ERROR, S.INTERNAL_ERROR),
        (S.EXTERNAL_ERROR, S.CANCELLED),
        (S.INTERNAL_ERROR, S.ERROR_CHECKED),
        (S.INTERNAL_ERROR, S.CANCELLED),
        (S.ERROR_CHECKED, S.INITIALIZED),
        (S.ERROR_CHECKED, S.READY),
        (S.ERROR_CHECKED, S.PROCESSED),
        (S.ERROR_CHECKED, S.CANCELLED),
    }
    # Every non-terminal, non-error status may fail either way.
    non_terminal = set(JobStatus) - FINAL_STATUSES - ERROR_STATUSES - {S.ERROR_CHECKED}
    for status in non_terminal:
        pairs.add((status, S.INTERNAL_ERROR))
        pairs.add((status, S.EXTERNAL_ERROR))
    # A running execution may be cancelled.
    for status in IN_FLIGHT_STATUSES:
        pairs.add((status, S.CANCELLED))
    return frozenset(pairs)


#: Every allowed (from, to) pair; nothing else is allowed, and there is no "any status" escape.
ALLOWED_TRANSITIONS: frozenset[tuple[JobStatus, JobStatus]] = _allowed_transitions()


def is_allowed(old: JobStatus | None, new: JobStatus) -> bool:
    """Whether ``old → new`` is allowed; ``old`` None means a job being created."""
    if old is None:
        return new in CREATION_STATUSES
    return (old, new) in ALLOWED_TRANSITIONS
