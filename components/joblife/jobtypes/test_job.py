"""The ``test`` job type: a job whose behaviour is chosen per job, to exercise the life
cycle end to end (like the seed system's TestJob) without any science code.

Its products are JSON files in the ``test_products_dir`` setting (default
``<data_dir>/test-products``), one per product, written by :func:`write_test_product`::

    {"product_id": "T0001", "published_at": "2026-11-22T10:00:00+00:00",
     "behaviour": "succeed", "behaviour_attempts": null, "sleep_seconds": 0,
     "depends_on_product": null, "tile_id": null, "cancel": false, "publish": false}

Behaviours: ``succeed``, ``no_product``, ``fail_external``, ``fail_internal``, ``sleep``
(then succeed), ``crash`` (SIGKILL itself), ``hang`` (stop heartbeating and block). They
apply while ``attempt <= behaviour_attempts`` (always when null); later attempts succeed.
``sleep_seconds`` is spent in processing before the behaviour, whatever it is.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Boolean, Float, Integer, Text, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from joblife.config import get_settings
from joblife.errors import ExternalJobError, InternalJobError
from joblife.model.status import JobStatus
from joblife.model.template import JobsToCreate, JobTemplate

BEHAVIOURS = (
    "succeed",
    "no_product",
    "fail_external",
    "fail_internal",
    "sleep",
    "crash",
    "hang",
)


class TestJob(JobTemplate):
    """A job that does what its row says; see the module docstring."""

    __test__ = False  # not a pytest test class
    __tablename__ = "test_jobs"
    JOB_NAME = "test"
    INPUT_PRODUCT_TYPE = "test"
    NOMAD_JOB_NAME = "joblife-test"
    WORKER_FLAVOR_NAME = "extra_small"
    OUTPUT_PRODUCTS_LIST = ["result"]
    GET_JOBS_WITH_STATUS_PROCEDURE_NAME = "get_test_jobs_with_status"

    behaviour: Mapped[str] = mapped_column(
        Text, server_default=text("'succeed'"), default="succeed"
    )
    behaviour_attempts: Mapped[int | None] = mapped_column(Integer)
    sleep_seconds: Mapped[float] = mapped_column(Float, server_default=text("0"), default=0.0)
    depends_on_product: Mapped[str | None] = mapped_column(Text)
    publish: Mapped[bool] = mapped_column(Boolean, server_default=text("false"), default=False)

    # -- creation ------------------------------------------------------------------------
    @classmethod
    def get_jobs_to_create(cls, start: datetime, end: datetime) -> JobsToCreate:
        found = JobsToCreate()
        for product in read_test_products(get_settings().test_products_path):
            published = product["published_at"]
            if not start <= published < end:
                continue
            behaviour = product.get("behaviour", "succeed")
            if behaviour not in BEHAVIOURS:
                raise ValueError(
                    f"test product {product['product_id']}: unknown behaviour {behaviour!r} "
                    f"(known: {', '.join(BEHAVIOURS)})"
                )
            job = cls(
                input_product_id=product["product_id"],
                name=f"test {product['product_id']}",
                tile_id=product.get("tile_id"),
                input_publication_date=published,
                behaviour=behaviour,
                behaviour_attempts=product.get("behaviour_attempts"),
                sleep_seconds=float(product.get("sleep_seconds") or 0),
                depends_on_product=product.get("depends_on_product"),
                publish=bool(product.get("publish")),
            )
            (found.to_cancel if product.get("cancel") else found.to_create).append(job)
        return found

    # -- configuration -------------------------------------------------------------------
    def configure_single_job(self, session: Session) -> JobStatus:
        if not self.depends_on_product:
            return JobStatus.READY
        dependency = session.scalar(
            select(TestJob.status_id).where(TestJob.input_product_id == self.depends_on_product)
        )
        if dependency == JobStatus.DONE:
            return JobStatus.READY
        self.waiting_for = f"test product {self.depends_on_product} to be done"
        return JobStatus.CONFIGURED

    # -- the worker's steps ----------------------------------------------------------------
    def _acting(self) -> bool:
        return self.behaviour_attempts is None or self.attempt <= self.behaviour_attempts

    def job_pre_processing(self, context: Any) -> None:
        """Nothing to fetch."""

    def job_processing(self, context: Any) -> int:
        if self.sleep_seconds:
            time.sleep(self.sleep_seconds)
        if not self._acting():
            return 0
        if self.behaviour == "fail_external":
            raise ExternalJobError("test: simulated failure of a dependency")
        if self.behaviour == "fail_internal":
            raise InternalJobError("test: simulated bug")
        if self.behaviour == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.behaviour == "hang":
            context.heartbeat.stop()
            while True:
                time.sleep(3600)
        return 0

    def job_post_processing(self, context: Any, return_code: int) -> None:
        if self.generated_a_product():
            self.output_path = f"test://products/{self.input_product_id}"

    def get_products_publication_jsons(self) -> list[dict[str, Any]]:
        """Test products are announced only when ``publish`` is set on the job."""
        return super().get_products_publication_jsons() if self.publish else []

    def generated_a_product(self) -> bool:
        return self.exit_code == 0 and not (self.behaviour == "no_product" and self._acting())


def write_test_product(
    directory: Path, product_id: str, published_at: datetime, **fields: Any
) -> Path:
    """Write one test product file (what the ``test`` type discovers)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{product_id}.json"
    record = {"product_id": product_id, "published_at": published_at.isoformat(), **fields}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)
    return path


#: Parsed product files by path, with the modification time they were parsed at: a
#: discovery cycle re-reads only the files that changed.
_parsed: dict[Path, tuple[int, dict[str, Any]]] = {}
#: The products of a directory, with the directory's modification time when it was listed.
_listed: dict[Path, tuple[int, list[dict[str, Any]]]] = {}
#: A directory changed less than this long ago is listed again at every call: file-system
#: timestamps are coarse, so two changes in one tick would otherwise look like one.
_SETTLED_NS = 2_000_000_000


def read_test_products(directory: Path) -> list[dict[str, Any]]:
    """Every test product in ``directory`` (none if it does not exist).

    Products are added or replaced by renaming a file into the directory (as
    :func:`write_test_product` does), which changes the directory's modification time: an
    unchanged, settled directory is not listed again."""
    try:
        modified = directory.stat().st_mtime_ns
    except FileNotFoundError:
        return []
    listed = _listed.get(directory)
    if listed is not None and listed[0] == modified:
        return listed[1]
    products = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        path, mtime = Path(entry.path), entry.stat().st_mtime_ns
        cached = _parsed.get(path)
        if cached is None or cached[0] != mtime:
            record = json.loads(path.read_text())
            record["published_at"] = datetime.fromisoformat(record["published_at"])
            cached = (mtime, record)
            _parsed[path] = cached
        products.append(cached[1])
    if time.time_ns() - modified > _SETTLED_NS:
        _listed[directory] = (modified, products)
    return products
