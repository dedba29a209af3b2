"""What the life-cycle services share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from joblife.config import Settings, get_settings
from joblife.logs import JobLogger
from joblife.logs import job_logger as _job_logger
from joblife.model import JobTemplate, load_job_types

_log = _job_logger("joblife.lifecycle")


@dataclass
class ServiceContext:
    """The database, the configuration and the job types a service cycle works with."""

    engine: Engine
    settings: Settings = field(default_factory=get_settings)
    job_types: dict[str, type[JobTemplate]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.job_types:
            self.job_types = load_job_types(self.settings)

    def session(self) -> Session:
        """A new session (objects stay readable after commit)."""
        return Session(self.engine, expire_on_commit=False)


class TypeReport(Protocol):
    """A per-job-type report of a service cycle."""

    error: str | None


R = TypeVar("R", bound=TypeReport)


def for_each_job_type(
    context: ServiceContext,
    make_report: Callable[[str], R],
    work: Callable[[Session, type[JobTemplate], R], None],
    what: str,
) -> list[R]:
    """Run ``work`` for every registered job type, each in its own transaction (committed
    on success). One type's failure is recorded in its report and the others go on; a
    database outage is raised, for the caller to back off."""
    reports = []
    for job_type, cls in sorted(context.job_types.items()):
        report = make_report(job_type)
        try:
            with context.session() as session:
                work(session, cls, report)
                session.commit()
        except OperationalError:
            raise
        except Exception as exc:
            _log.exception("%s of %s jobs failed", what, job_type, extra={"job_type": job_type})
            report.error = f"{type(exc).__name__}: {exc}"
        reports.append(report)
    return reports


def utc_now() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


def job_logger(name: str) -> JobLogger:
    """The logger of a life-cycle service (``joblife.<name>``); ``log.job(job_id,
    job_type=..., attempt=..., status=...)`` gives a line about a job its job fields,
    ``log.jobs(ids, job_type=..., status=...)`` a summary line about several jobs."""
    return _job_logger(f"joblife.{name}")
