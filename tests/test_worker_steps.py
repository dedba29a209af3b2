"""The worker's default steps end to end: a real job row, ``run_worker`` in this process,
the science step in a real container (podman) or process, inputs and outputs on S3 (moto's
server) or local files. Each failure ends in its status, message and exit code, with the
work dir removed and no container left."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from joblife.config import Settings
from joblife.db.status import set_job_status
from joblife.db.worker_doors import issue_attempt_secret
from joblife.model import Job, JobStatus, JobStatusChange
from joblife.worker.runner import EXIT_DO_NOT_RELAUNCH, EXIT_RELAUNCH, run_worker
from joblife.worker.steps import MANIFEST
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from tests.support.containers import ContainerEngine
from tests.support.example_type import ExampleJob
from tests.support.s3 import S3Bucket
from tests.support.services import unavailable

S = JobStatus
MB = 1_000_000


class WorkerJob(ExampleJob):
    """The example type with a science step (its rows live in example_jobs); each test sets
    the science attributes it needs with monkeypatch."""

    __mapper_args__ = {"polymorphic_identity": "worker_test"}
    JOB_NAME = "worker_test"
    OUTPUT_PRODUCTS_LIST = []  # nothing to publish: a product job ends done
    SCIENCE_RUNNER = "docker"
    SCIENCE_COMMAND = ["sh", "-c", "cat {input_dir}/* {aux_dir}/dem/* > {output_dir}/result.txt"]
    EXTERNAL_DEPENDENCIES = {"dem": "aux/dem-{tile_id}.txt"}


@pytest.fixture
def world(engine: Engine, db_url: str, tmp_path: Path) -> Iterator[World]:
    yield World(engine, db_url, tmp_path)


class World:
    """One test's database, settings and storage location."""

    def __init__(self, engine: Engine, db_url: str, tmp_path: Path) -> None:
        self.engine = engine
        self.tmp = tmp_path
        self.work_root = tmp_path / "work"
        self.settings = Settings(
            database_url=db_url,
            data_dir=tmp_path / "data",
            work_root=self.work_root,
            storage_url=(tmp_path / "storage").as_uri(),
            heartbeat_interval_seconds=1,
        )

    def configure(self, **changes: Any) -> None:
        self.settings = self.settings.model_copy(update=changes)

    def job(self, product: str = "P1", **fields: Any) -> int:
        """A worker_test job queued for attempt 1."""
        with Session(self.engine) as session:
            job = WorkerJob(input_product_id=product, tile_id="T31", **fields)
            session.add(job)
            session.commit()
            for status in (S.READY, S.QUEUED):
                set_job_status(session, job.id, status)
            session.execute(update(Job).where(Job.id == job.id).values(attempt=1))
            issue_attempt_secret(session, self.settings, job.id)  # as dispatch does
            session.commit()
            return job.id

    def run(self, job_id: int) -> int:
        return run_worker(job_id, 1, self.settings)

    def load(self, job_id: int) -> WorkerJob:
        with Session(self.engine, expire_on_commit=False) as session:
            job = session.get(Job, job_id)
            session.refresh(job)
            return job  # type: ignore[return-value]

    def last(self, job_id: int) -> JobStatusChange:
        with Session(self.engine) as session:
            return session.scalars(
                select(JobStatusChange)
                .where(JobStatusChange.job_id == job_id)
                .order_by(JobStatusChange.id.desc())
                .limit(1)
            ).one()

    def change(self, job_id: int, status: JobStatus) -> JobStatusChange:
        with Session(self.engine) as session:
            return session.scalars(
                select(JobStatusChange).where(
                    JobStatusChange.job_id == job_id, JobStatusChange.status == int(status)
                )
            ).one()

    def assert_clean(self) -> None:
        leftovers = list(self.work_root.iterdir()) if self.work_root.exists() else []
        assert leftovers == [], f"work dirs left behind: {leftovers}"


