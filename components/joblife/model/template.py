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

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

from sqlalchemy import BigInteger, ForeignKey, select
from sqlalchemy.orm import Session, mapped_column

from joblife.config import get_settings
from joblife.model.job import Job
from joblife.model.status import JobStatus
from joblife.runners.base import DEFAULT_ISOLATION, ContainerIsolation

if TYPE_CHECKING:
    from joblife.worker.context import WorkerContext
    from joblife.worker.outputs import ProductOutputs


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

    # -- discovery (docs/partner-guide.md, "Discovery") ---------------------------------------
    DISCOVERY_MODE: ClassVar[str] = "modified_since"
    """How creation asks :meth:`get_jobs_to_create` for products: ``modified_since`` (the
    window from the discovery cursor, less ``DISCOVERY_OVERLAP_SECONDS``, to now) or
    ``listing_diff`` (every product the type lists, at every cycle: a product dated before
    the cursor is found too). In both, a product whose natural key is known is skipped
    before anything is inserted."""
    DISCOVERY_SETTLE_SECONDS: ClassVar[float | None] = None
    """A product dated (``input_publication_date``) less than this before the cycle is left
    for a later cycle (a file may still be being written). None: the
    ``discovery_settle_seconds`` setting."""
    DISCOVERY_OVERLAP_SECONDS: ClassVar[float | None] = None
    """``modified_since``: the window starts this long before the cursor, for a storage
    that lists an object after a newer one (S3 dates a multipart upload by its start).
    None: the ``discovery_overlap_seconds`` setting."""
    REPROCESS_ON_CHANGE: ClassVar[bool] = False
    """A known product discovered with another ``input_publication_date`` (the reference
    types: its modification time) or ``input_listing`` than its latest job's gets a new
    job, whose ``reprocessing_context`` is :meth:`changed_input_context`. Off: it is
    skipped as known (logged at debug level)."""

    # -- the worker's science step (the default steps read these; docs/partner-guide.md) ----
    SCIENCE_RUNNER: ClassVar[str] = "docker"
    """How the science step runs: ``docker`` (a container) or ``process`` (a local
    executable)."""
    SCIENCE_IMAGE: ClassVar[str | None] = None
    """Container image of the science code (``docker`` runner)."""
    SCIENCE_COMMAND: ClassVar[Sequence[str] | None] = None
    """The science command, each part a template of the job's fields and the work dir's
    paths: ``["repack", "{input_dir}/{input_product_id}.h5", "{output_dir}"]``. None with
    the ``docker`` runner: the image's own command."""
    SCIENCE_ENVIRONMENT: ClassVar[Mapping[str, str]] = {}
    """Extra environment of the science step (values are templates, like the command)."""
    SCIENCE_USER: ClassVar[str | None] = None
    """User (``uid:gid``) the container runs as; None = the worker's own uid:gid, except on a
    root worker: then ``container_unprivileged_user``, handed the work dir (never root)."""
    SCIENCE_NETWORK: ClassVar[str] = "none"
    """Network mode of the container (``none``: the science code needs no network)."""
    SCIENCE_ISOLATION: ClassVar[ContainerIsolation] = DEFAULT_ISOLATION
    """What isolation of the container to relax (never root, read-only root, caps...)."""
    SCIENCE_TIMEOUT: ClassVar[timedelta | None] = None
    """Time limit of the science step; None = the ``science_timeout_seconds`` setting."""
    PRODUCT_RETURN_CODES: ClassVar[frozenset[int]] = frozenset({0})
    """Science return codes meaning "a product was made": outputs are uploaded."""
    NO_PRODUCT_RETURN_CODES: ClassVar[frozenset[int]] = frozenset()
    """Return codes meaning "ran fine, nothing to produce" (e.g. an all-cloudy scene)."""
    RETRYABLE_RETURN_CODES: ClassVar[frozenset[int]] = frozenset()
    """Return codes of a transient failure: ``external_error``, retried. Any other code is
    fatal: ``internal_error``."""
    INPUT_PATTERN: ClassVar[str | None] = None
    """With it, ``input_path`` is a prefix and every object under it whose key (relative to
    the prefix) fully matches this regular expression is downloaded. Without it, one object
    (or every object under ``input_path`` if it ends with ``/``)."""
    EXTERNAL_DEPENDENCIES: ClassVar[Mapping[str, str]] = {}
    """Auxiliary data: ``aux/<name>/`` ← a location template (a key of the storage or a
    URL; a trailing ``/`` takes every object under it)."""
    SKIP_IF_OUTPUT_EXISTS: ClassVar[bool] = True
    """Skip the science step when an earlier attempt already uploaded every output."""
    OUTPUT_LOCATION: ClassVar[str] = "{job_type}/{input_product_id}"
    """Template of ``output_path`` for a job that has none."""
    LOGS_LOCATION: ClassVar[str] = "joblife-logs/{job_type}/{unique_id}/attempt-{attempt}"
    """Where each attempt's logs are uploaded (post-mortem), success or failure."""

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
        """Discover the input products published in ``[start, end)`` (timezone-aware UTC
        datetimes; see ``DISCOVERY_MODE`` for the window) and return the jobs to create (and
        to record as cancelled). Every job type must implement it."""
        raise NotImplementedError(
            f"{cls.__name__}.get_jobs_to_create(start, end) must be implemented by the job type"
        )

    def job_pre_insertion_setup(self) -> None:
        """Complete a discovered job before it is inserted (paths, priority...). Default:
        nothing."""

    def changed_input_context(self) -> str:
        """The ``reprocessing_context`` of the new job of a known product whose input
        changed (``REPROCESS_ON_CHANGE``), set after :meth:`job_pre_insertion_setup`.
        Default: ``changed-`` and the input publication date in UTC
        (``changed-20260301T101500Z``, microseconds when there are some), or a digest of the
        input listing for a job without a date. A type that sets ``output_path`` itself
        makes it depend on the context (the default output location does)."""
        published = self.input_publication_date
        if published is None:
            listing = json.dumps(self.input_listing or {}, sort_keys=True)
            return f"changed-{hashlib.sha256(listing.encode()).hexdigest()[:16]}"
        stamp = published.astimezone(UTC).strftime("%Y%m%dT%H%M%S")
        fraction = f".{published.microsecond:06d}" if published.microsecond else ""
        return f"changed-{stamp}{fraction}Z"

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
        """Whether this job produced output products to publish. Default: the science
        return code is one of ``PRODUCT_RETURN_CODES`` and an output path is known."""
        return self.exit_code in type(self).PRODUCT_RETURN_CODES and bool(self.output_path)

    def set_product_publication_date(self, published_at: datetime) -> None:
        """Record when the output products were published (the broker's confirmation)."""
        self.output_publication_date = published_at

    def get_products_publication_jsons(self) -> list[dict[str, Any]]:
        """The messages announcing the output products, one per entry of
        ``OUTPUT_PRODUCTS_LIST``; their schema is docs/product-message.schema.json.
        Default: the job's identifying fields, ``output_path``, and where a consumer finds
        the product (:meth:`product_outputs`): ``output_url``, the storage URL of the
        output prefix, and ``files``, each output's ``name``, ``size``, ``sha256`` and
        ``url`` (both null when the type uploads its outputs itself), with
        ``files_listed``, ``files_total`` and ``manifest_url`` (:func:`files_fields`: past
        ``product_message_max_files`` outputs, ``files`` is null and the manifest lists
        them)."""
        outputs = self.product_outputs()
        return [
            {
                "job_type": self.job_type,
                "job_id": self.id,
                "unique_id": str(self.unique_id),
                "product": product,
                "input_product_id": self.input_product_id,
                "tile_id": self.tile_id,
                "output_path": self.output_path,
                "output_url": outputs.url if outputs is not None else None,
                **files_fields(outputs),
                "input_publication_date": _iso(self.input_publication_date),
            }
            for product in (type(self).OUTPUT_PRODUCTS_LIST or [])
        ]

    def product_outputs(self) -> ProductOutputs | None:
        """This attempt's outputs, as the worker's default post-processing uploaded them
        (or its pre-processing found them uploaded by an earlier attempt): the output URL
        and each file's name, size, SHA-256 and URL. None outside a worker, or when the
        type uploads its outputs itself (a message of its own may then list them)."""
        from joblife.worker.outputs import recorded_outputs

        return recorded_outputs(self)

    # -- the worker's steps ----------------------------------------------------------------
    # The defaults live in joblife.worker.steps (imported when called: the worker runtime
    # imports the model, not the other way round). Override any of them, or call them
    # from an override (``super().job_pre_processing(context)``).
    def job_pre_processing(self, context: WorkerContext) -> None:
        """A clean work dir; skip the science step if every output exists already;
        otherwise download the input product into ``input/`` and the external dependencies
        into ``aux/<name>/``, then check each file (:meth:`check_input`)."""
        from joblife.worker.steps import pre_processing

        pre_processing(self, context)

    def job_processing(self, context: WorkerContext) -> int:
        """Run the science step with the type's runner; return its return code (a timeout
        is an ``ExternalJobError``)."""
        from joblife.worker.steps import processing

        return processing(self, context)

    def job_post_processing(self, context: WorkerContext, return_code: int) -> None:
        """Classify the return code (product / no product / retryable / fatal), upload the
        outputs under ``output_path`` with a manifest, upload the logs, clean the work dir."""
        from joblife.worker.steps import post_processing

        post_processing(self, context, return_code)

    def input_pattern(self) -> str | None:
        """The pattern the default pre-processing fetches ``input_path`` with (see
        ``INPUT_PATTERN``); a type whose jobs differ overrides it. Default:
        ``INPUT_PATTERN``."""
        return type(self).INPUT_PATTERN

    def default_output_path(self) -> str:
        """The ``output_path`` of a job that has none: ``OUTPUT_LOCATION`` filled in. It
        depends only on the natural key, so a re-created job finds its outputs."""
        context = "" if not self.reprocessing_context else f"/{self.reprocessing_context}"
        location = type(self).OUTPUT_LOCATION.format(
            job_type=self.job_type or type(self).JOB_NAME,
            input_product_id=self.input_product_id,
            tile_id=self.tile_id,
        )
        return location + context

    def check_input(self, path: Path) -> None:
        """Check one downloaded input file; raise ``InternalJobError`` if it is corrupt.
        Default: by suffix (JSON, gzip, tar, zip, HDF5, images; others pass)."""
        from joblife.worker.inputs import check_file

        check_file(path)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def files_fields(outputs: ProductOutputs | None) -> dict[str, Any]:
    """The default product message's fields about the output files: ``files`` (the
    complete list, or null), ``files_listed`` (whether it is there), ``files_total`` (how
    many outputs) and ``manifest_url`` (joblife's manifest, which lists them all); all null
    (``files_listed`` false) when the outputs are not known.

    Past ``product_message_max_files`` outputs the list is left out, not cut: a science
    step writing 100,000 files would make a message of tens of MB, over what a broker
    accepts, and a partial list would read as complete to a consumer that predates
    ``files_listed``, where a null fails it loudly."""
    from joblife.worker.steps import MANIFEST

    if outputs is None:
        return {"files": None, "files_listed": False, "files_total": None, "manifest_url": None}
    listed = len(outputs.files) <= get_settings().product_message_max_files
    return {
        "files": outputs.files_json() if listed else None,
        "files_listed": listed,
        "files_total": len(outputs.files),
        # The worker writes the manifest under the output prefix, next to the files (its
        # name needs no escaping in a file:// URL).
        "manifest_url": outputs.url + ("" if outputs.url.endswith("/") else "/") + MANIFEST,
    }
