"""``JobTemplate``: the class a partner subclasses to plug a processing chain into joblife.

The contract is the seed's (``shared/seeds/003_*``): class attributes naming the table, the
job, the input product type, the Nomad job, the worker flavor, the output products and the
per-type stored procedure; hooks for discovery, configuration, publication and the worker's
pre/process/post steps. A subclass is a SQLAlchemy joined-table-inheritance child of
:class:`joblife.model.job.Job`: its table holds only the type's own columns and its ``id``
(a foreign key to ``jobs.id``) is added automatically.

Example::

    class RepackJob(JobTemplate):
        __tablename__ = "repack_jobs"
        JOB_NAME = "repack"
        INPUT_PRODUCT_TYPE = "hdf5"
        NOMAD_JOB_NAME = "joblife-repack"
        WORKER_FLAVOR_NAME = "small"
        OUTPUT_PRODUCTS_LIST = ["repacked"]
        GET_JOBS_WITH_STATUS_PROCEDURE_NAME = "get_repack_jobs_with_status"

        dataset: Mapped[str | None]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Self

from sqlalchemy import BigInteger, ForeignKey, select
from sqlalchemy.orm import Session, mapped_column

from joblife.model.job import Job
from joblife.model.status import JobStatus


@dataclass(slots=True)
class JobsToCreate:
    """What :meth:`JobTemplate.get_jobs_to_create` found in a discovery window.

    ``to_create`` become ``initialized`` jobs; ``to_cancel`` are recorded directly as
    ``cancelled`` (known products that must not be processed, e.g. a superseded version),
    so that they are not discovered again.
    """

    to_create: list[JobTemplate] = field(default_factory=list)
    to_cancel: list[JobTemplate] = field(default_factory=list)


class JobTemplate(Job):
    """Base class of every job type. Subclass it; see the module docstring and
    docs/partner-guide.md. Every class parameter defaults to None."""

    __abstract__ = True

    # -- class parameters (the seed's contract) --------------------------------------------
    #: ``__tablename__`` is the seed's ``__TABLE_NAME``: the type's own table.
    JOB_NAME: ClassVar[str | None] = None
    """Name of the job type; stored as ``jobs.job_type`` (the polymorphic identity)."""
    INPUT_PRODUCT_TYPE: ClassVar[str | None] = None
    """Kind of input product (e.g. ``s1``, ``s2``, ``hdf5``)."""
    NOMAD_JOB_NAME: ClassVar[str | None] = None
    """Name of the Nomad parameterized job that runs this type's science step."""
    WORKER_FLAVOR_NAME: ClassVar[str | None] = None
    """Size of worker to run on: a name from the flavor catalogue."""
    OUTPUT_PRODUCTS_LIST: ClassVar[list[str] | None] = None
    """Names of the output products (one publication message each)."""
    LAST_INSERTED_JOB: ClassVar[JobTemplate | None] = None
    """The last job of this type found in the database (set by get_last_inserted_job)."""
    GET_JOBS_WITH_STATUS_PROCEDURE_NAME: ClassVar[str | None] = None
    """Name of the per-type stored procedure returning this type's jobs in given statuses."""
    MAX_ATTEMPTS: ClassVar[int] = 3
    """Attempts allowed before an external error is no longer retried automatically."""
    DEPENDENCY_TIMEOUT: ClassVar[timedelta] = timedelta(hours=24)
    """How long a job may wait in ``configured`` for a dependency before it fails."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A concrete job type (it names its own table) gets its primary key, a foreign key
        # to jobs.id, and its polymorphic identity without writing either.
        if "__tablename__" in cls.__dict__:
            if "id" not in cls.__dict__:
                cls.id = mapped_column(  # type: ignore[assignment]
                    BigInteger, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
                )
            mapper_args = dict(cls.__dict__.get("__mapper_args__", {}))
            mapper_args.setdefault("polymorphic_identity", cls.JOB_NAME)
            cls.__mapper_args__ = mapper_args
        super().__init_subclass__(**kwargs)

    def __init__(self, **fields: Any) -> None:
        """Create a job; every field not given is None or its column default."""
        cls = type(self)
        fields.setdefault("worker_flavor", cls.WORKER_FLAVOR_NAME)
        fields.setdefault("max_attempts", cls.MAX_ATTEMPTS)
        super().__init__(**fields)

    # -- creation --------------------------------------------------------------------------
    @classmethod
    def get_last_inserted_job(cls, session: Session) -> Self | None:
        """The discovery cursor: the newest job of this type in the database (by input
        publication date, then id), also kept in ``LAST_INSERTED_JOB``. Always read from
        the database, so that every replica and every restart resumes from the same place."""
        stmt = (
            select(cls)
            .where(Job.job_type == cls.JOB_NAME)
            .order_by(Job.input_publication_date.desc().nulls_last(), Job.id.desc())
            .limit(1)
        )
        job = session.scalars(stmt).first()
        cls.LAST_INSERTED_JOB = job
        return job

    @classmethod
    def get_jobs_to_create(cls, start: datetime, end: datetime) -> JobsToCreate:
        """Discover the input products published in ``[start, end)`` and return the jobs to
        create (and to record as cancelled). Every job type must implement it."""
        raise NotImplementedError(
            f"{cls.__name__}.get_jobs_to_create(start, end) must be implemented by the job type"
        )

    def job_pre_insertion_setup(self) -> None:
        """Complete a discovered job before it is inserted (paths, priority...). Default:
        nothing."""

    # -- configuration ---------------------------------------------------------------------
    @classmethod
    def configure_batch_jobs(cls, session: Session, jobs: list[Self]) -> None:
        """Prepare a batch of jobs about to be configured (one query for many jobs rather
        than one per job). Default: nothing."""

    def configure_single_job(self, session: Session) -> JobStatus:
        """Decide what comes next for this job: ``READY`` to run, ``CONFIGURED`` to wait for
        a dependency (re-checked later; set ``self.waiting_for`` to say what for, it is
        quoted when ``DEPENDENCY_TIMEOUT`` passes), or ``CANCELLED``. Default: ``READY``."""
        return JobStatus.READY

    # -- reading from the database ---------------------------------------------------------
    @classmethod
    def from_database_value(cls, attribute: str, value: Any) -> Any:
        """Convert a raw database value (e.g. from the per-type stored procedure) of
        ``attribute`` into its Python value. Default: unchanged."""
        return value

    # -- publication -----------------------------------------------------------------------
    def generated_a_product(self) -> bool:
        """Whether this job produced output products to publish. Default: an exit code of 0
        and an output path are known."""
        return self.exit_code == 0 and bool(self.output_path)

    def set_product_publication_date(self, published_at: datetime) -> None:
        """Record when the output products were published (the broker's confirmation)."""
        self.output_publication_date = published_at

    def get_products_publication_jsons(self) -> list[dict[str, Any]]:
        """The messages announcing the output products, one per entry of
        ``OUTPUT_PRODUCTS_LIST``. Default: the job's identifying fields."""
        return [
            {
                "job_type": self.job_type,
                "job_id": self.id,
                "unique_id": str(self.unique_id),
                "product": product,
                "input_product_id": self.input_product_id,
                "tile_id": self.tile_id,
                "output_path": self.output_path,
                "input_publication_date": _iso(self.input_publication_date),
            }
            for product in (type(self).OUTPUT_PRODUCTS_LIST or [])
        ]

    # -- the worker's steps ----------------------------------------------------------------
    # ``context`` is the worker runtime's view of the attempt (work dir, storage, runner).
    # The default implementations come with the worker runtime; until then a job type that
    # runs must implement them.
    def job_pre_processing(self, context: Any) -> None:
        """Copy the input product and external dependencies into the work dir."""
        raise NotImplementedError(f"{type(self).__name__}.job_pre_processing is not implemented")

    def job_processing(self, context: Any) -> int:
        """Run the science step; return its return code."""
        raise NotImplementedError(f"{type(self).__name__}.job_processing is not implemented")

    def job_post_processing(self, context: Any, return_code: int) -> None:
        """Check the return code, upload the outputs, clean the work dir."""
        raise NotImplementedError(f"{type(self).__name__}.job_post_processing is not implemented")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
