"""Timeliness: from an input product's publication to its output's publication, per job
type (``job_timeliness_summary``, on the jobs of the ``job_timeliness`` view).

A window reads two index ranges (revision 0014): the outputs published in it
(``ix_jobs_output_published``) and the jobs still pending whose input was published in it
(``ix_jobs_publication_pending``). Without ``since`` every published job is read
(all-time percentiles cannot be maintained as jobs change)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

_SUMMARY = text(
    "SELECT * FROM job_timeliness_summary(make_interval(secs => :target), :since, :until)"
)


@dataclass(frozen=True, slots=True)
class TimelinessRow:
    """One job type's timeliness over the window (seconds; None without publication)."""

    job_type: str
    published: int
    pending: int
    p50_seconds: float | None
    p90_seconds: float | None
    p99_seconds: float | None
    max_seconds: float | None
    within_target: int
    within_target_share: float | None


def timeliness_summary(
    session: Session,
    target: timedelta,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[TimelinessRow]:
    """Per job type: jobs whose output was published in ``[since, until)``, their
    p50/p90/p99/max input→output time and the share within ``target``; ``pending``:
    jobs whose input was published in the window and whose output is not yet."""
    rows = session.execute(
        _SUMMARY, {"target": target.total_seconds(), "since": since, "until": until}
    )
    return [TimelinessRow(**row._mapping) for row in rows]
