"""The ``image_ingest`` job type (seed: image service ingest): build a chunked
multi-resolution pyramid of an image stack.

- **Inputs**, from either or both settings (nothing configured: nothing discovered):

  - ``image_ingest_source_url``: one image, one job named after the file. An ``http://`` or
    ``https://`` URL that needs no account (the seed's "single URL which does not require
    authentication"; streamed to disk by :class:`~joblife.storage.http.HttpSource`, its
    publication date is its ``Last-Modified``), a ``file://`` or ``s3://`` URL, or a key of
    the configured storage.
  - ``image_ingest_input_prefix`` and ``image_ingest_filter`` (the seed's container and
    ``--filter``): the files under the prefix whose path **relative to the prefix** fully
    matches the filter (e.g. ``data/raw/original/pm31\\d{2}o\\.png``). They are grouped into
    stacks **by directory**: the matching files directly in one directory (relative to the
    prefix) are one stack, one job, named after that directory (``data/raw/original``;
    files directly under the prefix: the prefix's last path segment), its frames in file
    name order. The stack's publication date is when its newest matching file was
    written. The job's ``input_path`` is the prefix and its ``input_filter`` selects exactly
    that stack's files (:func:`stack_pattern`): the worker downloads only those, keeping
    their paths relative to the prefix. Its ``input_listing`` keeps the frames found and
    their sizes: a frame deleted or rewritten before the worker fetches it fails the job
    as an external error naming it, never a pyramid with a frame fewer.

- **Processing**: ``python -m joblife.science.pyramid`` (Pillow resampling, h5py output) on
  the stack's files, chosen by ``image_ingest_runner`` (:mod:`joblife.jobtypes.science_runner`):
  ``process`` (default) on the worker, ``docker`` in ``image_ingest_image``
  (``workers/pyramid/Containerfile``), ``auto``: the container when the engine has the image.
- **Output**: ``image_ingest/<product>/pyramid.h5`` (``/levels/0``, ``/levels/1``...),
  published as ``pyramid``.
"""

from __future__ import annotations

import posixpath
import re
import sys
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sqlalchemy import Integer, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from joblife.config import Settings, get_settings
from joblife.errors import ConfigurationError
from joblife.jobtypes import discovery, science_runner
from joblife.model.template import JobsToCreate, JobTemplate
from joblife.science import outcome
from joblife.storage import StoredObject

if TYPE_CHECKING:
    from joblife.worker.context import WorkerContext

#: The file name of the pyramid in the output.
PYRAMID_FILE = "pyramid.h5"
#: The filter of a single-URL job (its input directory holds that one file).
ANY_FILE = ".*"
#: The science command line after the interpreter (the same in a process and a container).
_PYRAMID_ARGS = [
    "-m", "joblife.science.pyramid",
    f"{{output_dir}}/{PYRAMID_FILE}", "{input_dir}",
    "--filter", "{input_filter}", "--min-size", "{min_size}", "--tile", "{tile_size}",
]  # fmt: skip
#: Leading global flags of a regular expression (``(?i)``), kept in front when it is nested.
_GLOBAL_FLAGS = re.compile(r"\A(?:\(\?[aiLmsux]+\))+")


