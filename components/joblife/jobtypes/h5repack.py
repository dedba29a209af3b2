"""The ``h5repack`` job type (seed job-h5-repack): rechunk each discovered HDF5 recording so
that reading one channel is fast.

- **Discovery**: every object under ``h5repack_input_prefix`` whose relative key fully
  matches ``h5repack_input_pattern`` (default ``.*\\.h5``) is one product, published when
  it was written (its modification time). Nothing configured: nothing discovered.
- **Skip**: an output already uploaded by an earlier attempt (its manifest) is not redone
  (``SKIP_IF_OUTPUT_EXISTS``, the seed's "is the repacked file there already?").
- **Processing**, chosen by ``h5repack_runner``: ``docker`` runs the HDF Group's
  ``h5repack`` in ``h5repack_image`` (an image that holds only the tool, e.g. built by
  ``workers/build-local-image.sh``): the layout is planned on the worker with
  :func:`~joblife.science.h5repack.plan_repack`, the tool runs in the container, and the
  result is checked on the worker with :func:`~joblife.science.h5repack.check_layout`;
  ``process`` runs ``python -m joblife.science.h5repack --method h5py`` (no tool needed);
  ``auto`` (default) takes the container when the engine answers and has the image.
- **Output**: ``h5repack/<relative key>/<file name>``, published as ``repacked``.
"""

from __future__ import annotations

import dataclasses
import posixpath
import sys
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, Integer, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from joblife.config import Settings, get_settings
from joblife.errors import InternalJobError
from joblife.jobtypes import discovery, science_runner
from joblife.model.template import JobsToCreate, JobTemplate
from joblife.science import outcome

if TYPE_CHECKING:
    from joblife.runners import RunSpec
    from joblife.science.h5repack import RepackPlan
    from joblife.worker.context import WorkerContext

DEFAULT_CHUNK_BYTES = 1 << 20


class H5RepackJob(JobTemplate):
    """One HDF5 recording to rechunk per channel; see the module docstring."""

    __tablename__ = "h5repack_jobs"
    JOB_NAME = "h5repack"
    INPUT_PRODUCT_TYPE = "hdf5"
    NOMAD_JOB_NAME = "joblife-h5repack"
    WORKER_FLAVOR_NAME = "small"
    OUTPUT_PRODUCTS_LIST = ["repacked"]
    GET_JOBS_WITH_STATUS_PROCEDURE_NAME = "get_h5repack_jobs_with_status"

    # The process variant; the container variant is built in job_processing.
    SCIENCE_RUNNER = "process"
    SCIENCE_COMMAND = [
        sys.executable, "-m", "joblife.science.h5repack",
        "{input_dir}/{file_name}", "{output_dir}/{file_name}",
        "--method", "h5py", "--channel-axis", "{channel_axis}", "--chunk-bytes", "{chunk_bytes}",
    ]  # fmt: skip
    PRODUCT_RETURN_CODES = outcome.PRODUCT_RETURN_CODES
    NO_PRODUCT_RETURN_CODES = outcome.NO_PRODUCT_RETURN_CODES
    RETRYABLE_RETURN_CODES = outcome.RETRYABLE_RETURN_CODES

    file_name: Mapped[str] = mapped_column(Text)
    channel_axis: Mapped[int] = mapped_column(Integer, server_default=text("0"), default=0)
    gzip_level: Mapped[int | None] = mapped_column(Integer)
    chunk_bytes: Mapped[int] = mapped_column(
        BigInteger, server_default=text(str(DEFAULT_CHUNK_BYTES)), default=DEFAULT_CHUNK_BYTES
    )

    # -- creation ------------------------------------------------------------------------
    @classmethod
    def get_jobs_to_create(cls, start: datetime, end: datetime) -> JobsToCreate:
        settings = get_settings()
        found = JobsToCreate()
        location = settings.h5repack_input_prefix
        if not location:
            return found
        pattern = settings.h5repack_input_pattern
        _, _, objects = discovery.find(location, settings, pattern)
        for relative, published in ((o.key, o.modified) for o in objects):
            if not start <= published < end:
                continue
            found.to_create.append(
                cls(
                    input_product_id=relative,
                    name=f"h5repack {relative}",
                    input_path=discovery.input_location(location, relative),
                    input_publication_date=published,
                    file_name=posixpath.basename(relative),
                    channel_axis=settings.h5repack_channel_axis,
                    gzip_level=settings.h5repack_gzip_level,
                    chunk_bytes=settings.h5repack_chunk_bytes,
                )
            )
        return found

    # -- the worker's steps ----------------------------------------------------------------
    def job_processing(self, context: WorkerContext) -> int:
        """The process variant (``python -m joblife.science.h5repack``) or the tool in the
        container, as ``h5repack_runner`` and the engine decide."""
        from joblife.worker.steps import processing, run_science_spec, science_spec

        if context.skip_science:
            return processing(self, context)
        runner = choose_runner(context.settings)
        context.figures["runner"] = runner
        spec = science_spec(self, context)
        if runner == "process":
            if self.gzip_level is not None:
                spec = dataclasses.replace(
                    spec, command=[*spec.command, "--gzip", str(self.gzip_level)]
                )
            return run_science_spec(self, context, "process", spec)
        return self._run_in_container(context, spec)

    def _run_in_container(self, context: WorkerContext, spec: RunSpec) -> int:
        """Plan on the worker, run ``h5repack`` in the image, check the layout here."""
        from joblife.science import h5repack
        from joblife.worker.steps import MOUNT_POINT, run_science_spec

        source = context.input_dir / self.file_name
        # InvalidInput (an internal error: retrying cannot help) propagates.
        plan = h5repack.plan_repack(
            source, self.channel_axis, None, self.gzip_level, self.chunk_bytes
        )
        if not plan.datasets:
            context.log_tail = [f"no numeric dataset of 2+ axes to rechunk in {self.file_name}"]
            return outcome.EXIT_NO_PRODUCT
        command = plan.tool_command(
            f"{MOUNT_POINT}/input/{self.file_name}", f"{MOUNT_POINT}/output/{self.file_name}"
        )
        spec = science_runner.in_container(
            self, context, spec, command, context.settings.h5repack_image
        )
        code = run_science_spec(self, context, "docker", spec)
        if code == outcome.EXIT_PRODUCT:
            # The tool's own success is not enough: the layout must be the planned one
            # (ProcessingFailed, an external error, otherwise).
            self._check_output(context, plan)
        return code

    def _check_output(self, context: WorkerContext, plan: RepackPlan) -> None:
        """Check the layout of ``output/<file_name>`` as read from a descriptor the upload's
        own checks opened: the container may have left a link there (h5py would follow
        it) or a FIFO (h5py would wait for a writer forever, the heartbeat beating on).
        Such an entry is an InternalJobError naming it, as the upload would say."""
        from joblife.science import h5repack
        from joblife.worker.workfiles import UnsafeWorkFile, WorkTree

        try:
            with WorkTree(context.work_dir, "output").open(self.file_name) as file:
                h5repack.check_layout(file, plan)
        except UnsafeWorkFile as exc:
            raise InternalJobError(f"refused to upload the output {exc}") from None
        except FileNotFoundError as exc:
            raise outcome.ProcessingFailed(
                f"the repacked file is not readable HDF5: {exc.strerror}: output/{self.file_name}"
            ) from None


def choose_runner(settings: Settings) -> str:
    """``docker`` or ``process`` for the ``h5repack_runner`` setting (``auto``: docker
    when the engine answers and has ``h5repack_image``)."""
    return science_runner.choose_runner(settings.h5repack_runner, settings.h5repack_image, settings)
