"""The ``tile_series`` job type (the seed system's tile time series): a snow mask per
Sentinel-2-like tile product, each date after the previous one of its tile.

- **Discovery**: every ``<tile_series_input_prefix>/<product>/metadata.json``; the
  metadata gives the tile, the measurement date and the publication date (the discovery
  window is on the latter). Nothing configured: nothing discovered.
- **Priority** from the product's publication delay (publication - measurement): at most
  ``tile_series_nrt_hours`` → nrt; at most ``tile_series_delayed_days`` → delayed; later
  → reprocessing.
- **Configuration**: a job stays ``configured`` until the previous date's job of the same
  tile (the job with the latest earlier measurement date, cancelled ones aside) has
  produced its output (``processed`` or later; ``done`` without a product counts too:
  there is nothing more to wait for). The predecessor is looked up again at every
  re-check, so a product of an earlier date discovered late (out-of-order publication)
  becomes the predecessor of the later jobs that are still waiting. A job already released
  cannot be held back by a product discovered after it.
- **Processing**: ``python -m joblife.science.snow`` (NDSI rule) through the process
  runner; output ``tile_series/<product>/<product>_SNW.tif``, published as ``snow_mask``.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from joblife.config import Settings, get_settings
from joblife.jobtypes import discovery
from joblife.model.job import TIMESTAMPTZ
from joblife.model.priority import Priority
from joblife.model.status import JobStatus
from joblife.model.template import JobsToCreate, JobTemplate
from joblife.science import outcome
from joblife.storage import Storage

log = logging.getLogger(__name__)
S = JobStatus
#: Statuses of a predecessor that has produced its output (or finished without one).
OUTPUT_PRODUCED = (S.PROCESSED, S.START_PUBLICATION, S.PUBLISHED, S.DONE)
METADATA_PATTERN = r"[^/]+/metadata\.json"


class TileSeriesJob(JobTemplate):
    """One tile product's snow mask; see the module docstring."""

    __tablename__ = "tile_series_jobs"
    JOB_NAME = "tile_series"
    INPUT_PRODUCT_TYPE = "s2"
    NOMAD_JOB_NAME = "joblife-tile-series"
    WORKER_FLAVOR_NAME = "small"
    OUTPUT_PRODUCTS_LIST = ["snow_mask"]
    GET_JOBS_WITH_STATUS_PROCEDURE_NAME = "get_tile_series_jobs_with_status"

    SCIENCE_RUNNER = "process"
    SCIENCE_COMMAND = [
        sys.executable, "-m", "joblife.science.snow",
        "{input_dir}", "{output_dir}/{input_product_id}_SNW.tif",
    ]  # fmt: skip
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
    def configure_single_job(self, session: Session) -> JobStatus:
        """Ready once the previous date's job of the tile produced its output."""
        cls = type(self)
        previous = session.scalars(
            select(cls)
            .where(
                cls.tile_id == self.tile_id,
                cls.reprocessing_context == self.reprocessing_context,
                cls.measurement_date < self.measurement_date,
                cls.status_id != S.CANCELLED,
            )
            .order_by(cls.measurement_date.desc(), cls.id.desc())
            .limit(1)
        ).first()
        if previous is None:
            self.previous_job_id = None
            return S.READY
        self.previous_job_id = previous.id
        if previous.status in OUTPUT_PRODUCED:
            return S.READY
        self.waiting_for = (
            f"the {previous.measurement_date:%Y-%m-%d %H:%M} product of tile {self.tile_id} "
            f"(job {previous.id}, {previous.status}) to produce its output"
        )
        return S.CONFIGURED

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
