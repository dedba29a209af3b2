"""Monitor: reconcile the database with the executor, and retry what may be retried.

Each cycle, in bounded batches:
1. **executions**: in-flight jobs (queued ... post_processing) with a reference are checked
   with the executor in one call per batch; an execution that ended or vanished while the
   database still says in flight becomes ``external_error`` with the exit code and reason
   (compare-and-set on the status seen, so a worker that just finished wins);
2. **heartbeats**: a started job whose worker has not beaten for ``heartbeat_timeout_seconds``
   has its execution stopped and becomes ``external_error``;
3. **lost dispatches**: a queued job without a reference for ``redispatch_grace_seconds``
   (a crash between the queued commit and the dispatch) is dispatched again with the same
   token, so the executor runs it once;
4. **retries**: ``external_error`` → ``ready`` after an exponential backoff while
   ``attempt < max_attempts``; otherwise ``internal_error`` "attempts exhausted".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from joblife.config import Settings
from joblife.db.status import set_job_status
from joblife.errors import StatusError
from joblife.executors.base import ExecutionState, Executor
from joblife.lifecycle.common import ServiceContext, job_logger, utc_now
from joblife.lifecycle.dispatch import record_references, start_execution
from joblife.model import Job, JobStatus, JobStatusChange
from joblife.model.status import IN_FLIGHT_STATUSES
from joblife.publication.outbox import STAGE as PUBLICATION_STAGE

log = job_logger("monitor")
S = JobStatus
_RUNNING = [int(s) for s in IN_FLIGHT_STATUSES - {S.QUEUED}]


@dataclass
class MonitorReport:
    """What one monitor cycle did."""

    checked: int = 0
    #: In-flight executions the executor gave no answer about (e.g. Nomad unreachable):
    #: left as they are, checked again next cycle.
    unknown: int = 0
    ended: int = 0
    stale: int = 0
    redispatched: int = 0
    retried: int = 0
    exhausted: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Monitor:
    """The monitor service; keeps a cursor so that successive cycles cover every in-flight
    job even when there are more than one batch of them."""

    def __init__(self, context: ServiceContext, executor: Executor) -> None:
        self.context = context
        self.executor = executor
        self._cursor = 0

    def run_cycle(self, now: datetime | None = None) -> MonitorReport:
        now = now or utc_now()
        report = MonitorReport()
        with self.context.session() as session:
            self._reconcile(session, report)
            self._stale_heartbeats(session, now, report)
            self._redispatch(session, now, report)
            self._retry(session, now, report)
        return report

    # -- 1. executions ---------------------------------------------------------------------
    def _reconcile(self, session: Session, report: MonitorReport) -> None:
        rows = session.execute(
            select(Job.id, Job.status_id, Job.attempt, Job.nomad_job_id)
            .where(
                Job.status_id.in_([int(s) for s in IN_FLIGHT_STATUSES]),
                Job.nomad_job_id.is_not(None),
                Job.id > self._cursor,
            )
            .order_by(Job.id)
            .limit(self.context.settings.batch_size)
        ).all()
        session.rollback()  # no transaction held while the executor answers
        self._cursor = rows[-1].id if len(rows) == self.context.settings.batch_size else 0
        if not rows:
            return
        report.checked = len(rows)
        statuses = self.executor.status([r.nomad_job_id for r in rows])
        if len(statuses) < len(rows):
            log.warning(
                "%s gave no status for %d of %d executions: checked again next cycle",
                self.executor.name,
                len(rows) - len(statuses),
                len(rows),
            )
        for row in rows:
            execution = statuses.get(row.nomad_job_id)
            if execution is None:
                report.unknown += 1
                continue
            if not execution.ended:
                continue
            seen = JobStatus(row.status_id)
            what = "vanished" if execution.state is ExecutionState.LOST else "ended"
            if self._fail(
                session,
                row.id,
                seen,
                f"execution {what} while the job was {seen}: {execution.reason}",
                {
                    "attempt": row.attempt,
                    "reference": row.nomad_job_id,
                    "exit_code": execution.exit_code,
                    "state": execution.state.value,
                },
            ):
                report.ended += 1

    # -- 2. heartbeats -----------------------------------------------------------------------
    def _stale_heartbeats(self, session: Session, now: datetime, report: MonitorReport) -> None:
        limit = now - timedelta(seconds=self.context.settings.heartbeat_timeout_seconds)
        rows = session.execute(
            select(Job.id, Job.status_id, Job.attempt, Job.nomad_job_id, Job.heartbeat_at)
            .where(
                Job.status_id.in_(_RUNNING),
                or_(Job.heartbeat_at < limit, Job.heartbeat_at.is_(None)),
                Job.status_changed_at < limit,
            )
            .limit(self.context.settings.batch_size)
        ).all()
        session.rollback()
        for row in rows:
            if row.nomad_job_id:
                try:
                    self.executor.stop(row.nomad_job_id)
                except Exception as exc:
                    log.warning("job %s: could not stop %s: %s", row.id, row.nomad_job_id, exc)
            seen = JobStatus(row.status_id)
            last = row.heartbeat_at.isoformat() if row.heartbeat_at else "never"
            if self._fail(
                session,
                row.id,
                seen,
                f"worker heartbeat stale (last {last}) while the job was {seen}; execution stopped",
                {"attempt": row.attempt, "reference": row.nomad_job_id},
            ):
                report.stale += 1

    # -- 3. lost dispatches ------------------------------------------------------------------
    def _redispatch(self, session: Session, now: datetime, report: MonitorReport) -> None:
        grace = now - timedelta(seconds=self.context.settings.redispatch_grace_seconds)
        rows = session.execute(
            select(Job.id, Job.attempt, Job.job_type, Job.worker_flavor)
            .where(
                Job.status_id == S.QUEUED,
                Job.nomad_job_id.is_(None),
                Job.status_changed_at < grace,
            )
            .limit(self.context.settings.batch_size)
            .with_for_update(skip_locked=True)
        ).all()
        references = {}
        for row in rows:
            log.warning(
                "job %s attempt %s: queued without execution, dispatching again",
                row.id,
                row.attempt,
            )
            reference = start_execution(
                session,
                self.context,
                self.executor,
                row.id,
                row.attempt,
                row.job_type,
                row.worker_flavor,
            )
            if reference is not None:
                references[row.id] = (row.attempt, reference)
        record_references(session, references)
        session.commit()
        report.redispatched = len(references)

    # -- 4. retries ----------------------------------------------------------------------------
    def _retry(self, session: Session, now: datetime, report: MonitorReport) -> None:
        settings = self.context.settings
        rows = session.execute(
            select(Job.id, Job.attempt, Job.max_attempts)
            .where(*retry_conditions(settings, now))
            .order_by(Job.status_changed_at)
            .limit(settings.batch_size)
            .with_for_update(skip_locked=True)
        ).all()
        retry = [r.id for r in rows if r.attempt < r.max_attempts]
        exhausted = [r for r in rows if r.attempt >= r.max_attempts]
        if retry:
            set_job_status(
                session,
                retry,
                S.READY,
                expected=S.EXTERNAL_ERROR,
                message="automatic retry after backoff",
            )
        for row in exhausted:
            last_error = session.scalar(
                select(JobStatusChange.message)
                .where(JobStatusChange.job_id == row.id)
                .order_by(JobStatusChange.id.desc())
                .limit(1)
            )
            set_job_status(
                session,
                row.id,
                S.INTERNAL_ERROR,
                expected=S.EXTERNAL_ERROR,
                message=f"attempts exhausted ({row.attempt} of {row.max_attempts}); "
                f"last error: {last_error}",
            )
        session.commit()
        report.retried, report.exhausted = len(retry), len(exhausted)

    # -- helpers -------------------------------------------------------------------------------
    def _fail(
        self, session: Session, job_id: int, seen: JobStatus, message: str, details: dict
    ) -> bool:
        """external_error if the job is still in the status seen; False if it moved on."""
        try:
            set_job_status(
                session, job_id, S.EXTERNAL_ERROR, expected=seen, message=message, details=details
            )
            session.commit()
        except StatusError:
            session.rollback()
            return False
        log.warning("job %s: %s", job_id, message)
        return True


def retry_conditions(settings: Settings, now: datetime) -> list[ColumnElement[bool]]:
    """The jobs the monitor's retry step takes at ``now``: ``external_error`` jobs out of
    attempts (failed for good) or past their backoff (``retry_backoff_seconds`` doubling
    per attempt, at most ``retry_backoff_max_seconds``; retried), except those that failed
    at publication. Also what ``joblife jobs stale`` reports."""
    backoff = func.least(
        settings.retry_backoff_max_seconds,
        settings.retry_backoff_seconds * func.power(2, func.greatest(Job.attempt, 1) - 1),
    )
    due = Job.status_changed_at <= now - func.make_interval(0, 0, 0, 0, 0, 0, backoff)
    # A job that failed at publication (unroutable, reported failed by a consumer) has its
    # product: processing it again would not help. It waits for an operator (`joblife jobs
    # republish`, or a retry to reprocess on purpose).
    last_change_details = (
        select(JobStatusChange.details)
        .where(JobStatusChange.job_id == Job.id)
        .order_by(JobStatusChange.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    failed_at_publication = last_change_details.contains(PUBLICATION_STAGE)
    return [
        Job.status_id == S.EXTERNAL_ERROR,
        or_(Job.attempt >= Job.max_attempts, due),
        ~func.coalesce(failed_at_publication, False),
    ]
