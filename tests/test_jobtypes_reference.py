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

import contextlib
import functools
import http.server
import itertools
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from joblife.config import Settings, get_settings
from joblife.errors import ConfigurationError
from joblife.executors.local import LocalExecutor
from joblife.jobtypes import science_runner
from joblife.jobtypes.h5repack import H5RepackJob
from joblife.jobtypes.image_ingest import ImageIngestJob
from joblife.jobtypes.tile_series import TileSeriesJob, priority_for
from joblife.lifecycle.common import ServiceContext, utc_now
from joblife.lifecycle.orchestrator import Orchestrator
from joblife.model import Job, JobStatus, JobStatusChange, Priority, load_job_types
from joblife.runners import Runner, RunResult, RunSpec
from joblife.science import h5repack, pyramid, snow, synthetic
from joblife.storage import ObjectNotFound, StorageError, Transfer, open_storage
from joblife.storage.http import CHUNK_BYTES, HttpSource
from joblife.worker.context import WorkerContext
from joblife.worker.steps import MANIFEST
from PIL import Image
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
    # Created in publication order (the objects' modification times), not listing order.
    assert sorted(j.input_product_id for j in jobs) == ["exp-1/rec_0.h5", "exp-1/rec_1.h5"]
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
class _Handler(http.server.SimpleHTTPRequestHandler):
    """Files of the served directory, plus a few misbehaving URLs under ``/fault/``."""

    def log_message(self, format: str, *args: Any) -> None:  # quiet (and fork-safe)
        pass

    def do_HEAD(self) -> None:
        if self.path.startswith("/fault/no-head"):
            self.send_error(405)
            return
        super().do_HEAD()

    def do_GET(self) -> None:
        if self.path.startswith("/fault/500"):
            self.send_error(500, "Broken")
        elif self.path.startswith("/fault/slow"):
            time.sleep(1.0)
            self._send(b"late")
        elif self.path.startswith("/fault/truncated"):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"only ten b")
            self.close_connection = True
        elif self.path.startswith("/fault/no-head"):
            self._send(b"body", {"Last-Modified": "Tue, 03 Mar 2026 10:20:30 GMT"})
        else:
            super().do_GET()

    def _send(self, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(200)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client gave up
            self.wfile.write(body)


@pytest.fixture
def http_site(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 (a free port) serving a fresh directory: (base URL, dir)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", root
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_image_ingest_from_a_prefix_with_a_filter_and_from_one_http_url(
    pipeline: Pipeline, tmp_path: Path, http_site: tuple[str, Path]
):
    local = tmp_path / "inputs-img"
    synthetic.make_image_stack(local / "brain-a", frames=3, height=200, width=300, seed=1)
    synthetic.make_image_stack(local / "brain-a", frames=1, prefix="thumb", height=10, width=10)
    (local / "brain-a" / "README.txt").write_text("no image\n")
    # The seed's layout: frames named pm31NNo.png deep in the container, next to others.
    raw = local / "data" / "raw" / "original"
    raw.mkdir(parents=True)
    for name, shape in (("pm3100o", (40, 24)), ("pm3101o", (40, 24)), ("pm3100x", (5, 5))):
        Image.fromarray(np.full(shape, int(name[4:6]), dtype=np.uint8)).save(raw / f"{name}.png")
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(raw.parent / "pm3102o.png")
    base, www = http_site
    [tif] = synthetic.make_image_stack(www, frames=1, height=130, width=70, fmt="tif")
    pipeline.set(
        IMAGE_INGEST_INPUT_PREFIX="in/img",
        # Relative to the prefix, as the seed's --filter: brain-a's frames (not its thumbnail)
        # and the pm31NNo frames of data/raw/original (not pm3100x, not data/raw/pm3102o.png).
        IMAGE_INGEST_FILTER=r"brain-a/frame_\d{3}\.png|data/raw/original/pm31\d{2}o\.png",
        IMAGE_INGEST_SOURCE_URL=f"{base}/{tif.name}",
    )
    pipeline.upload(local, "in/img")

    jobs = pipeline.run_until_settled("image_ingest", 3)
    by_product = {j.input_product_id: j for j in jobs}
    assert set(by_product) == {"brain-a", "data/raw/original", "frame_000"}
    assert {j.status for j in jobs} == {S.DONE}, [pipeline.history(j.id)[-1] for j in jobs]

    stack = pipeline.output(by_product["brain-a"], "pyramid.h5")
    expected = pyramid.level_shapes(200, 300, min_size=64)
    assert expected == [(200, 300), (100, 150), (50, 75), (25, 38)]
    with h5py.File(stack) as out:
        assert out["levels"].attrs["num_levels"] == len(expected)
        for level, (h, w) in enumerate(expected):
            assert out["levels"][str(level)].shape == (3, h, w)  # 3 frames, not the thumb
    frames = synthetic.image_stack_array(3, 200, 300, seed=1)
    assert np.array_equal(pyramid.read_level(stack, 0), frames)

    seed_stack = pipeline.output(by_product["data/raw/original"], "pyramid.h5")
    level0 = pyramid.read_level(seed_stack, 0)
    assert level0.shape == (2, 40, 24)
    assert [int(frame[0, 0]) for frame in level0] == [0, 1]  # pm3100o, pm3101o in name order
    with h5py.File(seed_stack) as out:
        sources = [Path(p).name for p in out["levels"].attrs["source_files"]]
    assert sources == ["pm3100o.png", "pm3101o.png"]

    # Only the stack's matching files were downloaded: not the thumbnail, the README, the
    # other files of the directory or of the prefix.
    for product, count in (("brain-a", 3), ("data/raw/original", 2), ("frame_000", 1)):
        processed = pipeline.change(by_product[product].id, S.PROCESSED)
        assert processed.details["download"]["files"] == count, product

    single = by_product["frame_000"]
    assert single.input_path == f"{base}/{tif.name}"
    written = datetime.fromtimestamp(int(tif.stat().st_mtime), UTC)
    assert single.input_publication_date == written  # Last-Modified (whole seconds)
    url_output = pipeline.output(single, "pyramid.h5")
    assert [pyramid.read_level(url_output, i).shape for i in range(3)] == [
        (1, 130, 70),
        (1, 65, 35),
        (1, 33, 18),
    ]


def test_image_ingest_groups_the_files_matching_the_filter_by_directory(
    pipeline: Pipeline, tmp_path: Path
):
    local = tmp_path / "prefix"
    files = {
        "a0.PNG": 100,  # directly under the prefix: the stack named after the prefix
        "a1.png": 300,
        "notes.txt": 999,
        "s1/a0.png": 200,
        "s1/deeper/a0.png": 400,  # its own directory: its own stack
        "s2/b0.png": 500,  # does not match: no stack s2
    }
    for name in files:
        path = local / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    pipeline.set(IMAGE_INGEST_INPUT_PREFIX="in/imgs", IMAGE_INGEST_FILTER=r"(?i)(.*/)?a\d\.png")
    pipeline.upload(local, "in/imgs")
    root = pipeline.storage_root / "in" / "imgs"
    epoch = datetime(2026, 1, 1, tzinfo=UTC)
    for name, stamp in files.items():
        os.utime(root / name, (epoch.timestamp() + stamp,) * 2)

    found = ImageIngestJob.get_jobs_to_create(epoch, utc_now())
    jobs = {j.input_product_id: j for j in found.to_create}
    assert list(jobs) == ["imgs", "s1", "s1/deeper"]
    assert {j.input_path for j in jobs.values()} == {"in/imgs/"}
    published = {
        p: int((j.input_publication_date - epoch).total_seconds()) for p, j in jobs.items()
    }
    assert published == {"imgs": 300, "s1": 200, "s1/deeper": 400}  # the newest file's
    # Each job's filter selects exactly its stack's files, paths relative to the prefix.
    keys = sorted(files)
    selected = {p: [k for k in keys if re.fullmatch(j.input_filter, k)] for p, j in jobs.items()}
    assert selected == {"imgs": ["a0.PNG", "a1.png"], "s1": ["s1/a0.png"],
                        "s1/deeper": ["s1/deeper/a0.png"]}  # fmt: skip
    # Only the window's stacks.
    late = ImageIngestJob.get_jobs_to_create(epoch + timedelta(seconds=350), utc_now())
    assert [j.input_product_id for j in late.to_create] == ["s1/deeper"]


def test_image_ingest_refuses_a_filter_that_is_no_regular_expression(pipeline: Pipeline):
    pipeline.set(IMAGE_INGEST_INPUT_PREFIX="in/imgs", IMAGE_INGEST_FILTER="frame_(")
    # Refused with the settings, naming the setting (the type's own check is the backstop).
    with pytest.raises(ConfigurationError, match=r"image_ingest_filter.*regular expression"):
        ImageIngestJob.get_jobs_to_create(utc_now() - timedelta(days=1), utc_now())


def test_http_source_streams_one_object_and_reports_failures_without_credentials(
    http_site: tuple[str, Path], tmp_path: Path
):
    base, www = http_site
    payload = os.urandom(3 * CHUNK_BYTES + 123)  # several chunks
    (www / "big.bin").write_bytes(payload)
    os.utime(www / "big.bin", (1_700_000_000, 1_700_000_000))
    authority = base.replace("http://", "http://reader:s3cret@")

    source = open_storage(f"{authority}/big.bin?token=s3cret")
    assert isinstance(source, HttpSource)
    assert source.url() == f"{base}/big.bin?..."
    assert source.exists("")
    assert source.modified_at() == datetime.fromtimestamp(1_700_000_000, UTC)
    target = tmp_path / "got" / "big.bin"
    assert source.download("", target) == len(payload)
    assert target.read_bytes() == payload
    assert list(target.parent.iterdir()) == [target]  # no partial file left

    def failure(url: str, **timeouts: float) -> StorageError:
        with pytest.raises(StorageError) as raised:
            HttpSource(url, **timeouts).download("", tmp_path / "out" / "file")
        assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
        assert "s3cret" not in str(raised.value)
        return raised.value

    missing = failure(f"{authority}/missing.png?token=s3cret")
    assert isinstance(missing, ObjectNotFound)
    assert str(missing) == f"GET {base}/missing.png?... answered HTTP 404 File not found"
    assert not HttpSource(f"{base}/missing.png").exists("")
    broken = failure(f"{authority}/fault/500")
    assert not isinstance(broken, ObjectNotFound)
    assert str(broken) == f"GET {base}/fault/500 answered HTTP 500 Broken"
    slow = failure(f"{authority}/fault/slow?token=s3cret", read_timeout=0.2)
    assert str(slow) == f"GET {base}/fault/slow?... failed: timed out (connect 10 s, read 0.2 s)"
    assert "ended before its end" in str(failure(f"{base}/fault/truncated"))
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    refused = failure(f"http://reader:s3cret@127.0.0.1:{port}/x.png")
    assert str(refused) == f"GET http://127.0.0.1:{port}/x.png failed: Connection refused"

    # A server that refuses HEAD: the dates come from a GET whose body is not read.
    assert HttpSource(f"{base}/fault/no-head").modified_at() == datetime(
        2026, 3, 3, 10, 20, 30, tzinfo=UTC
    )
    with pytest.raises(StorageError, match="names one object"):
        source.find("", ".*")
    with pytest.raises(StorageError, match="read-only"):
        source.upload(target, "copy.bin")


# -- the runner choice of image ingest and tile series ------------------------------------------
class _RecordingRunner(Runner):
    """A runner that runs nothing: it records the spec and answers success."""

    def __init__(self, kind: str, calls: list[tuple[str, RunSpec]]) -> None:
        self.kind, self.calls = kind, calls

    def run(self, spec: RunSpec) -> RunResult:
        self.calls.append((self.kind, spec))
        return RunResult(0, 0.01, [], image=f"{spec.image}@sha256:1" if spec.image else None)


@pytest.mark.parametrize("job_type", ["image_ingest", "tile_series"])
def test_image_ingest_and_tile_series_run_as_a_process_or_in_their_image(
    job_type: str, pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    calls: list[tuple[str, RunSpec]] = []
    monkeypatch.setattr(WorkerContext, "runner", lambda self, kind: _RecordingRunner(kind, calls))
    cls = load_job_types()[job_type]
    own = {
        "image_ingest": {"input_filter": r"s/\d{2}\.png", "min_size": 64, "tile_size": 256},
        "tile_series": {"tile_id": "31TCH", "measurement_date": utc_now()},
    }[job_type]
    job = cls(id=7, unique_id=uuid.uuid4(), input_product_id="P1", **own)
    module, output = {
        "image_ingest": ("joblife.science.pyramid", "pyramid.h5"),
        "tile_series": ("joblife.science.snow", "P1_SNW.tif"),
    }[job_type]

    def run(runner: str) -> tuple[WorkerContext, str, RunSpec]:
        pipeline.set(**{f"{job_type.upper()}_RUNNER": runner,
                        f"{job_type.upper()}_IMAGE": "localhost/science:test"})  # fmt: skip
        context = WorkerContext(7, 1, get_settings(), tmp_path / "work" / runner, heartbeat=None)  # type: ignore[arg-type]
        assert job.job_processing(context) == 0
        kind, spec = calls.pop()
        return context, kind, spec

    context, kind, spec = run("process")  # the default
    assert Settings.model_fields[f"{job_type}_runner"].default == "process"
    assert (kind, context.figures["runner"], spec.image) == ("process", "process", None)
    assert spec.command[:3] == [sys.executable, "-m", module]
    assert f"{context.work_dir}/output/{output}" in spec.command
    assert spec.environment["JOBLIFE_INPUT_DIR"] == str(context.work_dir / "input")

    context, kind, spec = run("docker")
    assert (kind, context.figures["runner"], spec.image) == (
        "docker",
        "docker",
        "localhost/science:test",
    )
    assert spec.command[:3] == ["python", "-m", module]
    assert f"/work/output/{output}" in spec.command and "/work/input" in spec.command
    assert str(context.work_dir) not in " ".join(spec.command)
    assert spec.environment["JOBLIFE_INPUT_DIR"] == "/work/input"
    assert spec.environment["JOBLIFE_OUTPUT_DIR"] == "/work/output"
    assert spec.network_mode == "none" and spec.user == f"{os.getuid()}:{os.getgid()}"
    assert job.science_image == "localhost/science:test@sha256:1"
    if job_type == "image_ingest":
        assert spec.command[spec.command.index("--filter") + 1] == r"s/\d{2}\.png"


def test_auto_takes_the_container_only_when_the_engine_has_the_image(
    pipeline: Pipeline, container_engine: ContainerEngine
):
    settings = get_settings()
    assert science_runner.choose_runner("process", container_engine.image, settings) == "process"
    assert science_runner.choose_runner("docker", "localhost/nowhere:1", settings) == "docker"
    with pytest.raises(ValueError, match="unknown runner"):
        science_runner.choose_runner("podman", container_engine.image, settings)
    pipeline.set(CONTAINER_ENGINE_URL=container_engine.base_url)
    settings = get_settings()
    assert science_runner.choose_runner("auto", container_engine.image, settings) == "docker"
    missing = f"localhost/joblife-absent:{uuid.uuid4().hex[:8]}"
    assert science_runner.choose_runner("auto", missing, settings) == "process"
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    pipeline.set(CONTAINER_ENGINE_URL=f"tcp://127.0.0.1:{port}")  # no engine there
    assert science_runner.choose_runner("auto", container_engine.image, get_settings()) == (
        "process"
    )


# -- tile time series ---------------------------------------------------------------------------
def test_priority_from_the_publication_delay():
    settings = get_settings()
    measured = datetime(2026, 1, 10, 10, 30, tzinfo=UTC)
    assert priority_for(measured, measured + timedelta(hours=5), settings) is Priority.NRT
    assert priority_for(measured, measured + timedelta(days=6), settings) is Priority.DELAYED
    assert priority_for(measured, measured + timedelta(days=90), settings) is (
        Priority.REPROCESSING
    )


class TileSeries:
    """Products of one tile published into ``in/s2`` one at a time."""

    def __init__(self, pipeline: Pipeline, tmp: Path, tile: str = "31TCH") -> None:
        self.pipeline, self.tmp, self.tile = pipeline, tmp, tile
        self.now = utc_now().replace(microsecond=0)
        pipeline.set(TILE_SERIES_INPUT_PREFIX="in/s2")

    def publish(self, measured: timedelta, published: timedelta) -> synthetic.TileProduct:
        """A product measured and published this long before the series' ``now``."""
        local = self.tmp / f"tiles-{uuid.uuid4().hex[:6]}"
        product = synthetic.make_tile_product(
            local, self.tile, self.now - measured, self.now - published, size=48, seed=1
        )
        self.pipeline.upload(local, "in/s2")
        return product

    def jobs(self) -> dict[str, Any]:
        return {j.input_product_id: j for j in self.pipeline.jobs("tile_series")}

    def assert_processed_in_order(self, products: Sequence[synthetic.TileProduct]) -> None:
        """Each date was released (ready) only once the previous one had its output."""
        jobs = self.jobs()
        ordered = [jobs[p.product_id] for p in products]
        for before, after in itertools.pairwise(ordered):
            assert after.previous_job_id == before.id
            produced = self.pipeline.change(before.id, S.PROCESSED).time
            released = self.pipeline.change(after.id, S.READY).time
            assert released >= produced, (before.input_product_id, after.input_product_id)


def test_tile_series_waits_for_the_previous_date_even_when_discovered_out_of_order(
    pipeline: Pipeline, tmp_path: Path
):
    series = TileSeries(pipeline, tmp_path)
    days, seconds = timedelta(days=1), timedelta(seconds=1)
    # D1 and D3 are published first; D2 (between them) arrives later. All are published
    # more than tile_series_settle_hours (default 0.5) after their measurement.
    d1 = series.publish(10 * days + 1 * 3600 * seconds, 30 * seconds)
    d3 = series.publish(1 * 3600 * seconds, 20 * seconds)
    early = pipeline.orchestrator(["create", "configure"])
    early.run_once()
    job1, job3 = series.jobs()[d1.product_id], series.jobs()[d3.product_id]
    assert (job1.status, job3.status) == (S.READY, S.CONFIGURED)
    assert job3.previous_job_id == job1.id
    assert f"job {job1.id}" in job3.waiting_for

    d2 = series.publish(5 * days + 3600 * seconds, 10 * seconds)
    time.sleep(0.1)  # past the re-check interval
    early.run_once()
    early.run_once()
    jobs = series.jobs()
    job2, job3 = jobs[d2.product_id], jobs[d3.product_id]
    assert (job2.status, job2.previous_job_id) == (S.CONFIGURED, job1.id)
    assert (job3.status, job3.previous_job_id) == (S.CONFIGURED, job2.id), "D3 now waits for D2"
    assert [Priority(jobs[p.product_id].priority) for p in (d1, d2, d3)] == [
        Priority.DELAYED,
        Priority.DELAYED,
        Priority.NRT,
    ]

    done = pipeline.run_until_settled("tile_series", 3)
    assert {j.status for j in done} == {S.DONE}
    series.assert_processed_in_order([d1, d2, d3])

    # The snow mask follows the NDSI rule on the generator's known pixels.
    jobs = series.jobs()
    for product in (d1, d2, d3):
        job = jobs[product.product_id]
        mask, description = snow.read_mask(pipeline.output(job, f"{job.input_product_id}_SNW.tif"))
        assert np.array_equal(mask, product.expected_mask)
        assert description["tile_id"] == "31TCH"
        assert mask[0, 0] == snow.SNOW and mask[-1, 0] == snow.NODATA
    messages = {m["body"]["input_product_id"]: m["body"] for m in pipeline.spooled()}
    assert messages[d3.product_id]["measurement_date"] == d3.measurement_date.isoformat()


def test_a_later_date_is_held_until_an_earlier_date_discovered_after_it_has_its_output(
    pipeline: Pipeline, tmp_path: Path
):
    """The case of a done previous date: D1 is done when D3 is discovered, and D2, measured
    between them, is discovered after D3. D3 is not released on D1's output: an earlier
    date may still come until the discovery cursor passes D3's measurement + the settle
    delay; then it waits for D2's."""
    pipeline.set(TILE_SERIES_SETTLE_HOURS="1")
    series = TileSeries(pipeline, tmp_path)
    minutes = timedelta(minutes=1)
    d1 = series.publish(300 * minutes, 235 * minutes)  # 65 min after measurement: settled
    [job1] = pipeline.run_until_settled("tile_series", 1)
    assert job1.status is S.DONE

    d3 = series.publish(180 * minutes, 175 * minutes)  # 5 min after measurement
    create_configure = pipeline.orchestrator(["create", "configure"])
    create_configure.run_once()
    job3 = series.jobs()[d3.product_id]
    assert job3.status is S.CONFIGURED, "D1 is done, but an earlier date may still come"
    assert job3.previous_job_id == job1.id
    assert "discovery cursor to reach" in job3.waiting_for

    d2 = series.publish(210 * minutes, 165 * minutes)  # 45 min: within the settle delay
    time.sleep(0.1)
    create_configure.run_once()
    jobs = series.jobs()
    assert jobs[d2.product_id].status is S.CONFIGURED  # D2's measurement + 1 h is not passed
    assert (jobs[d3.product_id].status, jobs[d3.product_id].previous_job_id) == (
        S.CONFIGURED,
        jobs[d2.product_id].id,
    )

    # A recent product moves the cursor past both: D2 goes after D1, D3 after D2, D4 after D3.
    d4 = series.publish(120 * minutes, 1 * minutes)
    done = pipeline.run_until_settled("tile_series", 4)
    assert {j.status for j in done} == {S.DONE}
    series.assert_processed_in_order([d1, d2, d3, d4])


def test_a_late_earlier_date_waits_for_its_own_previous_date_but_does_not_undo_later_ones(
    pipeline: Pipeline, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """The limit of the guarantee: D2 is published long after the settle delay, once D3 was
    processed. D2 still goes after D1; D3 is not redone, and a warning says so."""
    pipeline.set(TILE_SERIES_SETTLE_HOURS="1")
    series = TileSeries(pipeline, tmp_path)
    minutes = timedelta(minutes=1)
    d1 = series.publish(300 * minutes, 235 * minutes)
    d3 = series.publish(180 * minutes, 110 * minutes)  # 70 min after measurement: settled
    assert {j.status for j in pipeline.run_until_settled("tile_series", 2)} == {S.DONE}

    caplog.set_level(logging.WARNING, logger="joblife.jobtypes.tile_series")
    d2 = series.publish(240 * minutes, 1 * minutes)  # a late product: 4 h after measurement
    done = pipeline.run_until_settled("tile_series", 3)
    assert {j.status for j in done} == {S.DONE}
    jobs = series.jobs()
    job1, job2, job3 = (jobs[p.product_id] for p in (d1, d2, d3))
    assert job2.previous_job_id == job1.id
    assert [c.status for c in pipeline.history(job3.id)].count(S.PROCESSED) == 1
    [warning] = [r for r in caplog.records if "later dates already released" in r.getMessage()]
    assert d2.product_id in warning.getMessage()
    assert f"{d3.product_id} (job {job3.id})" in warning.getMessage()


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
