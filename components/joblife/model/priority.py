"""Priority levels. Lower values are served first by every work-selection query."""

from __future__ import annotations

from enum import IntEnum


class Priority(IntEnum):
    """How urgently a job should run; stored as ``jobs.priority`` (smallint)."""

    NRT = 1  # near real time: a freshly published product
    DELAYED = 2  # published late, still operational
    REPROCESSING = 3  # a reprocessing campaign: runs when nothing else waits

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: Priority | str | int) -> Priority:
        """Accept a level, its name (any case) or its value."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, int):
            return cls(value)
        try:
            return cls[value.strip().upper()]
        except KeyError:
            names = ", ".join(str(p) for p in cls)
            raise ValueError(f"unknown priority {value!r} (known: {names})") from None