class ImageIngestJob(JobTemplate):
    """One image or image stack to turn into a pyramid; see the module docstring."""

    __tablename__ = "image_ingest_jobs"
    JOB_NAME = "image_ingest"
    INPUT_PRODUCT_TYPE = "image_stack"
    NOMAD_JOB_NAME = "joblife-image-ingest"
    WORKER_FLAVOR_NAME = "small"
    OUTPUT_PRODUCTS_LIST = ["pyramid"]
    GET_JOBS_WITH_STATUS_PROCEDURE_NAME = "get_image_ingest_jobs_with_status"

    # The process variant; image_ingest_runner may run CONTAINER_COMMAND in the image instead.
    SCIENCE_RUNNER = "process"
    SCIENCE_COMMAND = [sys.executable, *_PYRAMID_ARGS]
    CONTAINER_COMMAND = ["python", *_PYRAMID_ARGS]
    PRODUCT_RETURN_CODES = outcome.PRODUCT_RETURN_CODES
    NO_PRODUCT_RETURN_CODES = outcome.NO_PRODUCT_RETURN_CODES
    RETRYABLE_RETURN_CODES = outcome.RETRYABLE_RETURN_CODES

    #: The files of the product: for a stack, a pattern on paths relative to ``input_path``
    #: (the prefix) matching exactly the stack's files; for one image, any file.
    input_filter: Mapped[str] = mapped_column(
        Text, server_default=text(f"'{ANY_FILE}'"), default=ANY_FILE
    )
    min_size: Mapped[int] = mapped_column(Integer, server_default=text("64"), default=64)
    tile_size: Mapped[int] = mapped_column(Integer, server_default=text("256"), default=256)

    # -- creation ------------------------------------------------------------------------
    @classmethod
    def get_jobs_to_create(cls, start: datetime, end: datetime) -> JobsToCreate:
        settings = get_settings()
        found = JobsToCreate()
        candidates = []
        if settings.image_ingest_source_url:
            candidates.append(_single_image(settings))
        if settings.image_ingest_input_prefix:
            candidates += _stacks(settings)
        for product_id, input_path, published, pattern, listing in candidates:
            if start <= published < end:
                found.to_create.append(
                    cls(
                        input_product_id=product_id,
                        name=f"image ingest {product_id}",
                        input_path=input_path,
                        input_publication_date=published,
                        input_filter=pattern,
                        input_listing=listing,
                        min_size=settings.image_ingest_min_size,
                        tile_size=settings.image_ingest_tile,
                    )
                )
        return found

    # -- the worker's steps ----------------------------------------------------------------
    def input_pattern(self) -> str | None:
        """A stack's input is only the files ``input_filter`` matches under its prefix, not
        every object there; one image is fetched as it is."""
        if self.input_path and self.input_path.endswith("/"):
            return self.input_filter
        return type(self).INPUT_PATTERN

    def job_processing(self, context: WorkerContext) -> int:
        """The pyramid command line with the runner ``image_ingest_runner`` chooses."""
        settings = context.settings
        return science_runner.run_science(
            self,
            context,
            settings.image_ingest_runner,
            settings.image_ingest_image,
            self.CONTAINER_COMMAND,
        )


def stack_pattern(file_filter: str, directory: str) -> str:
    """The pattern of the stack in ``directory`` (relative to the prefix; ``""``: the prefix
    itself): the files directly in it whose path relative to the prefix fully matches
    ``file_filter``. Like the filter, it is matched against paths relative to the prefix."""
    flags = _GLOBAL_FLAGS.match(file_filter)
    lead = flags.group(0) if flags else ""
    body = file_filter[len(lead) :]
    inside = re.escape(f"{directory}/") if directory else ""
    return rf"{lead}(?=(?:{body})\Z){inside}[^/]+"


#: A product found: (product id, input path, publication date, filter, input listing).
_Candidate = tuple[str, str, datetime, str, dict[str, int] | None]


def _single_image(settings: Settings) -> _Candidate:
    """The single-URL product (no listing: one object)."""
    url = settings.image_ingest_source_url
    assert url
    path = urlsplit(url).path if "://" in url else url
    if not path or path.endswith("/"):
        raise ConfigurationError(
            f"image_ingest_source_url {url!r} must name one image (use "
            "image_ingest_input_prefix for a stack)"
        )
    storage, key = discovery.open_location(url, settings)
    published = storage.modified_at(key.rstrip("/"))
    name = posixpath.basename(path)
    return posixpath.splitext(name)[0] or name, url, published, ANY_FILE, None


def _stacks(settings: Settings) -> list[_Candidate]:
    """The stacks under the prefix (see the module docstring), each listing its frames."""
    location = settings.image_ingest_input_prefix
    assert location
    file_filter = settings.image_ingest_filter
    try:
        re.compile(stack_pattern(file_filter, ""))
    except re.error as exc:
        raise ConfigurationError(
            f"image_ingest_filter {file_filter!r} is not a regular expression: {exc}"
        ) from exc
    _, _, objects = discovery.find(location, settings, file_filter)
    frames: dict[str, list[StoredObject]] = {}
    for stored in objects:
        frames.setdefault(posixpath.dirname(stored.key), []).append(stored)
    input_path = f"{location.rstrip('/')}/"
    return [
        (
            directory or _last_segment(location),
            input_path,
            max(frame.modified for frame in stack),
            stack_pattern(file_filter, directory),
            discovery.input_listing(stack),
        )
        for directory, stack in sorted(frames.items())
    ]


def _last_segment(location: str) -> str:
    """The name of a location's last path segment (a bucket's name for ``s3://bucket``)."""
    parts = urlsplit(location) if "://" in location else None
    path = (parts.path if parts else location).strip("/")
    return posixpath.basename(path) or (parts.netloc if parts else "") or "stack"
