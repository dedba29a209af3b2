"""Dispatch: start ready jobs through the executor, within the in-flight caps.

A cycle, serialised between dispatchers by a transaction-level advisory lock:
1. counts the jobs in flight (queued ... post_processing) per flavor and per type;
2. reads ready jobs by priority then input publication date (in index order, a page at a
   time), keeping within the caps (overall, per flavor — the executor's slots included —
   and per type), then locks only the chosen ones with ``FOR UPDATE SKIP LOCKED`` (a job
   an operator is changing right now is left for the next cycle);
3. marks them ``queued`` with ``attempt + 1`` and **commits**;
4. only then calls the executor with the token ``<job id>-<attempt>-<unique id>`` (see
   :func:`~joblife.executors.base.execution_token`) and records each reference as soon as
   the executor answers, one short transaction per job. A crash between 3 and 4 leaves a
   queued job without a reference: the monitor dispatches it again with the same token,
   and the executor runs it once; a crash between a start and its record leaves a
   started job without one, whose execution the monitor finds by its token.

A dispatch the executor **refuses** becomes ``external_error`` with the reason (the
attempt is spent, the retry policy decides); the others go on. An executor that is
**unavailable** (:class:`~joblife.executors.base.ExecutorUnavailable`: Nomad not answering)
ends the cycle's dispatching: that job and the rest of the batch stay ``queued`` without a
reference, their attempt kept, and the monitor dispatches them again with the same token
once the executor answers; the report says why (``unavailable``) and how many wait.

A **job type** the executor cannot start now (:class:`~joblife.executors.base.
JobTypeUnavailable`: for Nomad, the type's parameterized job missing, stopped or refusing
joblife's dispatches) is paused alone: the cycle asks the executor first
(:func:`paused_job_types`) and leaves the ready jobs of a paused type ready (attempt
untouched), and a claimed job whose dispatch finds its type unavailable stays ``queued``
without a reference, its attempt kept, like an outage's, while the batch goes on with the
other types; the report lists the paused types and their reasons (``paused``). No new
job of a type is claimed while jobs of it wait queued without an execution past
``redispatch_grace_seconds``: the monitor dispatches those again first, so a type that
is tried again after a pause and refused once more leaves its waiting jobs, not a new
batch claimed at each try, queued.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    all_,
    and_,
    bindparam,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from joblife.db import worker_doors
from joblife.db.status import set_job_status
from joblife.errors import StatusError
from joblife.executors.base import (
    ExecutionRequest,
    Executor,
    ExecutorUnavailable,
    JobTypeUnavailable,
    execution_token,
)
from joblife.lifecycle.common import ServiceContext, job_logger, utc_now
from joblife.model import Job, JobStatus
from joblife.model.flavors import flavor_catalogue
from joblife.model.job import READY_INDEX_WHERE
from joblife.model.status import IN_FLIGHT_STATUSES

log = job_logger("dispatch")
S = JobStatus
#: pg_advisory_xact_lock key of the dispatch critical section ("joblife:dispatch").
DISPATCH_LOCK_KEY = 0x6A6C_6469
#: Rows read beyond the free room in each page of the ready queue (for the jobs the caps
#: of their type hold back).
PAGE_MARGIN = 16


@dataclass
class DispatchReport:
    """What one dispatch cycle did."""

    dispatched: int = 0
    #: Refused by the executor: external_error.
    failed: int = 0
    unknown_type: int = 0
    capped: dict[str, int] = field(default_factory=dict)
    #: Claimed but left queued without an execution because the executor is unavailable
    #: (dispatched again by the monitor, same token, when it answers).
    waiting: int = 0
    #: Why the executor is unavailable, when it was this cycle.
    unavailable: str | None = None
    #: Job types whose dispatch the executor pauses, with the reason: their ready jobs
    #: stay ready, their claimed ones wait queued (counted in ``waiting``).
    paused: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Claimed:
    job_id: int
    job_type: str
    worker_flavor: str
    attempt: int
    unique_id: str
    attempt_secret: str = field(repr=False)


def dispatch_jobs(context: ServiceContext, executor: Executor) -> DispatchReport:
    """One dispatch cycle."""
    report = DispatchReport()
    # Asked before the transaction: the executor may read Nomad to tell.
    report.paused = paused_job_types(context, executor)
    waiting_by_type: Counter[str] = Counter()
    with context.session() as session:
        claimed = _claim(session, context, executor, report)
        session.commit()  # queued + attempt are durable before any execution starts
        for index, job in enumerate(claimed):
            try:
                reference = start_execution(
                    session,
                    context,
                    executor,
                    job.job_id,
                    job.attempt,
                    job.job_type,
                    job.worker_flavor,
                    attempt_secret=job.attempt_secret,
                    unique_id=job.unique_id,
                )
            except JobTypeUnavailable as exc:
                # This type only (the executor logged the pause): the batch goes on.
                report.paused[job.job_type] = exc.reason
                waiting_by_type[job.job_type] += 1
                continue
            except ExecutorUnavailable as exc:
                report.waiting += len(claimed) - index
                report.unavailable = str(exc)
                log.warning(
                    "%s executor unavailable: %s; %d queued jobs wait without execution "
                    "(attempt kept) and are dispatched again, same token, when it answers",
                    executor.name,
                    exc,
                    report.waiting,
                )
                break
            if reference is None:
                report.failed += 1
            else:
                # At once, not after the batch: an orchestrator that dies mid-batch leaves
                # the executions it started with their references (the monitor checks
                # them, instead of waiting for a heartbeat to go stale).
                record_reference(session, job.job_id, job.attempt, reference)
                report.dispatched += 1
    report.waiting += waiting_by_type.total()
    for job_type, count in sorted(waiting_by_type.items()):
        log.warning(
            "%d queued jobs of type %s wait without execution (attempt kept) and are "
            "dispatched again, same token, once the type is back: %s",
            count,
            job_type,
            report.paused[job_type],
        )
    return report


def paused_job_types(context: ServiceContext, executor: Executor) -> dict[str, str]:
    """The job types of ``context`` whose dispatch ``executor`` pauses now, with the
    reason (see :class:`~joblife.executors.base.JobTypeUnavailable`); empty for an
    executor that pauses none."""
    ask = getattr(executor, "job_type_unavailable", None)
    if ask is None:
        return {}
    paused = {}
    for name, cls in sorted(context.job_types.items()):
        reason = ask(name, cls.NOMAD_JOB_NAME)
        if reason is not None:
            paused[name] = reason
    return paused


def record_reference(session: Session, job_id: int, attempt: int, reference: str) -> None:
    """Record one started attempt's reference (see :func:`record_references`) in a short
    transaction of its own. Its commit does not wait for the disk: what it protects
    against is a crash of this process, not of the database server (after which the
    monitor finds the reference again or dispatches again with the same token), and a
    flush per job would cost dispatch more than the executor's own work."""
    session.execute(_ASYNCHRONOUS_COMMIT)
    record_references(session, {job_id: (attempt, reference)})
    session.commit()


