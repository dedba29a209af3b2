"""A job type used by the tests: a full JobTemplate subclass with its own migration
(tests/support/migrations), registered through the ``job_type_modules`` setting."""

from __future__ import annotations

from datetime import datetime

from joblife.model import JobsToCreate, JobTemplate
from sqlalchemy import Integer, Text
from sqlalchemy.orm import Mapped, mapped_column


class ExampleJob(JobTemplate):
    """A band-by-band job on a tile, as a partner would write it."""

    __tablename__ = "example_jobs"
    JOB_NAME = "example"
    INPUT_PRODUCT_TYPE = "s2"
    NOMAD_JOB_NAME = "joblife-example"
    WORKER_FLAVOR_NAME = "small"
    OUTPUT_PRODUCTS_LIST = ["mask", "quicklook"]
    GET_JOBS_WITH_STATUS_PROCEDURE_NAME = "get_example_jobs_with_status"

    band: Mapped[str | None] = mapped_column(Text)
    resolution_m: Mapped[int | None] = mapped_column(Integer)

    @classmethod
    def get_jobs_to_create(cls, start: datetime, end: datetime) -> JobsToCreate:
        return JobsToCreate()
