"""Failure reports from the consumers (the optional feedback queue), mapped to the job by
the exact ``message_id`` of the product message (never by a substring of anything).

A report is a JSON object ``{"message_id": "...", "error": "why"}``; the message id may
also come as the AMQP ``correlation_id`` property. The row gets the error; its job goes
to ``external_error`` with the reason (a ``done`` job through ``start_publication``, the
only way out of ``done``), where operators see it and can ``joblife jobs republish`` it.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from joblife.db.status import set_job_status
from joblife.lifecycle.common import job_logger, utc_now
from joblife.model import Job, JobStatus, Publication
from joblife.publication.broker import Settlement
from joblife.publication.outbox import STAGE

log = job_logger("publication.feedback")
S = JobStatus
#: Statuses from which a reported failure moves the job to external_error directly.
_FAILABLE = (S.PROCESSED, S.START_PUBLICATION, S.PUBLISHED)


class MalformedFeedback(ValueError):
    """A feedback message that names no message id (rejected, never requeued)."""


def parse_feedback(correlation_id: str | None, body: bytes) -> tuple[str, str]:
    """``(message_id, error)`` of a report; :class:`MalformedFeedback` if unusable."""
    try:
        data: Any = json.loads(body) if body else {}
    except ValueError as exc:
        raise MalformedFeedback(f"feedback body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedFeedback("feedback body is not a JSON object")
    message_id = data.get("message_id") or correlation_id
    if not message_id or not isinstance(message_id, str):
        raise MalformedFeedback("feedback names no message_id (body or correlation_id)")
    error = data.get("error") or data.get("reason") or "failure reported by a consumer"
    return message_id, str(error)


def apply_feedback(session: Session, message_id: str, error: str) -> Settlement:
    """Record a consumer's failure report (caller commits). Unknown message ids are
    acknowledged and logged: there is nothing to map them to."""
    row = session.execute(
        select(Publication.id, Publication.job_id, Publication.product).where(
            Publication.message_id == message_id
        )
    ).one_or_none()
    if row is None:
        log.warning("feedback for unknown message id %s: %s", message_id, error)
        return Settlement.ACK
    session.execute(
        update(Publication).where(Publication.id == row.id).values(error=error, error_at=utc_now())
    )
    job = session.execute(
        select(Job.status_id, Job.job_type, Job.attempt)
        .where(Job.id == row.job_id)
        .with_for_update()
    ).one()
    status = JobStatus(job.status_id)
    message = f"consumer reported a failure for product {row.product} ({message_id}): {error}"
    details = {**STAGE, "feedback": {"message_id": message_id, "product": row.product}}
    if status is S.DONE:
        set_job_status(
            session,
            row.job_id,
            S.START_PUBLICATION,
            expected=S.DONE,
            message="failure reported by a consumer",
            details=details,
        )
        status = S.START_PUBLICATION
    failable = status in _FAILABLE
    if failable:
        set_job_status(
            session, row.job_id, S.EXTERNAL_ERROR, expected=status, message=message, details=details
        )
        status = S.EXTERNAL_ERROR
    job_log = log.job(row.job_id, job_type=job.job_type, attempt=job.attempt, status=status)
    if not failable:
        job_log.warning(
            "job %s is %s: feedback recorded on its publication only", row.job_id, status
        )
    job_log.error("job %s: %s", row.job_id, message)
    return Settlement.ACK
