"""What the life-cycle services share."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from joblife.config import Settings, get_settings
from joblife.model import JobTemplate, load_job_types


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


def utc_now() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


def job_logger(name: str) -> logging.Logger:
    """The logger of a life-cycle service."""
    return logging.getLogger(f"joblife.{name}")
