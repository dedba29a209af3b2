"""The ndvi job type: one job per tile product, a vegetation index from its red and
near-infrared bands.

An input product is a folder ``<NDVI_INPUT_LOCATION>/<product id>/`` of joblife's storage
holding ``metadata.json`` (``{"tile_id": ..., "published_at": ISO 8601}``), ``red.npy``
and ``nir.npy``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from joblife.discovery import find, get_settings, input_location, join_key
from joblife.model import JobsToCreate, JobTemplate
from sqlalchemy import Float, text
from sqlalchemy.orm import Mapped, mapped_column

#: Where products are discovered: a key prefix of joblife's storage (JOBLIFE_STORAGE_URL).
INPUT_LOCATION = os.environ.get("NDVI_INPUT_LOCATION", "ndvi/inputs")
#: What makes a folder under INPUT_LOCATION a product: its metadata, next to its two bands.
METADATA = r"[^/]+/metadata\.json"


class NdviJob(JobTemplate):
    __tablename__ = "ndvi_jobs"
    JOB_NAME = "ndvi"
    INPUT_PRODUCT_TYPE = "tile-bands"
    NOMAD_JOB_NAME = "joblife-ndvi"
    WORKER_FLAVOR_NAME = "small"
    OUTPUT_PRODUCTS_LIST = ["ndvi"]
    GET_JOBS_WITH_STATUS_PROCEDURE_NAME = "get_ndvi_jobs_with_status"

    # The science step: a local executable here; "docker" + SCIENCE_IMAGE on a worker
    # with a container engine (Containerfile next to pyproject.toml).
    SCIENCE_RUNNER = "process"
    SCIENCE_COMMAND = [
        sys.executable,
        "-m",
        "joblife_ndvi.science",
        "{input_dir}",
        "{output_dir}/ndvi.npy",
        "--threshold",
        "{vegetation_threshold}",
    ]
    INPUT_PATTERN = r"(red|nir)\.npy"  # input_path is a prefix: fetch these two bands
    NO_PRODUCT_RETURN_CODES = frozenset({3})  # nothing but no-data pixels
    RETRYABLE_RETURN_CODES = frozenset({5})

    vegetation_threshold: Mapped[float] = mapped_column(
        Float, server_default=text("0.3"), default=0.3
    )

    @classmethod
    def get_jobs_to_create(cls, start: datetime, end: datetime) -> JobsToCreate:
        """Every product whose ``published_at`` (with its UTC offset: ``start`` and ``end``
        are timezone-aware) is in ``[start, end)``."""
        storage, prefix, listed = find(INPUT_LOCATION, get_settings(), METADATA)
        found = JobsToCreate()
        with tempfile.TemporaryDirectory() as scratch:
            for item in listed:  # keys relative to INPUT_LOCATION, the whole listing
                product_id = item.key.split("/")[0]
                local = Path(scratch) / f"{product_id}.json"
                storage.download(join_key(prefix, item.key), local)
                metadata = json.loads(local.read_text())
                published = datetime.fromisoformat(metadata["published_at"])
                if start <= published < end:
                    found.to_create.append(
                        cls(
                            input_product_id=product_id,
                            tile_id=metadata["tile_id"],
                            input_publication_date=published,
                            input_path=input_location(INPUT_LOCATION, product_id),
                        )
                    )
        return found
