"""The ``tile_series`` job type (the seed system's tile time series): a snow mask per
Sentinel-2-like tile product, each date after the previous one of its tile.

- **Discovery**: every ``<tile_series_input_prefix>/<product>/metadata.json``; the
  metadata gives the tile, the measurement date and the publication date (the discovery
  window is on the latter). Nothing configured: nothing discovered.
- **Priority** from the product's publication delay (publication - measurement): at most
  ``tile_series_nrt_hours`` → nrt; at most ``tile_series_delayed_days`` → delayed; later
  → reprocessing.
- **Configuration** (``configure_single_job``, re-checked every
  ``configure_recheck_seconds``): a date must not be processed before an earlier date of
  its tile, even one discovered after it. A job (tile *t*, measured at *m*) stays
  ``configured`` until both hold:

  1. *nothing earlier can still come*: the type's discovery cursor (the newest input
     publication date of its jobs, where creation starts its next window: a product
     published before it is either known already or never discovered) has reached
     *m* + ``tile_series_settle_hours`` (*S*). Every product of *t* measured before *m* and
     published within *S* of its measurement was published before that, so its job exists;
  2. *the previous date has its output*: the job of *t* with the latest earlier measurement
     date (cancelled ones aside), looked up again at every re-check, is ``processed`` or
     later (``done`` without a product counts too: there is nothing more to wait for).

  **Guarantee**: a date is processed only after every earlier date of its tile published
  within *S* of its measurement has produced its output, whatever the order in which they
  are discovered. A product published later than that (a *late* product, e.g. a
  reprocessed date) still waits for its own previous date, and the later dates still
  waiting wait for it; later dates already released are not redone: a warning names them.
  The price is timeliness: no date is released before *m* + *S* (and before the catalogue
  has published something at least that recent). ``S = 0`` is the seed's rule: released as
  soon as the known previous date has its output.
- **Processing**: ``python -m joblife.science.snow`` (NDSI rule), chosen by
  ``tile_series_runner`` (:mod:`joblife.jobtypes.science_runner`): ``process`` (default)
  on the worker, ``docker`` in ``tile_series_image`` (``workers/snow/Containerfile``),
  ``auto``: the container when the engine has the image. Output
  ``tile_series/<product>/<product>_SNW.tif``, published as ``snow_mask``.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from joblife.config import Settings, get_settings
from joblife.jobtypes import discovery, science_runner
from joblife.model.job import TIMESTAMPTZ
from joblife.model.priority import Priority
from joblife.model.status import JobStatus
from joblife.model.template import JobsToCreate, JobTemplate
from joblife.science import outcome
from joblife.storage import Storage

if TYPE_CHECKING:
    from joblife.worker.context import WorkerContext

log = logging.getLogger(__name__)
S = JobStatus
#: Statuses of a predecessor that has produced its output (or finished without one).
OUTPUT_PRODUCED = (S.PROCESSED, S.START_PUBLICATION, S.PUBLISHED, S.DONE)
#: Statuses of a job not released yet (or never to be).
NOT_RELEASED = (S.INITIALIZED, S.CONFIGURED, S.CANCELLED)
METADATA_PATTERN = r"[^/]+/metadata\.json"
#: The science command line after the interpreter (the same in a process and a container).
_SNOW_ARGS = [
    "-m", "joblife.science.snow", "{input_dir}", "{output_dir}/{input_product_id}_SNW.tif",
]  # fmt: skip


class TileSeriesJob(JobTemplate):
    """One tile product's snow mask; see the module docstring."""

    __tablename__ = "tile_series_jobs"
    JOB_NAME = "tile_series"
    INPUT_PRODUCT_TYPE = "s2"
    NOMAD_JOB_NAME = "joblife-tile-series"
    WORKER_FLAVOR_NAME = "small"
    OUTPUT_PRODUCTS_LIST = ["snow_mask"]
    GET_JOBS_WITH_STATUS_PROCEDURE_NAME = "get_tile_series_jobs_with_status"

    # The process variant; tile_series_runner may run CONTAINER_COMMAND in the image instead.
    SCIENCE_RUNNER = "process"
    SCIENCE_COMMAND = [sys.executable, *_SNOW_ARGS]
    CONTAINER_COMMAND = ["python", *_SNOW_ARGS]
    PRODUCT_RETURN_CODES = outcome.PRODUCT_RETURN_CODES
    NO_PRODUCT_RETURN_CODES = outcome.NO_PRODUCT_RETURN_CODES
    RETRYABLE_RETURN_CODES = outcome.RETRYABLE_RETURN_CODES

    measurement_date: Mapped[datetime] = mapped_column(TIMESTAMPTZ)
    #: The previous date's job this one waited for (None: the first of its tile).
    previous_job_id: Mapped[int | None] = mapped_column(BigInteger)

    # -- creation ------------------------------------------------------------------------
    @classmethod
    def get_jobs_to_create(cls, start: datetime, end: datetime) -> JobsToCreate:
        settings = get_settings()
        found = JobsToCreate()
        location = settings.tile_series_input_prefix
        if not location:
            return found
        storage, prefix, objects = discovery.find(location, settings, METADATA_PATTERN)
        for found_object in objects:
            relative = found_object.key
            try:
                metadata = read_metadata(storage, prefix + relative, found_object.size)
            except ValueError as exc:  # one bad product must not hide the others
                log.warning("tile product skipped: %s", exc)
                continue
            published = metadata["publication_date"]
            if not start <= published < end:
                continue
            product = relative.split("/", 1)[0]
            found.to_create.append(
                cls(
                    input_product_id=product,
                    name=f"snow mask {product}",
                    tile_id=metadata["tile_id"],
                    input_path=discovery.input_location(location, product) + "/",
                    input_publication_date=published,
                    measurement_date=metadata["measurement_date"],
                )
            )
        return found

    def job_pre_insertion_setup(self) -> None:
        """The priority from the publication delay (see the module docstring)."""
        self.priority = int(
            priority_for(self.measurement_date, self.input_publication_date, get_settings())
        )

    # -- configuration -------------------------------------------------------------------
    #: The discovery cursor's date (``datetime | None``), read once per configuration batch
    #: by :meth:`configure_batch_jobs` (not annotated: not a mapped column).
    _cursor = None

    @classmethod
    def configure_batch_jobs(cls, session: Session, jobs: list[TileSeriesJob]) -> None:
        """Read the discovery cursor once for the batch: every job's settle rule compares
        its measurement with it."""
        newest = cls.get_last_inserted_job(session)
        cursor = newest.input_publication_date if newest is not None else None
        for job in jobs:
            job._cursor = cursor

    def configure_single_job(self, session: Session) -> JobStatus:
        """Ready once nothing earlier can still be discovered and the previous date of the
        tile has its output (see the module docstring)."""
        cls = type(self)
        same_series = (
            cls.tile_id == self.tile_id,
            cls.reprocessing_context == self.reprocessing_context,
        )
        if self.status is S.INITIALIZED:
            self._warn_if_late(session, same_series)
        previous = session.scalars(
            select(cls)
            .where(
                *same_series,
                cls.measurement_date < self.measurement_date,
                cls.status_id != S.CANCELLED,
            )
            .order_by(cls.measurement_date.desc(), cls.id.desc())
            .limit(1)
        ).first()
        self.previous_job_id = previous.id if previous is not None else None
        settle = timedelta(hours=get_settings().tile_series_settle_hours)
        if settle:
            cursor = self._cursor
            due = self.measurement_date + settle
            if cursor is None or cursor < due:
                at = cursor.isoformat(timespec="seconds") if cursor else "nothing yet"
                self.waiting_for = (
                    f"the discovery cursor to reach {due.isoformat(timespec='seconds')} "
                    f"(measurement + tile_series_settle_hours; it is at {at}): until then an "
                    f"earlier date of tile {self.tile_id} may still come"
                )
                return S.CONFIGURED
        if previous is None or previous.status in OUTPUT_PRODUCED:
            return S.READY
        self.waiting_for = (
            f"the {previous.measurement_date:%Y-%m-%d %H:%M} product of tile {self.tile_id} "
            f"(job {previous.id}, {previous.status}) to produce its output"
        )
        return S.CONFIGURED

    def _warn_if_late(self, session: Session, same_series: tuple[Any, ...]) -> None:
        """Log a warning when later dates of the tile were released before this one was
        discovered (a late product: beyond the guarantee of the module docstring)."""
        cls = type(self)
        released = session.execute(
            select(cls.id, cls.input_product_id)
            .where(
                *same_series,
                cls.measurement_date > self.measurement_date,
                cls.status_id.not_in([int(s) for s in NOT_RELEASED]),
            )
            .order_by(cls.measurement_date)
        ).all()
        if released:
            delay = (self.input_publication_date or self.measurement_date) - self.measurement_date
            log.warning(
                "tile %s: %s (measured %s) was published %s after its measurement, beyond "
                "tile_series_settle_hours; later dates already released are not redone: %s",
                self.tile_id,
                self.input_product_id,
                self.measurement_date.isoformat(),
                delay,
                ", ".join(f"{product} (job {job_id})" for job_id, product in released),
            )

    # -- the worker's steps ----------------------------------------------------------------
    def job_processing(self, context: WorkerContext) -> int:
        """The snow mask command line with the runner ``tile_series_runner`` chooses."""
        settings = context.settings
        return science_runner.run_science(
            self,
            context,
            settings.tile_series_runner,
            settings.tile_series_image,
            self.CONTAINER_COMMAND,
        )

    # -- publication ---------------------------------------------------------------------
    def get_products_publication_jsons(self) -> list[dict[str, Any]]:
        """The default message plus the measurement date."""
        messages = super().get_products_publication_jsons()
        for message in messages:
            message["measurement_date"] = self.measurement_date.isoformat()
        return messages