_ASYNCHRONOUS_COMMIT = text("SET LOCAL synchronous_commit = off")


def start_execution(
    session: Session,
    context: ServiceContext,
    executor: Executor,
    job_id: int,
    attempt: int,
    job_type: str,
    worker_flavor: str,
    attempt_secret: str | None = None,
    unique_id: str | None = None,
) -> str | None:
    """Start one queued attempt through the executor and return its reference. When the
    executor refuses, the job becomes external_error with the reason (committed) and None
    is returned; when it is unavailable, :class:`ExecutorUnavailable` is raised and the
    job stays queued without a reference. ``attempt_secret``: the attempt's secret, derived
    again when not given (a re-dispatch: the same secret, whose hash queuing stored);
    ``unique_id``: the job's, read when not given (with the attempt, it names the
    execution: see :func:`execution_token`)."""
    cls = context.job_types.get(job_type)
    if unique_id is None:
        unique_id = str(session.scalar(select(Job.unique_id).where(Job.id == job_id)))
    if attempt_secret is None:
        key = worker_doors.attempt_secret_key(context.settings)
        attempt_secret = worker_doors.attempt_secret(key, job_id, attempt, unique_id)
    request = ExecutionRequest(
        job_id=job_id,
        attempt=attempt,
        job_type=job_type,
        worker_flavor=worker_flavor,
        nomad_job_name=cls.NOMAD_JOB_NAME if cls else None,
        unique_id=unique_id,
        attempt_secret=attempt_secret,
    )
    try:
        return executor.dispatch(request, execution_token(job_id, attempt, unique_id))
    except ExecutorUnavailable:
        raise
    except Exception as exc:
        log.job(job_id, job_type=job_type, attempt=attempt, status=S.QUEUED).warning(
            "dispatch failed: %s", exc
        )
        try:
            set_job_status(
                session,
                job_id,
                S.EXTERNAL_ERROR,
                expected=S.QUEUED,
                message=f"dispatch failed: {exc}",
                details={"attempt": attempt, "executor": executor.name},
            )
            session.commit()
        except StatusError:
            session.rollback()
        return None


