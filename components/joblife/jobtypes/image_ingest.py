"""The ``image_ingest`` job type (seed: image service ingest): build a chunked
multi-resolution pyramid of an image stack.

- **Inputs**, from either or both settings:
  ``image_ingest_source_url``: one image (a ``file://`` / ``s3://`` URL, or a key of the
  configured storage), one job named after the file; ``image_ingest_input_prefix``: every
  sub-directory of the prefix holding files whose path (relative to it) fully matches
  ``image_ingest_filter`` is a stack, one job. A product's publication date is when its
  newest matching file was written. Nothing configured: nothing discovered.
- **Processing**: ``python -m joblife.science.pyramid`` (Pillow resampling, h5py output)
  through the process runner, with the stack's filter (files that do not match are
  downloaded but not used).
- **Output**: ``image_ingest/<product>/pyramid.h5`` (``/levels/0``, ``/levels/1``...),
  published as ``pyramid``.
"""

from __future__ import annotations

import posixpath
import re
import sys
from datetime import datetime

from sqlalchemy import Integer, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from joblife.config import Settings, get_settings
from joblife.errors import ConfigurationError
from joblife.jobtypes import discovery
from joblife.model.template import JobsToCreate, JobTemplate
from joblife.science import outcome

#: The file name of the pyramid in the output.
PYRAMID_FILE = "pyramid.h5"
#: The filter of a single-URL job (its input directory holds that one file).
ANY_FILE = ".*"


class ImageIngestJob(JobTemplate):
    """One image or image stack to turn into a pyramid; see the module docstring."""

    __tablename__ = "image_ingest_jobs"
    JOB_NAME = "image_ingest"
    INPUT_PRODUCT_TYPE = "image_stack"
    NOMAD_JOB_NAME = "joblife-image-ingest"
    WORKER_FLAVOR_NAME = "small"
    OUTPUT_PRODUCTS_LIST = ["pyramid"]
    GET_JOBS_WITH_STATUS_PROCEDURE_NAME = "get_image_ingest_jobs_with_status"

    SCIENCE_RUNNER = "process"
    SCIENCE_COMMAND = [
        sys.executable, "-m", "joblife.science.pyramid",
        f"{{output_dir}}/{PYRAMID_FILE}", "{input_dir}",
        "--filter", "{input_filter}", "--min-size", "{min_size}", "--tile", "{tile_size}",
    ]  # fmt: skip
    PRODUCT_RETURN_CODES = outcome.PRODUCT_RETURN_CODES
    NO_PRODUCT_RETURN_CODES = outcome.NO_PRODUCT_RETURN_CODES
    RETRYABLE_RETURN_CODES = outcome.RETRYABLE_RETURN_CODES

    input_filter: Mapped[str] = mapped_column(
        Text, server_default=text(f"'{ANY_FILE}'"), default=ANY_FILE
    )
    min_size: Mapped[int] = mapped_column(Integer, server_default=text("64"), default=64)
    tile_size: Mapped[int] = mapped_column(Integer, server_default=text("256"), default=256)

    @classmethod
    def get_jobs_to_create(cls, start: datetime, end: datetime) -> JobsToCreate:
        settings = get_settings()
        found = JobsToCreate()
        candidates = []
        if settings.image_ingest_source_url:
            candidates.append(_single_image(settings))
        if settings.image_ingest_input_prefix:
            candidates += _stacks(settings)
        for product_id, input_path, published, pattern in candidates:
            if start <= published < end:
                found.to_create.append(
                    cls(
                        input_product_id=product_id,
                        name=f"image ingest {product_id}",
                        input_path=input_path,
                        input_publication_date=published,
                        input_filter=pattern,
                        min_size=settings.image_ingest_min_size,
                        tile_size=settings.image_ingest_tile,
                    )
                )
        return found


def _single_image(settings: Settings) -> tuple[str, str, datetime, str]:
    """The single-URL product: (product id, input path, publication date, filter)."""
    url = settings.image_ingest_source_url
    assert url
    if url.endswith("/"):
        raise ConfigurationError(
            f"image_ingest_source_url {url!r} must name one image (use "
            "image_ingest_input_prefix for a stack)"
        )
    storage, key = discovery.open_location(url, settings)
    published = discovery.modified_at(storage, key.rstrip("/"))
    name = posixpath.basename(url.rstrip("/"))
    return posixpath.splitext(name)[0] or name, url, published, ANY_FILE


def _stacks(settings: Settings) -> list[tuple[str, str, datetime, str]]:
    """The stacks under the prefix: one per sub-directory with matching files."""
    location = settings.image_ingest_input_prefix
    assert location
    try:
        matcher = re.compile(settings.image_ingest_filter)
    except re.error as exc:
        raise ConfigurationError(
            f"image_ingest_filter {settings.image_ingest_filter!r} is not a regular "
            f"expression: {exc}"
        ) from exc
    storage, prefix, objects = discovery.find(location, settings, None)
    matched: dict[str, datetime] = {}
    for relative in (o.key for o in objects):
        stack, _, inner = relative.partition("/")
        if not inner or not matcher.fullmatch(inner):
            continue
        written = discovery.modified_at(storage, prefix + relative)
        matched[stack] = max(matched.get(stack, written), written)
    return [
        (
            stack,
            discovery.input_location(location, stack) + "/",
            published,
            settings.image_ingest_filter,
        )
        for stack, published in sorted(matched.items())
    ]