def priority_for(measured: datetime, published: datetime | None, settings: Settings) -> Priority:
    """nrt / delayed / reprocessing from the delay between measurement and publication."""
    if published is None:
        return Priority.NRT
    delay = published - measured
    if delay <= timedelta(hours=settings.tile_series_nrt_hours):
        return Priority.NRT
    if delay <= timedelta(days=settings.tile_series_delayed_days):
        return Priority.DELAYED
    return Priority.REPROCESSING


#: Metadata read at discovery, by (storage URL, size): a product is read once.
_metadata_cache: dict[tuple[str, int], dict[str, Any]] = {}


def read_metadata(storage: Storage, key: str, size: int) -> dict[str, Any]:
    """A product's ``metadata.json`` (of ``size`` bytes, as listed): tile_id,
    measurement_date and publication_date (timezone-aware; a naive date is UTC).
    ``ValueError`` naming the file if unusable. Read once per (URL, size)."""
    url = storage.url(key)
    cached = _metadata_cache.get((url, size))
    if cached is not None:
        return cached
    with tempfile.TemporaryDirectory(prefix="joblife-tile-") as tmp:
        path = Path(tmp) / "metadata.json"
        storage.download(key, path)
        try:
            raw = json.loads(path.read_text())
            metadata = {
                "tile_id": str(raw["tile_id"]),
                "measurement_date": _aware(datetime.fromisoformat(raw["measurement_date"])),
                "publication_date": _aware(datetime.fromisoformat(raw["publication_date"])),
            }
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"tile product metadata {url} is unusable: {exc!r}") from exc
    _metadata_cache[(url, size)] = metadata
    return metadata


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