def record_references(session: Session, references: dict[int, tuple[int, str]]) -> None:
    """Record each started attempt's executor reference (only if still that attempt).
    ``heartbeat_at`` is stamped too unless the worker beat already: for a queued job it is
    when the executor accepted the execution, from which the monitor's queued deadline
    runs (the worker's own beats replace it once it started)."""
    if not references:
        return
    jobs = Job.__table__
    session.connection().execute(
        update(jobs)
        .where(jobs.c.id == bindparam("job_id"), jobs.c.attempt == bindparam("job_attempt"))
        .values(
            nomad_job_id=bindparam("reference"),
            heartbeat_at=func.coalesce(jobs.c.heartbeat_at, func.now()),
        ),
        [
            {"job_id": job_id, "job_attempt": attempt, "reference": reference}
            for job_id, (attempt, reference) in references.items()
        ],
    )


def _claim(
    session: Session, context: ServiceContext, executor: Executor, report: DispatchReport
) -> list[_Claimed]:
    settings = context.settings
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": DISPATCH_LOCK_KEY})
    # Queued without an execution past the re-dispatch grace: the monitor's to dispatch
    # again, before any new job of their type (a type paused and tried again then costs
    # its waiting jobs' turn, not a new batch claimed at each try).
    grace = utc_now() - timedelta(seconds=settings.redispatch_grace_seconds)
    waiting = and_(
        Job.status_id == S.QUEUED, Job.nomad_job_id.is_(None), Job.status_changed_at < grace
    )
    in_flight = session.execute(
        select(Job.worker_flavor, Job.job_type, func.count(), func.count().filter(waiting))
        .where(Job.status_id.in_([int(s) for s in IN_FLIGHT_STATUSES]))
        .group_by(Job.worker_flavor, Job.job_type)
    ).all()
    per_flavor: Counter[str] = Counter()
    per_type: Counter[str] = Counter()
    held_back = set(report.paused)  # their ready jobs stay ready, attempt untouched
    for flavor, job_type, count, waiting_count in in_flight:
        per_flavor[flavor] += count
        per_type[job_type] += count
        if waiting_count:
            held_back.add(job_type)
    room = settings.max_in_flight - per_type.total()
    if room <= 0:
        report.capped["overall"] = per_type.total()
        return []
    chosen: list[Any] = []
    unknown: dict[str, list[int]] = {}
    capped_types = {
        t
        for t in set(per_type) | set(settings.max_in_flight_per_type)
        if per_type[t] >= _type_cap(settings, t)
    }
    capped_flavors = {f for f, n in per_flavor.items() if n >= _flavor_cap(settings, executor, f)}
    seen: list[int] = []
    wanted = min(room, settings.batch_size)
    # A page need not be much larger than what can start: with 2 free slots, reading a
    # backlog's first 1,000 rows only to skip them costs more than the dispatch itself.
    free = _free_room(settings, executor, per_flavor)
    page = wanted * 2 if free == float("inf") else int(min(wanted, free)) * 2 + PAGE_MARGIN
    # Pages skip what is already capped, so capped types or flavors early in the order
    # never starve the jobs behind them; a few pages bound the cost of a cycle.
    # No row lock while reading: dispatchers are serialised by the advisory lock, and only
    # the chosen jobs are locked below.
    for _page in range(4):
        query = (
            select(Job.id, Job.job_type, Job.worker_flavor, Job.attempt)
            .where(text(READY_INDEX_WHERE))  # word for word: the partial index's predicate
            .order_by(Job.priority, Job.input_publication_date, Job.id)
            .limit(page)
        )
        if capped_types or held_back:
            query = query.where(Job.job_type.not_in(capped_types | held_back))
        if capped_flavors:
            query = query.where(Job.worker_flavor.not_in(capped_flavors))
        if seen:
            query = query.where(Job.id != all_(bindparam("seen", seen, type_=ARRAY(BigInteger))))
        candidates = session.execute(query).all()
        for row in candidates:
            seen.append(row.id)
            if len(chosen) >= wanted:
                break
            if row.job_type not in context.job_types:
                unknown.setdefault(row.job_type, []).append(row.id)
                continue
            if per_type[row.job_type] >= _type_cap(settings, row.job_type):
                capped_types.add(row.job_type)  # e.g. a cap of 0 pauses a type
            if per_flavor[row.worker_flavor] >= _flavor_cap(settings, executor, row.worker_flavor):
                capped_flavors.add(row.worker_flavor)
            if row.job_type in capped_types or row.worker_flavor in capped_flavors:
                continue
            per_flavor[row.worker_flavor] += 1
            per_type[row.job_type] += 1
            chosen.append(row)
            if per_type[row.job_type] >= _type_cap(settings, row.job_type):
                capped_types.add(row.job_type)
            if per_flavor[row.worker_flavor] >= _flavor_cap(settings, executor, row.worker_flavor):
                capped_flavors.add(row.worker_flavor)
        if len(chosen) >= wanted or len(candidates) < page:
            break
    report.capped.update({f"type:{t}": per_type[t] for t in capped_types})
    report.capped.update({f"flavor:{f}": per_flavor[f] for f in capped_flavors})
    known = ", ".join(sorted(context.job_types)) or "none"
    for job_type, ids in unknown.items():
        report.unknown_type += len(ids)
        set_job_status(
            session,
            ids,
            S.INTERNAL_ERROR,
            expected=S.READY,
            message=f"job type {job_type!r} is not registered in this installation "
            f"(known: {known})",
        )
    chosen = _lock_still_ready(session, chosen)
    if not chosen:
        return []
    ids = [row.id for row in chosen]
    set_job_status(session, ids, S.QUEUED, expected=S.READY, message="dispatch requested")
    queued = {
        row.id: row
        for row in session.execute(
            update(Job)
            .where(Job.id.in_(ids))
            .values(attempt=Job.attempt + 1, nomad_job_id=None, exit_code=None, heartbeat_at=None)
            .returning(Job.id, Job.attempt, Job.unique_id),
            execution_options={"synchronize_session": False},
        )
    }
    secrets = _store_secret_hashes(session, context, queued.values())
    return [
        _Claimed(
            r.id,
            r.job_type,
            r.worker_flavor,
            queued[r.id].attempt,
            str(queued[r.id].unique_id),
            secrets[r.id],
        )
        for r in chosen
    ]


