"""The database side of publication: claiming outbox rows, recording what the broker
said, moving the jobs, republishing.

A relay claims **jobs** (``processed`` or ``start_publication``, priority then age) with
``FOR NO KEY UPDATE SKIP LOCKED`` and takes their unpublished rows of the job's current
attempt. The job locks stay held while the batch is published and recorded, in one
transaction: two relays never publish the same job's messages at the same time, and the
relay that holds a job decides when all its products are confirmed. Rows confirmed (by the
broker, or by the fsync of the local spool) get ``published_at`` (the confirmation time) in
the same transaction that moves their job, whose ``published`` status message says which
confirmed them; rows not confirmed keep ``published_at`` NULL and are sent again later, so a
partly published job resends only its unconfirmed products.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.types import BigInteger, DateTime, Text

from joblife.db.status import StatusChange, republish_jobs, set_job_status
from joblife.lifecycle.common import job_logger
from joblife.model import JobStatus, JobTemplate, Publication
from joblife.publication.broker import Delivery, Outcome, OutgoingMessage
from joblife.publication.topology import Topology, encode_body, message_headers
from joblife.worker.runner import MESSAGE_NAMESPACE

log = job_logger("publication")
S = JobStatus
#: Details of every status change publication makes (tells them from other services').
STAGE = {"stage": "publication"}
#: What confirmed the messages of a relay publishing to RabbitMQ (``confirmed_by``).
BY_THE_BROKER = "the broker"


def by_the_spool(path: object) -> str:
    """What confirmed the messages of a relay writing to the local spool ``path``
    (``confirmed_by``): its fsync, the spool's confirmation."""
    return f"the fsync of the publication spool {path}"


_CLAIM_JOBS = text(
    f"""
    SELECT j.id, j.job_type, j.status, j.attempt, j.tile_id,
           EXISTS (SELECT 1 FROM publications p
                    WHERE p.job_id = j.id AND p.attempt = j.attempt) AS has_rows,
           (SELECT count(*) FROM publications p
             WHERE p.job_id = j.id AND p.attempt = j.attempt
               AND p.published_at IS NULL) AS pending
      FROM jobs j
     WHERE j.status IN ({int(S.PROCESSED)}, {int(S.START_PUBLICATION)})
     ORDER BY j.priority, j.status_changed_at, j.id
     LIMIT :limit
       FOR NO KEY UPDATE OF j SKIP LOCKED
    """
)
_UNPUBLISHED_ROWS = text(
    """
    SELECT p.id, p.job_id, p.attempt, p.product, p.message_id, p.body
      FROM publications p
      JOIN jobs j ON j.id = p.job_id AND p.attempt = j.attempt
     WHERE p.job_id = ANY (:ids) AND p.published_at IS NULL
     ORDER BY p.job_id, p.id
    """
).bindparams(bindparam("ids", type_=ARRAY(BigInteger)))
_MARK_PUBLISHED = text(
    """
    UPDATE publications p
       SET published_at = u.at, routing_key = u.routing_key, error = NULL, error_at = NULL
      FROM unnest(:ids, :keys, :ats) AS u(id, routing_key, at)
     WHERE p.id = u.id
    """
).bindparams(
    bindparam("ids", type_=ARRAY(BigInteger)),
    bindparam("keys", type_=ARRAY(Text)),
    bindparam("ats", type_=ARRAY(DateTime(timezone=True))),
)
_MARK_FAILED = text(
    """
    UPDATE publications p
       SET error = u.error, error_at = u.at, routing_key = u.routing_key
      FROM unnest(:ids, :keys, :errors, :ats) AS u(id, routing_key, error, at)
     WHERE p.id = u.id
    """
).bindparams(
    bindparam("ids", type_=ARRAY(BigInteger)),
    bindparam("keys", type_=ARRAY(Text)),
    bindparam("errors", type_=ARRAY(Text)),
    bindparam("ats", type_=ARRAY(DateTime(timezone=True))),
)
_PUBLICATION_DATES = text(
    """
    SELECT p.job_id, max(p.published_at) AS at
      FROM publications p JOIN jobs j ON j.id = p.job_id AND p.attempt = j.attempt
     WHERE p.job_id = ANY (:ids)
     GROUP BY p.job_id
    """
).bindparams(bindparam("ids", type_=ARRAY(BigInteger)))