def _s3_world(world: World, bucket: S3Bucket, multi: int = 3) -> None:
    world.configure(storage_url=bucket.url("data"), s3_endpoint_url=bucket.endpoint)
    for i in range(multi):
        bucket.put(f"data/inputs/P1/band{i}.txt", f"band {i}\n".encode())
    bucket.put("data/inputs/P1/meta.json", b'{"ok": true}\n')
    bucket.put("data/aux/dem-T31.txt", b"dem\n")


@pytest.fixture
def docker_job(
    world: World, container_engine: ContainerEngine, monkeypatch: pytest.MonkeyPatch
) -> World:
    monkeypatch.setattr(WorkerJob, "SCIENCE_IMAGE", container_engine.image)
    world.configure(container_engine_url=container_engine.base_url)
    return world


# -- the two happy paths ---------------------------------------------------------------------------
def test_container_job_with_s3_inputs_and_outputs_ends_done(
    docker_job: World, s3_bucket: S3Bucket, container_engine: ContainerEngine
):
    world = docker_job
    _s3_world(world, s3_bucket)
    job_id = world.job(input_path="inputs/P1/")
    assert world.run(job_id) == EXIT_DO_NOT_RELAUNCH
    job = world.load(job_id)
    assert job.status is S.DONE, world.last(job_id).message
    assert job.output_path == "worker_test/P1"
    assert job.exit_code == 0
    assert job.science_image.startswith(f"{container_engine.image}@sha256:")
    assert s3_bucket.get("data/worker_test/P1/result.txt") == b"band 0\nband 1\nband 2\n" + (
        b'{"ok": true}\ndem\n'
    )
    manifest = json.loads(s3_bucket.get(f"data/worker_test/P1/{MANIFEST}"))
    assert manifest["files"] == {"result.txt": 38}
    assert manifest["science_image"] == job.science_image
    # where the time went: in the processed status details
    details = world.change(job_id, S.PROCESSED).details
    assert details["download"]["files"] == 5
    assert details["download"]["bytes"] == 3 * 7 + 13 + 4
    assert details["upload"] == {"files": 1, "bytes": 38, "seconds": details["upload"]["seconds"]}
    assert details["download"]["seconds"] > 0 and details["upload"]["seconds"] > 0
    assert details["processing"]["return_code"] == 0 and details["processing"]["seconds"] > 0
    assert details["outputs"] == f"s3://{s3_bucket.name}/data/worker_test/P1"
    logs = f"data/joblife-logs/worker_test/{job.unique_id}/attempt-1/"
    assert details["logs"] == f"s3://{s3_bucket.name}/{logs.rstrip('/')}"
    assert s3_bucket.list_keys(logs) == [f"{logs}{MANIFEST}", f"{logs}science.log"]
    world.assert_clean()
    assert container_engine.leftovers() == []


