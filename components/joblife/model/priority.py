"""Priority levels. Lower values are served first by every work-selection query."""

from __future__ import annotations

from joblife.model.status import NamedIntEnum


class Priority(NamedIntEnum):
    """How urgently a job should run; stored as ``jobs.priority`` (smallint)."""

    NRT = 1  # near real time: a freshly published product
    DELAYED = 2  # published late, still operational
    REPROCESSING = 3  # a reprocessing campaign: runs when nothing else waits
