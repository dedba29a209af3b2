"""Helpers to create jobs in tests."""

from __future__ import annotations

from collections.abc import Sequence

from joblife.db.status import set_job_status
from joblife.model import JobStatus
from sqlalchemy.orm import Session

from tests.support.example_type import ExampleJob

#: The shortest path from ``initialized`` to each status (through the one door).
PATH_TO: dict[JobStatus, list[JobStatus]] = {}
_S = JobStatus
_main = [
    _S.INITIALIZED,
    _S.READY,
    _S.QUEUED,
    _S.STARTED,
    _S.PRE_PROCESSING,
    _S.PROCESSING,
    _S.POST_PROCESSING,
    _S.PROCESSED,
    _S.START_PUBLICATION,
    _S.PUBLISHED,
    _S.DONE,
]
for _i, _status in enumerate(_main):
    PATH_TO[_status] = _main[1 : _i + 1]
PATH_TO[_S.CONFIGURED] = [_S.CONFIGURED]
PATH_TO[_S.INTERNAL_ERROR] = [_S.INTERNAL_ERROR]
PATH_TO[_S.EXTERNAL_ERROR] = [_S.EXTERNAL_ERROR]
PATH_TO[_S.ERROR_CHECKED] = [_S.EXTERNAL_ERROR, _S.ERROR_CHECKED]
PATH_TO[_S.CANCELLED] = [_S.CANCELLED]


def make_jobs(session: Session, count: int = 1, prefix: str = "P", **fields) -> list[ExampleJob]:
    """Insert ``count`` example jobs (status initialized) and commit."""
    jobs = [ExampleJob(input_product_id=f"{prefix}{i:06d}", **fields) for i in range(count)]
    session.add_all(jobs)
    session.commit()
    return jobs


def move_to(
    session: Session, job_ids: Sequence[int], status: JobStatus, commit: bool = True
) -> None:
    """Walk the jobs (all in ``initialized``) to ``status`` along allowed transitions, and
    commit unless told not to (the caller commits more with it)."""
    for step in PATH_TO[status]:
        set_job_status(session, list(job_ids), step, message=f"test: to {step}")
    if commit:
        session.commit()