_SET_OUTPUT_DATES = text(
    """
    UPDATE jobs j SET output_publication_date = u.at
      FROM unnest(:ids, :ats) AS u(id, at)
     WHERE j.id = u.id
    """
).bindparams(
    bindparam("ids", type_=ARRAY(BigInteger)),
    bindparam("ats", type_=ARRAY(DateTime(timezone=True))),
)
_DEFAULT_DATE_HOOK = JobTemplate.set_product_publication_date


@dataclass
class OutboxRow:
    """An unpublished row of a claimed job, with the message to send."""

    id: int
    job_id: int
    product: str
    message: OutgoingMessage


@dataclass
class ClaimedJob:
    """A job this relay holds for the batch, with its unpublished rows."""

    id: int
    job_type: str
    status: JobStatus
    attempt: int
    tile_id: str | None
    has_rows: bool
    rows: list[OutboxRow] = field(default_factory=list)


@dataclass
class BatchResult:
    """What one batch did, in numbers."""

    jobs: int = 0
    messages: int = 0
    confirmed: int = 0
    returned: int = 0
    nacked: int = 0
    too_large: int = 0  # over product_message_max_bytes: not sent, their jobs failed
    unconfirmed: int = 0
    done: int = 0
    failed_jobs: int = 0

    def add(self, other: BatchResult) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def claim(
    session: Session,
    limit: int,
    topology: Topology,
    job_types: dict[str, type[JobTemplate]],
    jobs_limit: int | None = None,
) -> list[ClaimedJob]:
    """Lock jobs waiting for publication, whole jobs with at most ``limit`` unpublished
    messages in all (at least one job), and load those rows. ``jobs_limit`` is how many
    jobs to try first (default ``limit``); when they hold more messages than ``limit``,
    the locks are taken back (savepoint) and fewer jobs are locked, so that no job is held
    that this batch does not publish (another relay, or this one's next batch, takes it)."""
    jobs_limit = max(1, min(jobs_limit or limit, limit))
    savepoint = session.begin_nested()
    found = session.execute(_CLAIM_JOBS, {"limit": jobs_limit}).all()
    fitting, messages = 0, 0
    for row in found:
        if fitting and messages + row.pending > limit:
            break
        fitting += 1
        messages += row.pending
    if fitting < len(found):
        savepoint.rollback()  # releases the row locks taken since the savepoint
        found = session.execute(_CLAIM_JOBS, {"limit": fitting}).all()
    else:
        savepoint.commit()
    jobs = {
        row.id: ClaimedJob(
            row.id, row.job_type, JobStatus(row.status), row.attempt, row.tile_id, row.has_rows
        )
        for row in found
    }
    if not jobs:
        return []
    for row in session.execute(_UNPUBLISHED_ROWS, {"ids": list(jobs)}):
        job = jobs[row.job_id]
        cls = job_types.get(job.job_type)
        routing_key = topology.routing_key(
            job.job_type, row.product, cls.INPUT_PRODUCT_TYPE if cls else None, job.tile_id
        )
        message = OutgoingMessage(
            message_id=row.message_id,
            routing_key=routing_key,
            body=encode_body(row.body),
            headers=message_headers(job.job_type, job.id, row.product, row.attempt),
        )
        job.rows.append(OutboxRow(row.id, row.job_id, row.product, message))
    return list(jobs.values())


def start_publication(session: Session, jobs: Sequence[ClaimedJob]) -> None:
    """processed → start_publication for the claimed jobs that have messages; a job with
    no outbox row for its attempt has nothing to publish: processed → done."""
    starting = [j.id for j in jobs if j.status is S.PROCESSED and j.has_rows]
    if starting:
        set_job_status(
            session,
            starting,
            S.START_PUBLICATION,
            expected=S.PROCESSED,
            message="publication started",
            details=STAGE,
        )
    empty = [j.id for j in jobs if j.status is S.PROCESSED and not j.has_rows]
    if empty:
        set_job_status(session, empty, S.DONE, expected=S.PROCESSED, message="nothing to publish")
    for job in jobs:
        if job.status is S.PROCESSED:
            job.status = S.START_PUBLICATION if job.has_rows else S.DONE