def _store_secret_hashes(
    session: Session, context: ServiceContext, queued: Iterable[Any]
) -> dict[int, str]:
    """Each queued attempt's secret (see :mod:`joblife.db.worker_doors`), its hash and
    proof key stored with the attempt: only the worker given the secret can write the job."""
    key = worker_doors.attempt_secret_key(context.settings)
    secrets = {
        row.id: worker_doors.attempt_secret(key, row.id, row.attempt, row.unique_id)
        for row in queued
    }
    worker_doors.store_attempt_secrets(session, secrets)  # one statement for the batch
    return secrets


def _lock_still_ready(session: Session, chosen: list[Any]) -> list[Any]:
    """The chosen jobs that are still ready, locked; one locked by another transaction
    (an operator's cancel...) or changed since it was read is skipped."""
    if not chosen:
        return []
    locked = set(
        session.scalars(
            select(Job.id)
            .where(Job.id.in_([row.id for row in chosen]), Job.status_id == S.READY)
            .order_by(Job.id)
            .with_for_update(skip_locked=True)
        )
    )
    return [row for row in chosen if row.id in locked]


def _type_cap(settings: Any, job_type: str) -> float:
    cap = settings.max_in_flight_per_type.get(job_type)
    return float("inf") if cap is None else cap


def _free_room(settings: Any, executor: Executor, per_flavor: Counter[str]) -> float:
    """How many more jobs the flavors can take (those of the catalogue and those in
    flight), infinite if one of them has no cap. Only sizes the pages read: a job of a
    flavor outside both is still found, in the page margin or a later page."""
    flavors = set(flavor_catalogue(settings)) | set(per_flavor)
    return sum(max(0.0, _flavor_cap(settings, executor, f) - per_flavor[f]) for f in flavors)


def _flavor_cap(settings: Any, executor: Executor, flavor: str) -> float:
    caps = [
        c
        for c in (settings.max_in_flight_per_flavor.get(flavor), executor.capacity(flavor))
        if c is not None
    ]
    return min(caps) if caps else float("inf")
