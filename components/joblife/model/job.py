"""The mapped tables: ``jobs`` (every job's parent row), its status history, the status
lookup tables and the publication outbox.

``jobs.status`` is written only by the stored procedure ``set_job_status`` (the one door,
see :mod:`joblife.db.status`); the ORM maps it read-only as :attr:`Job.status`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    SmallInteger,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column, relationship

from joblife.model.base import Base
from joblife.model.priority import Priority
from joblife.model.status import JobStatus

TIMESTAMPTZ = DateTime(timezone=True)


class JobStatusRow(Base):
    """``job_statuses``: the 16 statuses (ids 1-16), seeded by the first migration."""

    __tablename__ = "job_statuses"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(Text, unique=True)
    description: Mapped[str] = mapped_column(Text)


class JobStatusTransition(Base):
    """``job_status_transitions``: every allowed (from, to) pair. ``from_status`` NULL is
    the creation of a job."""

    __tablename__ = "job_status_transitions"

    id: Mapped[int] = mapped_column(SmallInteger, Identity(), primary_key=True)
    from_status: Mapped[int | None] = mapped_column(SmallInteger, ForeignKey("job_statuses.id"))
    to_status: Mapped[int] = mapped_column(SmallInteger, ForeignKey("job_statuses.id"))

    __table_args__ = (
        UniqueConstraint("from_status", "to_status", postgresql_nulls_not_distinct=True),
    )


class Job(Base):
    """``jobs``: the parent row every job has, whatever its type (joined-table inheritance).

    Subclass :class:`joblife.model.template.JobTemplate`, not this class, to add a job type.
    """

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    unique_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), server_default=text("gen_random_uuid()"), unique=True
    )
    job_type: Mapped[str] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(Text)
    input_product_id: Mapped[str] = mapped_column(Text)
    tile_id: Mapped[str | None] = mapped_column(Text)
    input_path: Mapped[str | None] = mapped_column(Text)
    input_publication_date: Mapped[datetime | None] = mapped_column(TIMESTAMPTZ)
    output_path: Mapped[str | None] = mapped_column(Text)
    output_publication_date: Mapped[datetime | None] = mapped_column(TIMESTAMPTZ)
    priority: Mapped[int] = mapped_column(
        SmallInteger, server_default=text(str(int(Priority.NRT))), default=int(Priority.NRT)
    )
    # '' (not NULL) for the operational context, so the natural key stays unique.
    reprocessing_context: Mapped[str] = mapped_column(Text, server_default=text("''"), default="")
    # Written only by set_job_status(); a trigger refuses any other write.
    status_id: Mapped[int] = mapped_column(
        "status",
        SmallInteger,
        ForeignKey("job_statuses.id"),
        server_default=text(str(int(JobStatus.INITIALIZED))),
    )
    status_changed_at: Mapped[datetime] = mapped_column(TIMESTAMPTZ, server_default=text("now()"))
    attempt: Mapped[int] = mapped_column(Integer, server_default=text("0"), default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, server_default=text("3"), default=3)
    worker_flavor: Mapped[str] = mapped_column(Text)
    nomad_job_id: Mapped[str | None] = mapped_column(Text)
    heartbeat_at: Mapped[datetime | None] = mapped_column(TIMESTAMPTZ)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    # When a service should look at the job next (a configured job's dependency re-check).
    due_at: Mapped[datetime | None] = mapped_column(TIMESTAMPTZ)
    # What a configured job waits for (said in the error when the wait's deadline passes).
    waiting_for: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TIMESTAMPTZ, server_default=text("now()"))

    history: Mapped[list[JobStatusChange]] = relationship(
        back_populates="job",
        order_by="JobStatusChange.id",
        viewonly=True,
        lazy="raise_on_sql",
    )

    __table_args__ = (
        UniqueConstraint("job_type", "input_product_id", "reprocessing_context"),
        CheckConstraint("attempt >= 0 AND max_attempts >= 0", name="attempts_not_negative"),
        CheckConstraint("priority BETWEEN 1 AND 3", name="priority_level"),
        # Work selection: a type's jobs in a status, by priority then age.
        Index(
            "ix_jobs_selection",
            "job_type",
            "status",
            "priority",
            "input_publication_date",
            "id",
        ),
        # Cross-type scans by status (monitor, stale jobs) and time in status.
        Index("ix_jobs_status_changed", "status", "status_changed_at"),
        # Configured jobs due for a dependency re-check.
        Index("ix_jobs_status_due", "status", "due_at"),
    )
    __mapper_args__ = {"polymorphic_on": "job_type", "eager_defaults": True}

    @property
    def status(self) -> JobStatus:
        """The current status. Read-only: change it through
        :func:`joblife.db.status.set_job_status`."""
        return JobStatus(self.status_id)

    def __repr__(self) -> str:
        status = JobStatus(self.status_id).label if self.status_id else "new"
        return f"<{type(self).__name__} id={self.id} {self.input_product_id!r} {status}>"


class JobStatusChange(Base):
    """``job_status_changes``: the append-only history of every job's statuses."""

    __tablename__ = "job_status_changes"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    job_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("jobs.id", ondelete="CASCADE"), index=False
    )
    previous_status: Mapped[int | None] = mapped_column(SmallInteger, ForeignKey("job_statuses.id"))
    status: Mapped[int] = mapped_column(SmallInteger, ForeignKey("job_statuses.id"))
    time: Mapped[datetime] = mapped_column(TIMESTAMPTZ, server_default=text("now()"))
    message: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))

    job: Mapped[Job] = relationship(back_populates="history", viewonly=True)

    __table_args__ = (Index("ix_job_status_changes_job_id_id", "job_id", "id"),)


class Publication(Base):
    """``publications``: the outbox, one row per product message; ``published_at`` stays
    NULL until the broker confirmed the message."""

    __tablename__ = "publications"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    job_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    product: Mapped[str] = mapped_column(Text)
    message_id: Mapped[str] = mapped_column(Text, unique=True)
    routing_key: Mapped[str | None] = mapped_column(Text)
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(TIMESTAMPTZ, server_default=text("now()"))
    published_at: Mapped[datetime | None] = mapped_column(TIMESTAMPTZ)

    __table_args__ = (
        UniqueConstraint("job_id", "product", "attempt"),
        Index(
            "ix_publications_unpublished",
            "id",
            postgresql_where=text("published_at IS NULL"),
        ),
    )
