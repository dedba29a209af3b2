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
    LargeBinary,
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

# Status columns hold an id of job_statuses (1-16), enforced by CHECK constraints.
STATUS_IDS_CHECK = "{column} BETWEEN 1 AND 16"
# Partial indexes on jobs: the predicates the migrations use, word for word. A query uses
# such an index only when its own condition implies the predicate, so state the status as
# a constant (status = 2, status IN (4, 5)), not as a server-side parameter.
STATUS_CHANGED_INDEX_WHERE = "status NOT IN (1, 3)"
CONFIGURED_DUE_INDEX_WHERE = "status = 2"
READY_INDEX_WHERE = f"status = {int(JobStatus.READY)}"


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
    # What creation found of an input made of many objects (a prefix and a pattern):
    # {key relative to input_path: size}. The worker fetches exactly these, or fails
    # naming what is missing; NULL (one object, or a type that lists nothing): no check.
    input_listing: Mapped[dict[str, int] | None] = mapped_column(JSONB)
    output_path: Mapped[str | None] = mapped_column(Text)
    output_publication_date: Mapped[datetime | None] = mapped_column(TIMESTAMPTZ)
    priority: Mapped[int] = mapped_column(
        SmallInteger, server_default=text(str(int(Priority.NRT))), default=int(Priority.NRT)
    )
    # '' (not NULL) for the operational context, so the natural key stays unique.
    reprocessing_context: Mapped[str] = mapped_column(Text, server_default=text("''"), default="")
    # Written only by set_job_status(); a trigger refuses any other write. A CHECK, not a
    # foreign key to job_statuses (see __table_args__).
    status_id: Mapped[int] = mapped_column(
        "status",
        SmallInteger,
        server_default=text(str(int(JobStatus.INITIALIZED))),
    )
    status_changed_at: Mapped[datetime] = mapped_column(TIMESTAMPTZ, server_default=text("now()"))
    attempt: Mapped[int] = mapped_column(Integer, server_default=text("0"), default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, server_default=text("3"), default=3)
    worker_flavor: Mapped[str] = mapped_column(Text)
    nomad_job_id: Mapped[str | None] = mapped_column(Text)
    heartbeat_at: Mapped[datetime | None] = mapped_column(TIMESTAMPTZ)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    # The science image the last attempt ran, as name:tag@image id (the tag alone moves).
    science_image: Mapped[str | None] = mapped_column(Text)
    # SHA-256 of the attempt's secret, written by the dispatcher when it queues the attempt:
    # the worker doors admit only a caller holding that secret (revision 0011).
    attempt_secret_hash: Mapped[bytes | None] = mapped_column(LargeBinary)
    # When a service should look at the job next (a configured job's dependency re-check).
    due_at: Mapped[datetime | None] = mapped_column(TIMESTAMPTZ)
    # What a configured job waits for (said in the error when the wait's deadline passes).
    waiting_for: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TIMESTAMPTZ, server_default=text("now()"))

    history: Mapped[list[JobStatusChange]] = relationship(
        back_populates="job",
        primaryjoin="Job.id == foreign(JobStatusChange.job_id)",
        order_by="JobStatusChange.id",
        viewonly=True,
        lazy="raise_on_sql",
    )

    __table_args__ = (
        UniqueConstraint("job_type", "input_product_id", "reprocessing_context"),
        CheckConstraint("attempt >= 0 AND max_attempts >= 0", name="attempts_not_negative"),
        CheckConstraint("priority BETWEEN 1 AND 3", name="priority_level"),
        # The status ids of job_statuses. A CHECK rather than a foreign key: the door only
        # writes statuses it found in job_status_transitions (whose foreign keys do point
        # at job_statuses), and a foreign key would cost a lookup on every status change.
        CheckConstraint(STATUS_IDS_CHECK.format(column="status"), name="status_known"),
        # Work selection: a type's jobs in a status, by priority then age.
        Index(
            "ix_jobs_selection",
            "job_type",
            "status",
            "priority",
            "input_publication_date",
            "id",
        ),
        # Cross-type scans by status and time in status (monitor, stale jobs, clean-up).
        # Partial: initialized and ready jobs are the work queues, found by type in work
        # order through ix_jobs_selection; a change into them then costs one index entry less.
        Index(
            "ix_jobs_status_changed",
            "status",
            "status_changed_at",
            postgresql_where=text(STATUS_CHANGED_INDEX_WHERE),
        ),
        # The discovery cursor: a type's newest job by input publication date, then id
        # (JobTemplate.get_last_inserted_job, read at every creation cycle).
        Index(
            "ix_jobs_discovery_cursor",
            "job_type",
            text("input_publication_date DESC NULLS LAST"),
            text("id DESC"),
        ),
        # The dispatch queue: ready jobs of every type in dispatch order (priority, then
        # input publication date), read in order without sorting the whole queue.
        Index(
            "ix_jobs_ready_order",
            "priority",
            "input_publication_date",
            "id",
            postgresql_where=text(READY_INDEX_WHERE),
        ),
        # Configured jobs due for a dependency re-check (only they are re-checked by
        # due_at); no entry at all for the other statuses.
        Index(
            "ix_jobs_configured_due",
            "due_at",
            postgresql_where=text(CONFIGURED_DUE_INDEX_WHERE),
        ),
        # A type's jobs in a status, newest (or oldest) status change first: `jobs list`
        # and `jobs stale` read one range of it per (type, status) (revision 0014).
        Index("ix_jobs_type_status_changed", "job_type", "status", "status_changed_at", "id"),
        # The dashboard's product search, by prefix whatever the collation (revision 0019).
        Index(
            "ix_jobs_input_product_pattern",
            "input_product_id",
            postgresql_ops={"input_product_id": "text_pattern_ops"},
        ),
        Index(
            "ix_jobs_tile_pattern",
            "tile_id",
            postgresql_ops={"tile_id": "text_pattern_ops"},
            postgresql_where=text("tile_id IS NOT NULL"),
        ),
        # `joblife timeliness --since` (revision 0014): outputs published in a window, and
        # the jobs whose output is pending by input publication date (covering both).
        Index(
            "ix_jobs_output_published",
            "output_publication_date",
            postgresql_include=["job_type", "input_publication_date", "priority"],
            postgresql_where=text("output_publication_date IS NOT NULL"),
        ),
        Index(
            "ix_jobs_publication_pending",
            "input_publication_date",
            postgresql_include=["job_type"],
            postgresql_where=text("output_publication_date IS NULL AND status NOT IN (12, 16)"),
        ),
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
    # No foreign key (migration 0009): the history is written only for jobs that exist,
    # and a trigger on jobs deletes it with them.
    job_id: Mapped[int] = mapped_column(BigInteger, index=False)
    # Status ids, checked like jobs.status (CHECK constraints, no foreign keys).
    previous_status: Mapped[int | None] = mapped_column(SmallInteger)
    status: Mapped[int] = mapped_column(SmallInteger)
    time: Mapped[datetime] = mapped_column(TIMESTAMPTZ, server_default=text("now()"))
    message: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))

    job: Mapped[Job] = relationship(
        back_populates="history",
        primaryjoin="Job.id == foreign(JobStatusChange.job_id)",
        viewonly=True,
    )

    __table_args__ = (
        CheckConstraint(STATUS_IDS_CHECK.format(column="status"), name="status_known"),
        CheckConstraint(
            STATUS_IDS_CHECK.format(column="previous_status"), name="previous_status_known"
        ),
        Index("ix_job_status_changes_job_id_id", "job_id", "id"),
        # The history of a period (`joblife stats --since`, revision 0014).
        Index("ix_job_status_changes_time", "time"),
    )


class Publication(Base):
    """``publications``: the outbox, one row per product message; ``published_at`` stays
    NULL until the broker confirmed the message.

    ``republication`` is 0 for the messages the worker wrote, n for the n-th republication
    an operator asked for (new rows, new message ids). ``error`` keeps the last reason the
    message was not delivered (returned unroutable, refused by the broker, too large to send,
    reported failed by a consumer); ``routing_key`` is the key it was published with.
    """

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
    republication: Mapped[int] = mapped_column(Integer, server_default=text("0"), default=0)
    error: Mapped[str | None] = mapped_column(Text)
    error_at: Mapped[datetime | None] = mapped_column(TIMESTAMPTZ)

    __table_args__ = (
        UniqueConstraint("job_id", "product", "attempt", "republication"),
        Index(
            "ix_publications_unpublished",
            "id",
            postgresql_where=text("published_at IS NULL"),
        ),
    )
