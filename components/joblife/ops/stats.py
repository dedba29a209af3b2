"""Statistics per job type over a period, from the status history.

Every figure counts status changes whose time falls in ``[since, until)``:

- ``created``: jobs created; ``done``: jobs that reached done (a republished job once);
  ``cancelled``; ``failed``: changes into ``internal_error`` / ``external_error``;
- attempts: ``started`` (queued → started), ``succeeded`` (→ processed), ``failed`` (a
  running attempt → an error), ``success_rate`` = succeeded / (succeeded + failed), and the
  mean ``attempt`` number of the jobs done;
- durations (seconds, p50 and p90): each worker step, from the step durations the worker
  records with ``processed``, and ``turnaround`` (creation → done).

One pass over the history of the period (a range of ``ix_job_status_changes_time``,
revision 0014), each change's job read by its key: the cost grows with the changes of the
period, not with the history kept or the number of jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

STEPS = ("pre_processing", "processing", "post_processing")

_PCT = "percentile_cont({q}) WITHIN GROUP (ORDER BY {expr}) FILTER (WHERE c.status = {status})"


def _step(step: str) -> str:
    return f"(c.details->'durations'->>'{step}')::float8"


_TURNAROUND = "extract(epoch FROM c.time - j.created_at)"
_DURATIONS = {**{step: (_step(step), 9) for step in STEPS}, "turnaround": (_TURNAROUND, 12)}
_QUERY = text(
    f"""
    SELECT j.job_type,
           count(*) FILTER (WHERE c.previous_status IS NULL) AS created,
           count(DISTINCT c.job_id) FILTER (WHERE c.status = 12) AS done,
           count(*) FILTER (WHERE c.status = 16) AS cancelled,
           count(*) FILTER (WHERE c.status = 13) AS internal_error,
           count(*) FILTER (WHERE c.status = 14) AS external_error,
           count(*) FILTER (WHERE c.status = 5) AS attempts_started,
           count(*) FILTER (WHERE c.status = 9) AS attempts_succeeded,
           count(*) FILTER (WHERE c.status IN (13, 14)
                            AND c.previous_status IN (4, 5, 6, 7, 8)) AS attempts_failed,
           avg(j.attempt) FILTER (WHERE c.status = 12) AS mean_attempts_done,
           {
        ", ".join(
            _PCT.format(q=q, expr=expr, status=status) + f" AS {name}_p{int(q * 100)}"
            for name, (expr, status) in _DURATIONS.items()
            for q in (0.5, 0.9)
        )
    }
      FROM job_status_changes c
     -- Each change's job by its key, whatever the planner estimates the period to hold
     -- (OFFSET 0 keeps the subquery from being merged into a join): a hash join would
     -- read the whole of jobs, and stale statistics of the history's current partition
     -- were enough to make it choose one.
     CROSS JOIN LATERAL (
         SELECT jobs.job_type, jobs.created_at, jobs.attempt FROM jobs
          WHERE jobs.id = c.job_id OFFSET 0) AS j
     WHERE c.time >= :since AND c.time < :until
       AND (CAST(:job_type AS text) IS NULL OR j.job_type = :job_type)
     GROUP BY j.job_type
     ORDER BY j.job_type
    """
)


@dataclass
class TypeStats:
    """The statistics of one job type over the period."""

    job_type: str
    created: int = 0
    done: int = 0
    cancelled: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    attempts: dict[str, Any] = field(default_factory=dict)
    durations: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_type": self.job_type,
            "created": self.created,
            "done": self.done,
            "cancelled": self.cancelled,
            "failed": self.failed,
            "attempts": self.attempts,
            "durations": self.durations,
        }


def job_stats(
    session: Session, since: datetime, until: datetime, job_type: str | None = None
) -> list[TypeStats]:
    """Statistics per job type of the status changes in ``[since, until)``."""
    # The cost the planner estimates for one key lookup per change makes PostgreSQL compile
    # the query (JIT, on by default above a cost): 200 ms to save nothing on a read of
    # 150 ms at 10 million jobs. For this transaction only.
    session.execute(text("SET LOCAL jit = off"))
    rows = session.execute(_QUERY, {"since": since, "until": until, "job_type": job_type})
    result = []
    for row in rows:
        succeeded, failed = row.attempts_succeeded, row.attempts_failed
        finished = succeeded + failed
        mean = row.mean_attempts_done
        result.append(
            TypeStats(
                job_type=row.job_type,
                created=row.created,
                done=row.done,
                cancelled=row.cancelled,
                failed={"internal_error": row.internal_error, "external_error": row.external_error},
                attempts={
                    "started": row.attempts_started,
                    "succeeded": succeeded,
                    "failed": failed,
                    "success_rate": round(succeeded / finished, 4) if finished else None,
                    "mean_per_done_job": round(float(mean), 3) if mean is not None else None,
                },
                durations={
                    name: {
                        "p50": _round(getattr(row, f"{name}_p50")),
                        "p90": _round(getattr(row, f"{name}_p90")),
                    }
                    for name in _DURATIONS
                },
            )
        )
    return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)
