"""The reference job types (issue 7) end to end: real discovery in file storage, the real
life-cycle services with the local executor (forked workers), the real science commands,
publication to the local spool; outputs checked for content.

- h5repack with the process runner (h5py) and with the HDF Group's tool in the local
  container image against podman; repacked files have the planned layout and the same
  data; a job whose outputs exist skips the science step.
- image ingest from a storage prefix + regex and from one URL: pyramid level shapes.
- tile time series: the snow mask on known pixels, priorities from publication delays,
  and the previous-date dependency under out-of-order discovery.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from joblife.config import get_settings
from joblife.executors.local import LocalExecutor
from joblife.jobtypes.h5repack import H5RepackJob
from joblife.jobtypes.image_ingest import ImageIngestJob
from joblife.jobtypes.tile_series import TileSeriesJob, priority_for
from joblife.lifecycle.common import ServiceContext, utc_now
from joblife.lifecycle.orchestrator import Orchestrator
from joblife.model import Job, JobStatus, JobStatusChange, Priority, load_job_types
from joblife.science import h5repack, pyramid, snow, synthetic
from joblife.storage import Transfer, open_storage
from joblife.worker.steps import MANIFEST
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from tests.support.containers import ContainerEngine
from tests.support.services import unavailable

S = JobStatus
REPO = Path(__file__).resolve().parents[1]
FINAL = {S.DONE, S.CANCELLED, S.INTERNAL_ERROR, S.EXTERNAL_ERROR}


class Pipeline:
    """One test's joblife: settings in the environment (the forked workers read them), a
    local executor, the orchestrator, file storage and a spool under ``tmp``."""

    def __init__(self, engine: Engine, db_url: str, tmp: Path, mp: pytest.MonkeyPatch) -> None:
        self.engine, self.tmp, self.mp = engine, tmp, mp
        self.storage_root = tmp / "storage"
        self.spool = tmp / "spool" / "publications.jsonl"
        self.set(
            DATABASE_URL=db_url,
            DATA_DIR=str(tmp / "data"),
            WORK_ROOT=str(tmp / "work"),
            STORAGE_URL=self.storage_root.as_uri(),
            PUBLICATION_SPOOL=str(self.spool),
            LOOP_INTERVAL="0.1",
            CONFIGURE_RECHECK_SECONDS="0.05",
            LOCAL_START_METHOD="fork",
            H5REPACK_RUNNER="process",
        )
        mp.delenv("JOBLIFE_AMQP_URL", raising=False)

    def set(self, **values: str) -> None:
        for name, value in values.items():
            self.mp.setenv(f"JOBLIFE_{name}", value)
        get_settings.cache_clear()

    def upload(self, local: Path, key_prefix: str) -> None:
        """Publish the files under ``local`` as ``<key_prefix>/<relative path>``."""
        storage = open_storage(settings=get_settings())
        files = sorted(p for p in local.rglob("*") if p.is_file())
        storage.upload_many([Transfer(f"{key_prefix}/{p.relative_to(local)}", p) for p in files])

    def orchestrator(self, services: Sequence[str] | None = None) -> Orchestrator:
        settings = get_settings()
        context = ServiceContext(self.engine, settings)
        executor = LocalExecutor.from_settings(settings)
        if services is None:
            return Orchestrator(context, executor)
        return Orchestrator(context, executor, services)

    def run_until_settled(self, job_type: str, count: int, timeout: float = 60.0) -> list[Job]:
        """Run the life cycle until ``count`` jobs of ``job_type`` are final."""
        orchestrator = self.orchestrator()
        deadline = time.monotonic() + timeout
        try:
            while True:
                report = orchestrator.run_once()
                assert not report.errors, report.errors
                jobs = self.jobs(job_type)
                if len(jobs) >= count and all(j.status in FINAL for j in jobs):
                    return jobs
                assert time.monotonic() < deadline, [(j.input_product_id, j.status) for j in jobs]
                if not report.busy:
                    time.sleep(0.1)
        finally:
            orchestrator.close()

    def jobs(self, job_type: str) -> list[Any]:
        cls = load_job_types()[job_type]  # every column of the type, loaded now
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.scalars(select(cls).order_by(cls.id)))

    def history(self, job_id: int) -> list[JobStatusChange]:
        with Session(self.engine) as session:
            return list(
                session.scalars(
                    select(JobStatusChange)
                    .where(JobStatusChange.job_id == job_id)
                    .order_by(JobStatusChange.id)
                )
            )

    def change(self, job_id: int, status: JobStatus) -> JobStatusChange:
        [change] = [c for c in self.history(job_id) if c.status == status]
        return change

    def output(self, job: Job, name: str) -> Path:
        return self.storage_root / job.output_path / name  # type: ignore[operator]

    def spooled(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.spool.read_text().splitlines()]


@pytest.fixture
def pipeline(
    engine: Engine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Pipeline]:
    made = Pipeline(engine, db_url, tmp_path, monkeypatch)
    yield made
    get_settings.cache_clear()
    leftovers = list((tmp_path / "work").iterdir()) if (tmp_path / "work").exists() else []
    assert leftovers == [], f"work dirs left behind: {leftovers}"


def _assert_same_content(source: Path, output: Path) -> None:
    """Every dataset, group and attribute of ``source`` is in ``output`` unchanged."""
    with h5py.File(source) as src, h5py.File(output) as out:
        names: list[str] = []
        src.visit(names.append)
        assert names
        for name in names:
            assert type(out[name]) is type(src[name]), name
            if isinstance(src[name], h5py.Dataset):
                assert np.array_equal(src[name][()], out[name][()]), name
            assert dict(src[name].attrs) == dict(out[name].attrs) or all(
                np.array_equal(src[name].attrs[k], out[name].attrs[k]) for k in src[name].attrs
            ), name
        assert dict(src.attrs) == dict(out.attrs)


def _recordings(tmp: Path, count: int) -> Path:
    local = tmp / "inputs-h5"
    for i in range(count):
        synthetic.make_recording(local / "exp-1" / f"rec_{i}.h5", channels=6, samples=5000, seed=i)
    (local / "exp-1" / "notes.txt").write_text("not a recording\n")
    return local


# -- h5repack ---------------------------------------------------------------------------------
def test_h5repack_with_h5py_rechunks_each_recording_and_skips_existing_outputs(
    pipeline: Pipeline, tmp_path: Path
):
    pipeline.set(H5REPACK_INPUT_PREFIX="in/h5", H5REPACK_CHUNK_BYTES="4000")
    local = _recordings(tmp_path, 2)
    pipeline.upload(local, "in/h5")

    jobs = pipeline.run_until_settled("h5repack", 2)
    assert [j.input_product_id for j in jobs] == ["exp-1/rec_0.h5", "exp-1/rec_1.h5"]
    assert {j.status for j in jobs} == {S.DONE}
    for job in jobs:
        source = local / job.input_product_id
        output = pipeline.output(job, job.file_name)
        plan = h5repack.plan_repack(source, chunk_bytes=4000)
        h5repack.check_layout(output, plan)  # the planned chunks, no compression
        with h5py.File(output) as out:
            assert out["sig"].chunks == (1, 2000)  # one channel, 4000 bytes of int16
        _assert_same_content(source, output)
        assert job.output_publication_date is not None
        processed = pipeline.change(job.id, S.PROCESSED)
        assert processed.details["runner"] == "process"
        assert processed.details["processing"]["return_code"] == 0
    spooled = pipeline.spooled()
    assert sorted(m["body"]["input_product_id"] for m in spooled) == [
        "exp-1/rec_0.h5",
        "exp-1/rec_1.h5",
    ]
    assert {m["routing_key"] for m in spooled} == {"h5repack.repacked"}

    # The same product discovered again (its job was removed): the output exists, the
    # science step is skipped and the job still ends done.
    first = jobs[0]
    with Session(pipeline.engine) as session:
        session.execute(delete(Job).where(Job.id.in_([j.id for j in jobs])))
        session.commit()
    again = pipeline.run_until_settled("h5repack", 2)
    assert {j.status for j in again} == {S.DONE}
    processed = pipeline.change(again[0].id, S.PROCESSED)
    assert processed.details["processing"] == {"skipped": True, "seconds": 0.0}
    assert "every output already exists" in processed.details["skipped"]
    assert pipeline.output(first, MANIFEST).exists()


def test_h5repack_discovers_nothing_when_unconfigured(pipeline: Pipeline):
    found = H5RepackJob.get_jobs_to_create(utc_now() - timedelta(days=1), utc_now())
    assert found.to_create == [] and found.to_cancel == []
    assert (
        ImageIngestJob.get_jobs_to_create(utc_now() - timedelta(days=1), utc_now()).to_create == []
    )
    assert (
        TileSeriesJob.get_jobs_to_create(utc_now() - timedelta(days=1), utc_now()).to_create == []
    )


IMAGE = f"localhost/joblife-h5repack:test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def h5repack_image() -> Iterator[str]:
    """The h5repack image built from host binaries by workers/build-local-image.sh."""
    if shutil.which("podman") is None:
        unavailable("podman not installed (scripts/container-engine.sh)")
    if shutil.which("h5repack") is None:
        unavailable("h5repack not on the PATH (Debian package hdf5-tools)")
    built = subprocess.run(
        ["bash", str(REPO / "workers" / "build-local-image.sh"), IMAGE],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    yield IMAGE
    subprocess.run(["podman", "rmi", "-f", IMAGE], capture_output=True, timeout=60, check=False)


def test_h5repack_in_the_container_image_against_podman(
    pipeline: Pipeline, tmp_path: Path, container_engine: ContainerEngine, h5repack_image: str
):
    pipeline.set(
        H5REPACK_INPUT_PREFIX="in/h5",
        H5REPACK_RUNNER="auto",  # the engine answers and has the image: the container
        H5REPACK_IMAGE=h5repack_image,
        H5REPACK_GZIP_LEVEL="1",
        H5REPACK_CHUNK_BYTES="2000",
        CONTAINER_ENGINE_URL=container_engine.base_url,
    )
    local = _recordings(tmp_path, 1)
    pipeline.upload(local, "in/h5")

    [job] = pipeline.run_until_settled("h5repack", 1)
    assert job.status is S.DONE, pipeline.history(job.id)[-1].message
    processed = pipeline.change(job.id, S.PROCESSED)
    assert processed.details["runner"] == "docker"
    assert job.science_image and job.science_image.startswith(h5repack_image)
    output = pipeline.output(job, job.file_name)
    with h5py.File(output) as out:
        assert out["sig"].chunks == (1, 1000)
        assert out["sig"].compression == "gzip" and out["sig"].shuffle
    _assert_same_content(local / job.input_product_id, output)
    containers = container_engine.client.containers.list(  # type: ignore[attr-defined]
        all=True, filters={"ancestor": h5repack_image}
    )
    assert containers == []


# -- image ingest -----------------------------------------------------------------------------
def test_image_ingest_from_a_prefix_with_a_filter_and_from_one_url(
    pipeline: Pipeline, tmp_path: Path
):
    local = tmp_path / "inputs-img"
    synthetic.make_image_stack(local / "brain-a", frames=3, height=200, width=300, seed=1)
    synthetic.make_image_stack(local / "brain-a", frames=1, prefix="thumb", height=10, width=10)
    (local / "brain-a" / "README.txt").write_text("no image\n")
    (local / "empty" / "notes.txt").parent.mkdir(parents=True)
    (local / "empty" / "notes.txt").write_text("no image at all\n")
    single = tmp_path / "single"
    [tif] = synthetic.make_image_stack(single, frames=1, height=130, width=70, fmt="tif")
    pipeline.set(
        IMAGE_INGEST_INPUT_PREFIX="in/img",
        IMAGE_INGEST_FILTER=r"frame_\d{3}\.png",
        IMAGE_INGEST_SOURCE_URL=tif.as_uri(),
    )
    pipeline.upload(local, "in/img")

    jobs = pipeline.run_until_settled("image_ingest", 2)
    by_product = {j.input_product_id: j for j in jobs}
    assert set(by_product) == {"brain-a", "frame_000"}, "a stack per matching directory"
    assert {j.status for j in jobs} == {S.DONE}

    stack = pipeline.output(by_product["brain-a"], "pyramid.h5")
    expected = pyramid.level_shapes(200, 300, min_size=64)
    assert expected == [(200, 300), (100, 150), (50, 75), (25, 38)]
    with h5py.File(stack) as out:
        assert out["levels"].attrs["num_levels"] == len(expected)
        for level, (h, w) in enumerate(expected):
            assert out["levels"][str(level)].shape == (3, h, w)  # 3 frames, not the thumb
    frames = synthetic.image_stack_array(3, 200, 300, seed=1)
    assert np.array_equal(pyramid.read_level(stack, 0), frames)

    url_output = pipeline.output(by_product["frame_000"], "pyramid.h5")
    assert [pyramid.read_level(url_output, i).shape for i in range(3)] == [
        (1, 130, 70),
        (1, 65, 35),
        (1, 33, 18),
    ]
    assert by_product["frame_000"].input_path == tif.as_uri()


# -- tile time series ---------------------------------------------------------------------------
def test_priority_from_the_publication_delay():
    settings = get_settings()
    measured = datetime(2026, 1, 10, 10, 30, tzinfo=UTC)
    assert priority_for(measured, measured + timedelta(hours=5), settings) is Priority.NRT
    assert priority_for(measured, measured + timedelta(days=6), settings) is Priority.DELAYED
    assert priority_for(measured, measured + timedelta(days=90), settings) is (
        Priority.REPROCESSING
    )


def test_tile_series_waits_for_the_previous_date_even_when_discovered_out_of_order(
    pipeline: Pipeline, tmp_path: Path
):
    pipeline.set(TILE_SERIES_INPUT_PREFIX="in/s2")
    now = utc_now().replace(microsecond=0)
    dates = [now - timedelta(days=d, hours=1) for d in (10, 5, 0)]  # D1 < D2 < D3

    def publish(index: int, published: datetime) -> synthetic.TileProduct:
        local = tmp_path / f"tiles-{index}"
        product = synthetic.make_tile_product(local, "31TCH", dates[index], published, seed=index)
        pipeline.upload(local, "in/s2")
        return product

    # D1 and D3 are published first; D2 (between them) arrives later.
    d1 = publish(0, now - timedelta(seconds=30))
    d3 = publish(2, now - timedelta(seconds=20))
    early = pipeline.orchestrator(["create", "configure"])
    early.run_once()
    [job1, job3] = pipeline.jobs("tile_series")
    assert (job1.status, job3.status) == (S.READY, S.CONFIGURED)
    assert job3.previous_job_id == job1.id
    assert f"job {job1.id}" in job3.waiting_for

    d2 = publish(1, now - timedelta(seconds=10))
    time.sleep(0.1)  # past the re-check interval
    early.run_once()
    early.run_once()
    job1, job3, job2 = pipeline.jobs("tile_series")
    assert job2.input_product_id == d2.product_id
    assert (job2.status, job2.previous_job_id) == (S.CONFIGURED, job1.id)
    assert (job3.status, job3.previous_job_id) == (S.CONFIGURED, job2.id), "D3 now waits for D2"
    assert [Priority(j.priority) for j in (job1, job2, job3)] == [
        Priority.DELAYED,
        Priority.DELAYED,
        Priority.NRT,
    ]

    jobs = pipeline.run_until_settled("tile_series", 3)
    assert {j.status for j in jobs} == {S.DONE}
    by_product = {j.input_product_id: j for j in jobs}
    ordered = [by_product[p.product_id] for p in (d1, d2, d3)]
    for before, after in itertools.pairwise(ordered):
        produced = pipeline.change(before.id, S.PROCESSED).time
        released = pipeline.change(after.id, S.READY).time
        assert released >= produced, (before.input_product_id, after.input_product_id)

    # The snow mask follows the NDSI rule on the generator's known pixels.
    for product in (d1, d2, d3):
        job = by_product[product.product_id]
        mask, description = snow.read_mask(pipeline.output(job, f"{job.input_product_id}_SNW.tif"))
        assert np.array_equal(mask, product.expected_mask)
        assert description["tile_id"] == "31TCH"
        assert mask[0, 0] == snow.SNOW and mask[-1, 0] == snow.NODATA
    messages = {m["body"]["input_product_id"]: m["body"] for m in pipeline.spooled()}
    assert messages[d3.product_id]["measurement_date"] == dates[2].isoformat()


def test_a_bad_tile_product_is_skipped_and_the_others_are_discovered(
    pipeline: Pipeline, tmp_path: Path
):
    pipeline.set(TILE_SERIES_INPUT_PREFIX="in/s2")
    local = tmp_path / "tiles"
    good = synthetic.make_tile_product(
        local, "31TCH", utc_now() - timedelta(days=1), utc_now() - timedelta(seconds=5)
    )
    (local / "BROKEN").mkdir()
    (local / "BROKEN" / "metadata.json").write_text('{"tile_id": "31TCH"}')
    pipeline.upload(local, "in/s2")
    found = TileSeriesJob.get_jobs_to_create(utc_now() - timedelta(hours=1), utc_now())
    assert [j.input_product_id for j in found.to_create] == [good.product_id]
    assert os.environ["JOBLIFE_TILE_SERIES_INPUT_PREFIX"] == "in/s2"