def record(
    session: Session,
    jobs: Sequence[ClaimedJob],
    deliveries: Sequence[Delivery],
    job_types: dict[str, type[JobTemplate]],
    confirmed_by: str = BY_THE_BROKER,
) -> BatchResult:
    """Record the broker's answers (``deliveries`` in the order of the jobs' rows) and move
    the jobs: every product confirmed → published → done (the hook
    ``set_product_publication_date`` gets the last confirmation time); a product returned
    unroutable → external_error naming it; a product message too large to send
    (:attr:`Outcome.TOO_LARGE`) → internal_error naming it; otherwise the job waits in
    start_publication and its unconfirmed rows are sent again. ``confirmed_by`` names what
    confirmed the messages in the ``published`` status message (:data:`BY_THE_BROKER`,
    :func:`by_the_spool`)."""
    result = BatchResult(jobs=len(jobs))
    published: dict[str, list[Any]] = {"ids": [], "keys": [], "ats": []}
    failed: dict[str, list[Any]] = {"ids": [], "keys": [], "errors": [], "ats": []}
    complete: dict[int, tuple[str, datetime | None]] = {}  # job → (type, last confirmation)
    returned: dict[int, list[tuple[OutboxRow, Delivery]]] = defaultdict(list)
    too_large: dict[int, list[tuple[OutboxRow, Delivery]]] = defaultdict(list)
    answers = iter(deliveries)
    for job in jobs:
        if job.status is not S.START_PUBLICATION:
            continue
        all_confirmed = True
        last: datetime | None = None
        for row in job.rows:
            delivery = next(answers)
            result.messages += 1
            if delivery.outcome is Outcome.CONFIRMED:
                result.confirmed += 1
                if delivery.at is not None and (last is None or delivery.at > last):
                    last = delivery.at
                published["ids"].append(row.id)
                published["keys"].append(row.message.routing_key)
                published["ats"].append(delivery.at)
                continue
            all_confirmed = False
            if delivery.outcome is Outcome.UNCONFIRMED:
                result.unconfirmed += 1
                continue
            failed["ids"].append(row.id)
            failed["keys"].append(row.message.routing_key)
            failed["errors"].append(delivery.reason)
            failed["ats"].append(delivery.at)
            if delivery.outcome is Outcome.RETURNED:
                result.returned += 1
                returned[job.id].append((row, delivery))
            elif delivery.outcome is Outcome.TOO_LARGE:
                result.too_large += 1
                too_large[job.id].append((row, delivery))
            else:
                result.nacked += 1
        if all_confirmed:
            complete[job.id] = (job.job_type, last)
    if published["ids"]:
        session.execute(_MARK_PUBLISHED, published)
    if failed["ids"]:
        session.execute(_MARK_FAILED, failed)
    claimed = {job.id: job for job in jobs}
    for job_id, rows in too_large.items():  # its returned messages named with them
        _fail_too_large(session, claimed[job_id], rows, returned.pop(job_id, []))
    for job_id, rows in returned.items():
        _fail_unroutable(session, claimed[job_id], rows)
    result.failed_jobs += len(too_large.keys() | returned.keys())
    if complete:
        result.done = finish(session, complete, job_types, confirmed_by)
    return result


def finish(
    session: Session,
    jobs: dict[int, tuple[str, datetime | None]],
    job_types: dict[str, type[JobTemplate]],
    confirmed_by: str = BY_THE_BROKER,
) -> int:
    """start_publication → published → done for ``jobs`` (id → job type, last confirmation
    of this batch, None if their products were all confirmed before), every product of
    which is confirmed (by ``confirmed_by``, said in the ``published`` message); the job
    type's ``set_product_publication_date`` receives the last confirmation time. A hook
    that fails puts its job in internal_error (its products stay published). Returns how
    many jobs are done."""
    job_ids = list(jobs)
    dates = {job_id: at for job_id, (_, at) in jobs.items() if at is not None}
    earlier = [job_id for job_id in job_ids if job_id not in dates]
    if earlier:
        dates.update(session.execute(_PUBLICATION_DATES, {"ids": earlier}).tuples())
    set_job_status(
        session,
        job_ids,
        S.PUBLISHED,
        expected=S.START_PUBLICATION,
        message=f"every product confirmed by {confirmed_by}",
        details=STAGE,
    )
    types = {job_id: job_type for job_id, (job_type, _) in jobs.items()}
    hook_failures = _set_publication_dates(session, dates, types, job_types)
    for job_id, error in hook_failures.items():
        set_job_status(
            session,
            job_id,
            S.INTERNAL_ERROR,
            expected=S.PUBLISHED,
            message=f"set_product_publication_date failed: {error}",
            details=STAGE,
        )
    done = [j for j in job_ids if j not in hook_failures]
    if done:
        set_job_status(session, done, S.DONE, expected=S.PUBLISHED, details=STAGE)
    return len(done)


