"""Monitor: reconcile the database with the executor, and retry what may be retried.

Each cycle, in bounded batches:
0. **unrecorded executions**: a started job without a reference (the orchestrator died
   between its start and its record) gets the reference the executor finds by the
   attempt's token, when it can (the local executor: its record or exit status), so
   that step 1 sees its end at once instead of step 2 at the heartbeat timeout;
1. **executions**: in-flight jobs (queued ... post_processing) with a reference, a batch
   per cycle in id order; a **pass** is the cycles from the first batch to the last. At
   its start the executor is asked once for every in-flight reference (for Nomad: one
   prefix listing per parameterized job, plus the allocations of the children that
   ended), and each batch is decided from that answer: an execution that ended or
   vanished while the database still says in flight becomes ``external_error`` with the
   exit code and reason (compare-and-set on the status seen, so a worker that just
   finished wins). References the executor could not answer for are asked again, at once,
   at the next batch that holds one; an attempt dispatched after the pass began waits for
   the next pass;
2. **heartbeats**: a started job whose worker has not beaten for ``heartbeat_timeout_seconds``
   has its execution stopped and becomes ``external_error``;
3. **queued deadline**: a queued job whose execution the executor accepted
   ``queued_deadline_seconds`` ago (``heartbeat_at``, stamped with the reference) and
   whose worker never started (e.g. a Nomad child that cannot be placed) has its execution
   stopped and becomes ``external_error``; it no longer holds a slot of the caps;
4. **lost dispatches**: a queued job without a reference for ``redispatch_grace_seconds``
   (a crash between the queued commit and the dispatch, or an executor that was
   unavailable) is dispatched again with the same token, so the executor runs it once;
   while the executor is unavailable it stays queued, its attempt kept, and so do the jobs
   of a job type whose dispatch the executor pauses (left out of the step, so that they
   hold back no other type's);
5. **retries**: ``external_error`` → ``ready`` after an exponential backoff while
   ``attempt < max_attempts``; otherwise ``internal_error`` "attempts exhausted";
6. **job counts**: the changes of the maintained job counts are folded
   (``fold_job_counts()``, revision 0014), so that ``joblife status`` sums few of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from joblife.config import Settings
from joblife.db.counts import fold_job_counts
from joblife.db.history_partitions import keep_history_partitions
from joblife.db.status import set_job_status
from joblife.errors import StatusError
from joblife.executors.base import (
    ExecutionState,
    ExecutionStatus,
    Executor,
    ExecutorUnavailable,
    JobTypeUnavailable,
    execution_token,
)
from joblife.lifecycle.common import ServiceContext, job_logger, utc_now
from joblife.lifecycle.dispatch import paused_job_types, record_references, start_execution
from joblife.logs import JobLogger
from joblife.model import Job, JobStatus, JobStatusChange
from joblife.model.status import IN_FLIGHT_STATUSES
from joblife.publication.outbox import STAGE as PUBLICATION_STAGE

log = job_logger("monitor")
S = JobStatus
_RUNNING = [int(s) for s in IN_FLIGHT_STATUSES - {S.QUEUED}]
_IN_FLIGHT = [int(s) for s in IN_FLIGHT_STATUSES]
#: The columns of a job the steps that fail executions read.
_ROW = (Job.id, Job.job_type, Job.status_id, Job.attempt, Job.nomad_job_id)


@dataclass
class MonitorReport:
    """What one monitor cycle did."""

    #: Started jobs without a reference whose execution the executor found by token.
    adopted: int = 0
    checked: int = 0
    #: In-flight executions the executor gave no answer about (e.g. Nomad unreachable):
    #: left as they are, checked again next cycle.
    unknown: int = 0
    ended: int = 0
    stale: int = 0
    #: Queued past ``queued_deadline_seconds``, never started: stopped, external_error.
    never_started: int = 0
    redispatched: int = 0
    retried: int = 0
    exhausted: int = 0
    #: Why the executor was unavailable this cycle (queued jobs then wait, attempt kept).
    unavailable: str | None = None
    #: Job types whose dispatch the executor pauses, with the reason: their queued jobs
    #: without execution wait, attempt kept.
    paused: dict[str, str] = field(default_factory=dict)
    #: Delta rows of the job counts folded into job_counts (None: another fold or a
    #: repair was running).
    counts_folded: int | None = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Monitor:
    """The monitor service; keeps a cursor so that successive cycles cover every in-flight
    job even when there are more than one batch of them, and the executor's answer for
    the pass they make (see the module docstring)."""

    def __init__(
        self,
        context: ServiceContext,
        executor: Executor,
    ) -> None:
        self.context = context
        self.executor = executor
        self._cursor = 0
        #: The executor's answer of the current pass, by reference.
        self._pass: dict[str, ExecutionStatus] = {}
        #: References of the current pass the executor gave no answer for (yet).
        self._unanswered: set[str] = set()

    @property
    def pass_in_progress(self) -> bool:
        """Whether the next cycle goes on with the current pass (False: it starts one)."""
        return self._cursor != 0

    def run_cycle(self, now: datetime | None = None) -> MonitorReport:
        """One cycle: a batch of executions, then heartbeats, queued deadlines, lost
        dispatches and retries."""
        now = now or utc_now()
        report = MonitorReport()
        with self.context.session() as session:
            self._adopt(session, report)
            self._reconcile(session, report)
            self._stale_heartbeats(session, now, report)
            self._queued_deadlines(session, now, report)
            self._redispatch(session, now, report)
            self._retry(session, now, report)
        with self.context.session() as session:  # its own short transaction
            report.counts_folded = fold_job_counts(session)
            session.commit()
        # The history's partitions of the months ahead (at most hourly; revision 0015).
        keep_history_partitions(
            self.context.engine, self.context.settings.history_partition_months_ahead
        )
        return report

    # -- 0. unrecorded executions -------------------------------------------------------------
    def _adopt(self, session: Session, report: MonitorReport) -> None:
        find = getattr(self.executor, "find_execution", None)
        if find is None:  # an executor that cannot look an execution up by its token
            return
        rows = session.execute(
            select(Job.id, Job.attempt, Job.unique_id)
            .where(Job.status_id.in_(_RUNNING), Job.nomad_job_id.is_(None))
            .order_by(Job.id)
            .limit(self.context.settings.batch_size)
        ).all()
        session.rollback()
        references = {}
        for row in rows:
            reference = find(execution_token(row.id, row.attempt, row.unique_id))
            if reference is not None:
                references[row.id] = (row.attempt, reference)
        if references:
            record_references(session, references)  # only if still that attempt
            session.commit()
            report.adopted = len(references)
            log.warning(
                "%d started jobs had no execution reference (the dispatch was interrupted "
                "after their start): found by their tokens",
                len(references),
            )

    # -- 1. executions ---------------------------------------------------------------------
    def _reconcile(self, session: Session, report: MonitorReport) -> None:
        batch_size = self.context.settings.batch_size
        new_pass = self._cursor == 0
        if new_pass:
            references = session.scalars(
                select(Job.nomad_job_id).where(
                    Job.status_id.in_(_IN_FLIGHT), Job.nomad_job_id.is_not(None)
                )
            ).all()
            session.rollback()  # no transaction held while the executor answers
            self._pass, self._unanswered = {}, set()
            self._ask(list(references))
        rows = session.execute(
            select(*_ROW)
            .where(
                Job.status_id.in_(_IN_FLIGHT),
                Job.nomad_job_id.is_not(None),
                Job.id > self._cursor,
            )
            .order_by(Job.id)
            .limit(batch_size)
        ).all()
        session.rollback()
        self._cursor = rows[-1].id if len(rows) == batch_size else 0
        # Dispatched after the pass began: the next pass checks it.
        rows = [
            r for r in rows if r.nomad_job_id in self._pass or r.nomad_job_id in self._unanswered
        ]
        if not rows:
            return
        report.checked = len(rows)
        if not new_pass and any(r.nomad_job_id in self._unanswered for r in rows):
            # All the pass's still ahead at once, not per batch.
            self._ask(sorted(self._unanswered))
        # Decided in this batch (or left to the next pass): not asked about again.
        self._unanswered.difference_update(r.nomad_job_id for r in rows)
        unknown = [r for r in rows if r.nomad_job_id not in self._pass]
        if unknown:
            report.unknown = len(unknown)
            log.warning(
                "%s gave no status for %d of %d executions: checked again next cycle",
                self.executor.name,
                len(unknown),
                len(rows),
            )
        for row in rows:
            execution = self._pass.get(row.nomad_job_id)
            if execution is None or not execution.ended:
                continue
            seen = JobStatus(row.status_id)
            what = "vanished" if execution.state is ExecutionState.LOST else "ended"
            if self._fail(
                session,
                row,
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

    def _ask(self, references: list[str]) -> None:
        """Ask the executor about ``references`` in one call, for the current pass."""
        if not references:
            return
        answer = self.executor.status(references)
        self._pass.update(answer)
        self._unanswered.update(references)
        self._unanswered.difference_update(answer)

    # -- 2. heartbeats -----------------------------------------------------------------------
    def _stale_heartbeats(self, session: Session, now: datetime, report: MonitorReport) -> None:
        limit = now - timedelta(seconds=self.context.settings.heartbeat_timeout_seconds)
        rows = session.execute(
            select(*_ROW, Job.heartbeat_at)
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
                    # Its worker no longer writes to the database: failed all the same.
                    _job_log(row).warning("could not stop %s: %s", row.nomad_job_id, exc)
            seen = JobStatus(row.status_id)
            last = row.heartbeat_at.isoformat() if row.heartbeat_at else "never"
            if self._fail(
                session,
                row,
                seen,
                f"worker heartbeat stale (last {last}) while the job was {seen}; execution stopped",
                {"attempt": row.attempt, "reference": row.nomad_job_id},
            ):
                report.stale += 1

    # -- 3. queued deadline --------------------------------------------------------------------
    def _queued_deadlines(self, session: Session, now: datetime, report: MonitorReport) -> None:
        deadline = self.context.settings.queued_deadline_seconds
        rows = session.execute(
            select(*_ROW, ACCEPTED_AT.label("accepted_at"))
            .where(*queued_deadline_conditions(self.context.settings, now))
            .order_by(ACCEPTED_AT)
            .limit(self.context.settings.batch_size)
        ).all()
        session.rollback()
        for row in rows:
            try:
                self.executor.stop(row.nomad_job_id)
            except ExecutorUnavailable as exc:
                # Perhaps why it never started: it waits, and so do the others.
                report.unavailable = str(exc)
                log.warning(
                    "%s executor unavailable (%s): queued deadlines checked again next cycle",
                    self.executor.name,
                    exc,
                )
                return
            except Exception as exc:
                _job_log(row).warning("could not stop %s: %s", row.nomad_job_id, exc)
            if self._fail(
                session,
                row,
                S.QUEUED,
                f"execution never started: accepted by the executor at "
                f"{row.accepted_at.isoformat()}, past the queued deadline of {deadline:.0f} s; "
                "execution stopped",
                {
                    "attempt": row.attempt,
                    "reference": row.nomad_job_id,
                    "queued_deadline_seconds": deadline,
                },
            ):
                report.never_started += 1

    # -- 4. lost dispatches ------------------------------------------------------------------
    def _redispatch(self, session: Session, now: datetime, report: MonitorReport) -> None:
        grace = now - timedelta(seconds=self.context.settings.redispatch_grace_seconds)
        report.paused = paused_job_types(self.context, self.executor)  # may read Nomad
        query = (
            select(Job.id, Job.attempt, Job.job_type, Job.worker_flavor)
            .where(
                Job.status_id == S.QUEUED,
                Job.nomad_job_id.is_(None),
                Job.status_changed_at < grace,
            )
            .order_by(Job.status_changed_at, Job.id)
            .limit(self.context.settings.batch_size)
            .with_for_update(skip_locked=True)
        )
        if report.paused:
            query = query.where(Job.job_type.not_in(report.paused))
        rows = session.execute(query).all()
        references = {}
        for index, row in enumerate(rows):
            if row.job_type in report.paused:  # paused during this loop
                continue
            job_log = log.job(row.id, job_type=row.job_type, attempt=row.attempt, status=S.QUEUED)
            job_log.warning("queued without execution, dispatching again")
            try:
                reference = start_execution(
                    session,
                    self.context,
                    self.executor,
                    row.id,
                    row.attempt,
                    row.job_type,
                    row.worker_flavor,
                )
            except JobTypeUnavailable as exc:
                report.paused[row.job_type] = exc.reason  # the executor logged it
                continue
            except ExecutorUnavailable as exc:
                report.unavailable = str(exc)
                log.warning(
                    "%s executor unavailable: %s; %d queued jobs keep waiting without "
                    "execution (attempt kept)",
                    self.executor.name,
                    exc,
                    len(rows) - index,
                )
                break
            if reference is not None:
                references[row.id] = (row.attempt, reference)
        record_references(session, references)
        session.commit()
        report.redispatched = len(references)

    # -- 5. retries ----------------------------------------------------------------------------
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
        self, session: Session, row: Any, seen: JobStatus, message: str, details: dict
    ) -> bool:
        """external_error if the job is still in the status seen; False if it moved on."""
        try:
            set_job_status(
                session, row.id, S.EXTERNAL_ERROR, expected=seen, message=message, details=details
            )
            session.commit()
        except StatusError:
            session.rollback()
            return False
        _job_log(row, S.EXTERNAL_ERROR).warning("%s", message)
        return True


def _job_log(row: Any, status: JobStatus | None = None) -> JobLogger:
    """The monitor's logger with the job fields of ``row`` (a :data:`_ROW` row)."""
    return log.job(
        row.id,
        job_type=row.job_type,
        attempt=row.attempt,
        status=JobStatus(row.status_id) if status is None else status,
    )


#: When the executor accepted a queued job's execution (stamped in ``heartbeat_at`` by the
#: dispatch; a job dispatched before that stamp existed: its status change).
ACCEPTED_AT = func.coalesce(Job.heartbeat_at, Job.status_changed_at)


def queued_deadline_conditions(settings: Settings, now: datetime) -> list[ColumnElement[bool]]:
    """The jobs the monitor's queued-deadline step takes at ``now``: queued with an
    execution the executor accepted more than ``queued_deadline_seconds`` ago (its worker
    never started). Also what ``joblife jobs stale`` reports."""
    limit = now - timedelta(seconds=settings.queued_deadline_seconds)
    accepted_long_ago = ACCEPTED_AT < limit  # noqa: SIM300 (a column, not a constant)
    return [Job.status_id == S.QUEUED, Job.nomad_job_id.is_not(None), accepted_long_ago]


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