def test_process_job_with_file_storage_ends_done(world: World, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(WorkerJob, "SCIENCE_RUNNER", "process")
    store = world.tmp / "storage"
    (store / "in").mkdir(parents=True)
    (store / "in" / "P1.dat").write_bytes(b"x" * 1000)
    (store / "aux").mkdir()
    (store / "aux" / "dem-T31.txt").write_text("dem\n")
    job_id = world.job(input_path="in/P1.dat")
    assert world.run(job_id) == EXIT_DO_NOT_RELAUNCH
    job = world.load(job_id)
    assert job.status is S.DONE, world.last(job_id).message
    assert (store / "worker_test" / "P1" / "result.txt").stat().st_size == 1004
    assert (store / "worker_test" / "P1" / MANIFEST).exists()
    assert job.science_image is None
    details = world.change(job_id, S.PROCESSED).details
    assert details["download"]["bytes"] == 1004 and details["upload"]["bytes"] == 1004
    world.assert_clean()


# -- skip if the outputs exist ---------------------------------------------------------------------
def test_a_rerun_whose_outputs_exist_skips_the_science_step(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    runs = world.tmp / "science-runs"
    monkeypatch.setattr(WorkerJob, "SCIENCE_RUNNER", "process")
    monkeypatch.setattr(WorkerJob, "EXTERNAL_DEPENDENCIES", {})
    monkeypatch.setattr(
        WorkerJob,
        "SCIENCE_COMMAND",
        ["sh", "-c", f"echo run >> {runs}; cp {{input_dir}}/* {{output_dir}}/"],
    )
    (world.tmp / "storage" / "in").mkdir(parents=True)
    (world.tmp / "storage" / "in" / "P1.dat").write_bytes(b"data")
    first = world.job("P1", input_path="in/P1.dat", output_path="out/P1")
    assert world.run(first) == EXIT_DO_NOT_RELAUNCH
    again = world.job("P1-again", input_path="in/P1.dat", output_path="out/P1")
    assert world.run(again) == EXIT_DO_NOT_RELAUNCH
    assert runs.read_text() == "run\n"  # the science step ran once
    assert world.load(again).status is S.DONE
    details = world.change(again, S.PROCESSED).details
    assert details["processing"] == {"skipped": True, "seconds": 0.0}
    assert "every output already exists" in details["skipped"]
    assert "download" not in details  # nothing fetched either
    # an output missing: the next run processes again
    (world.tmp / "storage" / "out" / "P1" / "P1.dat").unlink()
    third = world.job("P1-third", input_path="in/P1.dat", output_path="out/P1")
    assert world.run(third) == EXIT_DO_NOT_RELAUNCH
    assert runs.read_text() == "run\nrun\n"
    world.assert_clean()


def test_skip_can_be_turned_off_per_type(world: World, monkeypatch: pytest.MonkeyPatch):
    runs = world.tmp / "science-runs"
    monkeypatch.setattr(WorkerJob, "SCIENCE_RUNNER", "process")
    monkeypatch.setattr(WorkerJob, "SKIP_IF_OUTPUT_EXISTS", False)
    monkeypatch.setattr(WorkerJob, "EXTERNAL_DEPENDENCIES", {})
    monkeypatch.setattr(
        WorkerJob, "SCIENCE_COMMAND", ["sh", "-c", f"echo run >> {runs}; echo x > {{output_dir}}/o"]
    )
    (world.tmp / "storage" / "in").mkdir(parents=True)
    (world.tmp / "storage" / "in" / "P1.dat").write_bytes(b"data")
    for product in ("A", "B"):
        assert world.run(world.job(product, input_path="in/P1.dat", output_path="o")) == 0
    assert runs.read_text() == "run\nrun\n"


# -- failures ----------------------------------------------------------------------------------
def _fails(world: World, job_id: int, status: JobStatus, code: int, message: str) -> dict:
    assert world.run(job_id) == code
    job = world.load(job_id)
    change = world.last(job_id)
    assert job.status is status, change.message
    assert message in (change.message or ""), change.message
    world.assert_clean()
    return change.details


def test_missing_input_is_an_external_error(docker_job: World, s3_bucket: S3Bucket):
    _s3_world(docker_job, s3_bucket)
    job_id = docker_job.job(input_path="inputs/NOPE.dat")
    _fails(docker_job, job_id, S.EXTERNAL_ERROR, EXIT_RELAUNCH, "inputs/NOPE.dat does not exist")
    prefix = docker_job.job("P2", input_path="inputs/NOPE/")
    _fails(docker_job, prefix, S.EXTERNAL_ERROR, EXIT_RELAUNCH, "input: nothing under s3://")


def test_corrupt_input_is_an_internal_error(docker_job: World, s3_bucket: S3Bucket):
    _s3_world(docker_job, s3_bucket)
    s3_bucket.put("data/inputs/P1/meta.json", b'{"truncated": ')
    job_id = docker_job.job(input_path="inputs/P1/")
    details = _fails(
        docker_job,
        job_id,
        S.INTERNAL_ERROR,
        EXIT_DO_NOT_RELAUNCH,
        "input meta.json is not a valid JSON file",
    )
    assert details["download"]["files"] == 5  # fetched, then checked


def test_science_crash_is_an_internal_error_with_the_log_tail(
    docker_job: World, s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
):
    _s3_world(docker_job, s3_bucket)
    monkeypatch.setattr(
        WorkerJob, "SCIENCE_COMMAND", ["sh", "-c", "echo reading; echo segfault >&2; exit 139"]
    )
    job_id = docker_job.job(input_path="inputs/P1/")
    details = _fails(docker_job, job_id, S.INTERNAL_ERROR, EXIT_DO_NOT_RELAUNCH, "return code 139")
    assert details["log_tail"] == ["reading", "segfault"]
    assert details["processing"]["return_code"] == 139
    assert docker_job.load(job_id).exit_code == 139
    assert "upload" not in details
    assert s3_bucket.list_keys("data/worker_test/") == []  # nothing published as output
    logs = s3_bucket.list_keys("data/joblife-logs/")
    assert len(logs) == 1 and logs[0].endswith("science.log")  # kept for post-mortem


def test_return_code_classes(world: World, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(WorkerJob, "SCIENCE_RUNNER", "process")
    monkeypatch.setattr(WorkerJob, "EXTERNAL_DEPENDENCIES", {})
    monkeypatch.setattr(WorkerJob, "NO_PRODUCT_RETURN_CODES", frozenset({10}))
    monkeypatch.setattr(WorkerJob, "RETRYABLE_RETURN_CODES", frozenset({75}))
    (world.tmp / "storage" / "in").mkdir(parents=True)
    (world.tmp / "storage" / "in" / "x").write_bytes(b"x")
    monkeypatch.setattr(WorkerJob, "SCIENCE_COMMAND", ["sh", "-c", "exit 10"])
    no_product = world.job("N", input_path="in/x")
    assert world.run(no_product) == EXIT_DO_NOT_RELAUNCH
    assert world.load(no_product).status is S.DONE
    assert world.last(no_product).message == "no product"
    monkeypatch.setattr(WorkerJob, "SCIENCE_COMMAND", ["sh", "-c", "exit 75"])
    retry = world.job("R", input_path="in/x")
    _fails(world, retry, S.EXTERNAL_ERROR, EXIT_RELAUNCH, "returned 75, a retryable code")
    monkeypatch.setattr(WorkerJob, "SCIENCE_COMMAND", ["sh", "-c", "true"])
    empty = world.job("E", input_path="in/x")
    _fails(world, empty, S.INTERNAL_ERROR, 0, "reported a product but wrote nothing")


def test_timeout_kills_the_container_and_is_an_external_error(
    docker_job: World,
    s3_bucket: S3Bucket,
    container_engine: ContainerEngine,
    monkeypatch: pytest.MonkeyPatch,
):
    _s3_world(docker_job, s3_bucket)
    monkeypatch.setattr(WorkerJob, "SCIENCE_TIMEOUT", timedelta(seconds=1.5))
    monkeypatch.setattr(WorkerJob, "SCIENCE_COMMAND", ["sh", "-c", "echo working; sleep 60"])
    job_id = docker_job.job(input_path="inputs/P1/")
    details = _fails(
        docker_job, job_id, S.EXTERNAL_ERROR, EXIT_RELAUNCH, "killed at its timeout (1.5 s)"
    )
    assert details["processing"]["timed_out"] is True
    assert details["log_tail"] == ["working"]
    assert container_engine.leftovers() == []


def test_missing_image_is_an_external_error(
    docker_job: World, s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
):
    _s3_world(docker_job, s3_bucket)
    monkeypatch.setattr(WorkerJob, "SCIENCE_IMAGE", "localhost/joblife-no-such-image:1")
    job_id = docker_job.job(input_path="inputs/P1/")
    _fails(
        docker_job,
        job_id,
        S.EXTERNAL_ERROR,
        EXIT_RELAUNCH,
        "science image 'localhost/joblife-no-such-image:1' is not on this worker's",
    )


def test_engine_down_is_an_external_error(world: World, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(WorkerJob, "SCIENCE_IMAGE", "localhost/whatever:1")
    monkeypatch.setattr(WorkerJob, "EXTERNAL_DEPENDENCIES", {})
    (world.tmp / "storage" / "in").mkdir(parents=True)
    (world.tmp / "storage" / "in" / "x").write_bytes(b"x")
    world.configure(container_engine_url=f"unix://{world.tmp}/no-engine.sock")
    job_id = world.job(input_path="in/x")
    _fails(world, job_id, S.EXTERNAL_ERROR, EXIT_RELAUNCH, "does not answer")


def test_output_upload_failure_is_an_external_error(docker_job: World, s3_bucket: S3Bucket):
    _s3_world(docker_job, s3_bucket)
    job_id = docker_job.job(
        input_path="inputs/P1/", output_path="s3://joblife-no-such-bucket/out/P1"
    )
    _fails(docker_job, job_id, S.EXTERNAL_ERROR, EXIT_RELAUNCH, "NoSuchBucket")


SmallDisk = Callable[..., Path]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """Mounts a real, small tmpfs (``mount`` needs root, as here and in CI): called with
    extra mount options (``nr_inodes=4``), it returns the mount point; the worker's work
    root is put on it by :func:`_work_on`. Unmounted at the end."""
    mounted: list[Path] = []

    def mount(*options: str) -> Path:
        mount_point = tmp_path / f"small-disk-{len(mounted)}"
        mount_point.mkdir()
        option = ",".join(("size=1m", *options))
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", option, "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            unavailable(f"cannot mount a small tmpfs: {done.stderr.strip()}")  # fails in CI
        mounted.append(mount_point)
        return mount_point

    yield mount
    for mount_point in mounted:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _work_on(world: World, disk: Path) -> None:
    """The worker's work dirs on ``disk``; the storage stays on the big disk."""
    world.work_root = disk / "work"
    world.configure(work_root=world.work_root)


def _fill(disk: Path, leave: int = 0) -> None:
    """Take every free byte of ``disk`` but ``leave`` (as another job's leftovers would)."""
    if leave:
        with open(disk / "filler", "wb") as filler:
            filler.write(bytes(shutil.disk_usage(disk).free - leave))
        assert shutil.disk_usage(disk).free <= leave
        return
    subprocess.run(["dd", "if=/dev/zero", f"of={disk}/filler", "bs=64k"], capture_output=True)
    assert shutil.disk_usage(disk).free == 0


FULL = "the worker's disk is full"


def process_job(world: World, monkeypatch: pytest.MonkeyPatch, command: str, **fields: Any) -> int:
    """A process-runner job without dependencies whose science step is ``sh -c command``."""
    monkeypatch.setattr(WorkerJob, "SCIENCE_RUNNER", "process")
    monkeypatch.setattr(WorkerJob, "EXTERNAL_DEPENDENCIES", {})
    monkeypatch.setattr(WorkerJob, "SCIENCE_COMMAND", ["sh", "-c", command])
    (world.tmp / "storage" / "in").mkdir(parents=True, exist_ok=True)
    (world.tmp / "storage" / "in" / "x").write_bytes(b"x")
    return world.job(input_path="in/x", **fields)


def test_full_disk_during_the_download_is_an_external_error(
    world: World, small_disk: SmallDisk, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(WorkerJob, "SCIENCE_RUNNER", "process")
    _work_on(world, small_disk())
    (world.tmp / "storage" / "in").mkdir(parents=True)
    (world.tmp / "storage" / "in" / "big.dat").write_bytes(b"\0" * 3 * MB)
    job_id = world.job(input_path="in/big.dat")
    details = _fails(world, job_id, S.EXTERNAL_ERROR, EXIT_RELAUNCH, f"{FULL}: no space left")
    assert "during download" in world.last(job_id).message
    assert details["disk"]["total_bytes"] == 1024 * 1024
    assert details["disk"]["free_bytes"] < 64 * 1024


def test_full_disk_making_the_work_dir_is_an_external_error(
    world: World, small_disk: SmallDisk, monkeypatch: pytest.MonkeyPatch
):
    _work_on(world, small_disk("nr_inodes=5"))  # no inode left for every sub-dir
    job_id = process_job(world, monkeypatch, "true")
    _fails(world, job_id, S.EXTERNAL_ERROR, EXIT_RELAUNCH, f"{FULL}: no space left during pre-")
    message = world.last(job_id).message
    assert f"writing {world.work_root}/" in message and "bytes free of 1048576" in message


def test_full_disk_fetching_the_previous_manifest_is_an_external_error(
    world: World, small_disk: SmallDisk, monkeypatch: pytest.MonkeyPatch
):
    disk = small_disk()
    _work_on(world, disk)
    manifest = world.tmp / "storage" / "out" / "P1" / MANIFEST
    manifest.parent.mkdir(parents=True)
    # An earlier attempt's, larger than what is left once the work dir and the input fit.
    manifest.write_text(json.dumps({"files": {f"output-{n}": n for n in range(20_000)}}))
    job_id = process_job(world, monkeypatch, "true", output_path="out/P1")
    _fill(disk, leave=64 * 1024)
    details = _fails(world, job_id, S.EXTERNAL_ERROR, EXIT_RELAUNCH, f"{FULL}: no space left")
    assert "during pre-processing" in world.last(job_id).message
    assert MANIFEST in world.last(job_id).message  # the fetch of the manifest, no other write
    assert details["disk"]["free_bytes"] <= 64 * 1024  # what the filler left


def test_full_disk_writing_the_manifest_is_an_external_error(
    world: World, small_disk: SmallDisk, monkeypatch: pytest.MonkeyPatch
):
    """The science step fills the disk with its outputs and still reports a product."""
    _work_on(world, small_disk())
    fill = "dd if=/dev/zero of={output_dir}/big bs=64k; exit 0"
    job_id = process_job(world, monkeypatch, fill)
    details = _fails(world, job_id, S.EXTERNAL_ERROR, EXIT_RELAUNCH, f"{FULL}: no space left")
    assert "during post-processing" in world.last(job_id).message
    assert details["disk"]["free_bytes"] == 0
    assert "upload" not in details  # nothing uploaded without its manifest


def test_science_failing_on_a_full_disk_says_so(
    world: World, small_disk: SmallDisk, monkeypatch: pytest.MonkeyPatch
):
    """Its own return code still decides (internal here), the message names the disk."""
    _work_on(world, small_disk())
    job_id = process_job(world, monkeypatch, "dd if=/dev/zero of={output_dir}/big bs=64k")
    details = _fails(world, job_id, S.INTERNAL_ERROR, EXIT_DO_NOT_RELAUNCH, "return code 1")
    message = world.last(job_id).message
    assert f"{FULL} (0 bytes free of 1048576 on the file system of " in message
    assert details["disk"] == {
        "path": str(world.work_root / str(world.load(job_id).unique_id)),
        "free_bytes": 0,
        "total_bytes": 1024 * 1024,
    }
    # the science log (on the same disk) could not be written: its tail is still kept
    assert any("No space left on device" in line for line in details["log_tail"])
    assert "could not write" in details["processing"]["log_error"]


def test_science_failing_with_room_on_the_disk_does_not_blame_it(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    job_id = process_job(world, monkeypatch, "exit 1")
    details = _fails(world, job_id, S.INTERNAL_ERROR, EXIT_DO_NOT_RELAUNCH, "return code 1")
    assert "disk" not in world.last(job_id).message and "disk" not in details