def _set_publication_dates(
    session: Session,
    dates: dict[int, datetime],
    types: dict[int, str],
    job_types: dict[str, type[JobTemplate]],
) -> dict[int, str]:
    """Call each job's ``set_product_publication_date``; returns the failed hooks by job.
    Jobs whose type keeps the default hook (it sets ``output_publication_date``), or is
    not registered in this process, get the column in one set-based UPDATE instead of an
    ORM load and a flush per job."""
    if not dates:
        return {}
    failures: dict[int, str] = {}
    direct: list[int] = []
    custom: dict[type[JobTemplate], list[int]] = defaultdict(list)
    for job_id in dates:
        cls = job_types.get(types[job_id])
        if cls is None or cls.set_product_publication_date is _DEFAULT_DATE_HOOK:
            direct.append(job_id)
        else:
            custom[cls].append(job_id)
    if direct:
        session.execute(
            _SET_OUTPUT_DATES, {"ids": direct, "ats": [dates[job_id] for job_id in direct]}
        )
    for cls, ids in custom.items():
        for job in session.scalars(select(cls).where(cls.id.in_(ids))):
            try:
                job.set_product_publication_date(dates[job.id])
            except Exception as exc:  # a partner's hook: its job fails alone
                log.job(
                    job.id, job_type=cls.JOB_NAME, attempt=job.attempt, status=S.INTERNAL_ERROR
                ).exception("job %s: set_product_publication_date failed", job.id)
                failures[job.id] = f"{type(exc).__name__}: {exc}"
    session.flush()
    return failures


def _fail_unroutable(
    session: Session, job: ClaimedJob, rows: list[tuple[OutboxRow, Delivery]]
) -> None:
    """start_publication → external_error for a job whose messages the broker returned."""
    message = f"{_unroutable_problem(rows)}, then `joblife jobs republish {job.id}`"
    log.job(job.id, job_type=job.job_type, attempt=job.attempt, status=S.EXTERNAL_ERROR).error(
        "job %s: %s", job.id, message
    )
    set_job_status(
        session,
        job.id,
        S.EXTERNAL_ERROR,
        expected=S.START_PUBLICATION,
        message=message,
        details={**STAGE, **_unroutable_details(rows)},
    )


def _unroutable_problem(rows: list[tuple[OutboxRow, Delivery]]) -> str:
    """What is wrong with the returned messages ``rows`` and what to do about it."""
    products = ", ".join(row.product for row, _ in rows)
    return (
        f"product message(s) not routed to any queue ({products}): {rows[0][1].reason}; "
        "bind a queue for the routing key"
    )


def _unroutable_details(rows: list[tuple[OutboxRow, Delivery]]) -> dict[str, Any]:
    return {
        "unroutable": [
            {"product": row.product, "message_id": row.message.message_id} for row, _ in rows
        ]
    }


def _fail_too_large(
    session: Session,
    job: ClaimedJob,
    rows: list[tuple[OutboxRow, Delivery]],
    returned: list[tuple[OutboxRow, Delivery]],
) -> None:
    """start_publication → internal_error for a job with a product message over
    ``product_message_max_bytes`` (never sent: the broker would refuse it, and the
    messages sent with it). Messages of the job the broker ``returned`` are named too:
    both must be fixed before it is republished."""
    products = ", ".join(row.product for row, _ in rows)
    message = f"product message(s) too large to publish ({products}): {rows[0][1].reason}"
    if returned:
        message += f"; also {_unroutable_problem(returned)}"
    # Republishing sends the stored messages again: a type that makes smaller ones needs
    # the job processed again (new messages).
    message += (
        "; raise product_message_max_bytes if the broker takes it (RabbitMQ's "
        f"max_message_size), then `joblife jobs republish {job.id}`; or make the job type's "
        f"message smaller, then `joblife jobs retry {job.id}`"
    )
    log.job(job.id, job_type=job.job_type, attempt=job.attempt, status=S.INTERNAL_ERROR).error(
        "job %s: %s", job.id, message
    )
    set_job_status(
        session,
        job.id,
        S.INTERNAL_ERROR,
        expected=S.START_PUBLICATION,
        message=message,
        details={
            **STAGE,
            "too_large": [
                {
                    "product": row.product,
                    "message_id": row.message.message_id,
                    "bytes": len(row.message.body),
                }
                for row, _ in rows
            ],
            **(_unroutable_details(returned) if returned else {}),
        },
    )


# -- operators -----------------------------------------------------------------------------


def republication_message_id(unique_id: uuid.UUID, product: str, attempt: int, round_: int) -> str:
    """The message id ``republish_jobs`` gives an operator's ``round_``-th republication
    (a version 3 UUID in the namespace of the worker's first-round ids, also version 3)."""
    return str(uuid.uuid3(MESSAGE_NAMESPACE, f"{unique_id}/{product}/{attempt}/republish-{round_}"))


def republish(
    session: Session,
    job_ids: Iterable[int],
    message: str | None = None,
    *,
    operator: str | None = None,
) -> list[StatusChange]:
    """Publish the jobs' products again, all or nothing, through the database procedure
    ``republish_jobs`` (an operator procedure, like ``retry_jobs``):

    - ``done``: a new round of outbox rows (the last round's bodies, new message ids),
      and done → start_publication;
    - ``internal_error`` / ``external_error`` / ``error_checked`` with outbox rows for
      the current attempt (e.g. a product returned unroutable): acknowledged if needed,
      then → processed; only the rows never confirmed are sent.

    :class:`RepublishRefused` names the first job that cannot be republished and why.
    ``operator``: who acted, recorded in the history (else the database login).
    """
    changes = republish_jobs(session, sorted(set(job_ids)), message, operator=operator)
    session.expire_all()  # statuses and outbox rows changed in the database
    return sorted(changes, key=lambda c: c.job_id)


def pending_count(session: Session) -> int:
    """Outbox rows not confirmed yet (superseded attempts included)."""
    return (
        session.scalar(
            select(text("count(*)"))
            .select_from(Publication)
            .where(Publication.published_at.is_(None))
        )
        or 0
    )


PUBLICATION_STATES = ("pending", "published", "failed", "superseded")


def list_publications(
    session: Session,
    *,
    job_ids: Sequence[int] = (),
    state: str | None = None,
    limit: int | None = 100,
) -> list[dict[str, Any]]:
    """Outbox rows with their job's type and status, newest first. ``state``: ``pending``
    (not confirmed, current attempt), ``published``, ``failed`` (not confirmed, with an
    error), ``superseded`` (not confirmed, of an older attempt: never sent again)."""
    if state is not None and state not in PUBLICATION_STATES:
        raise ValueError(f"unknown state {state!r} (known: {', '.join(PUBLICATION_STATES)})")
    conditions = []
    params: dict[str, Any] = {}
    if job_ids:
        conditions.append("p.job_id = ANY (:ids)")
        params["ids"] = list(job_ids)
    if state is not None:
        conditions.append("state = :state")
        params["state"] = state
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    statement = text(
        f"""
        SELECT * FROM (
            SELECT p.id, p.job_id, j.job_type, s.name AS job_status, p.product, p.attempt,
                   p.republication, p.message_id, p.routing_key, p.created_at,
                   p.published_at, p.error, p.error_at,
                   CASE WHEN p.published_at IS NOT NULL THEN 'published'
                        WHEN p.attempt <> j.attempt THEN 'superseded'
                        WHEN p.error IS NOT NULL THEN 'failed'
                        ELSE 'pending' END AS state
              FROM publications p
              JOIN jobs j ON j.id = p.job_id
              JOIN job_statuses s ON s.id = j.status
        ) p
        {where}
        ORDER BY p.id DESC
        {"LIMIT :limit" if limit else ""}
        """
    )
    if job_ids:
        statement = statement.bindparams(bindparam("ids", type_=ARRAY(BigInteger)))
    if limit:
        params["limit"] = limit
    return [dict(row._mapping) for row in session.execute(statement, params)]
