"""Trust boundaries of the worker's transfers (issue 13, items 1, 5 and 9): what the science
step leaves in its work dir is read only as regular files that lie inside it, every key is
checked before a transfer, and a job fetches exactly the input its creation listed.

Real jobs run through ``run_worker`` (the science step a real process, or a container in
podman), with file storage or S3 (moto's server) as in tests/test_worker_steps.py."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from joblife.config import get_settings
from joblife.jobtypes.image_ingest import ImageIngestJob
from joblife.model import JobStatus
from joblife.science import synthetic
from joblife.storage import FileStorage, KeyRefused, open_storage
from joblife.worker.runner import EXIT_DO_NOT_RELAUNCH, EXIT_RELAUNCH
from joblife.worker.steps import MANIFEST
from joblife.worker.workfiles import UnsafeWorkFile, WorkTree
from sqlalchemy import Engine

from tests.support.containers import ContainerEngine
from tests.support.s3 import S3Bucket
from tests.test_jobtypes_reference import Pipeline
from tests.test_worker_steps import WorkerJob, World, _fails, process_job

S = JobStatus
SECRET = b"host secret: never uploaded\n"


@pytest.fixture
def world(engine: Engine, db_url: str, tmp_path: Path) -> World:
    return World(engine, db_url, tmp_path)


@pytest.fixture
def docker_job(
    world: World, container_engine: ContainerEngine, monkeypatch: pytest.MonkeyPatch
) -> World:
    monkeypatch.setattr(WorkerJob, "SCIENCE_IMAGE", container_engine.image)
    world.configure(container_engine_url=container_engine.base_url)
    return world


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A host folder the science step must not publish, with a secret file in it (on the
    work dir's file system, so that a hard link to it is possible)."""
    folder = tmp_path / "host"
    folder.mkdir()
    (folder / "secret").write_bytes(SECRET)
    return folder


def _stored(world: World) -> dict[str, bytes]:
    """Every object of the file storage (relative path -> content), links included."""
    root = world.tmp / "storage"
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() or p.is_symlink()
    }


def _nothing_from_the_host(world: World) -> None:
    leaked = [k for k, v in _stored(world).items() if SECRET in v]
    assert leaked == [], f"host content uploaded as {leaked}"
    assert not (world.tmp / "storage" / "worker_test" / "P1").exists()


# -- item 1: links and special files in output/ ---------------------------------------------------
def test_a_container_linking_a_host_file_into_output_ends_internal_error(
    docker_job: World,
    container_engine: ContainerEngine,
    host: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """The issue's attack, from a real container: ``ln -s <host file> output/x``."""
    world = docker_job
    monkeypatch.setattr(WorkerJob, "EXTERNAL_DEPENDENCIES", {})
    monkeypatch.setattr(
        WorkerJob,
        "SCIENCE_COMMAND",
        ["sh", "-c", f"echo ok > {{output_dir}}/good; ln -s {host}/secret {{output_dir}}/x"],
    )
    (world.tmp / "storage" / "in").mkdir(parents=True)
    (world.tmp / "storage" / "in" / "P1.dat").write_bytes(b"data")
    job_id = world.job(input_path="in/P1.dat")
    _fails(world, job_id, S.INTERNAL_ERROR, EXIT_DO_NOT_RELAUNCH, "'output/x' is a symbolic link")
    _nothing_from_the_host(world)
    assert container_engine.leftovers() == []


@pytest.mark.parametrize(
    ("command", "named"),
    [
        ("ln -s {host}/secret {{output_dir}}/leak", "'output/leak' is a symbolic link"),
        (
            "mkdir {{output_dir}}/a; ln -s {host}/secret {{output_dir}}/a/b",
            "'output/a/b' is a symb",
        ),
        ("ln -s {host} {{output_dir}}/dir", "'output/dir' is a symbolic link"),
        ("rm -r {{output_dir}}; ln -s {host} {{output_dir}}", "'output/' is a symbolic link"),
        ("ln {host}/secret {{output_dir}}/hard", "'output/hard' has 2 hard links"),
        ("mkfifo {{output_dir}}/pipe", "'output/pipe' is a FIFO"),
    ],
    ids=["symlink", "nested-symlink", "dir-symlink", "output-is-a-link", "hard-link", "fifo"],
)
def test_links_and_special_files_in_output_end_internal_error_naming_them(
    world: World, host: Path, monkeypatch: pytest.MonkeyPatch, command: str, named: str
):
    job_id = process_job(
        world, monkeypatch, "echo ok > {output_dir}/good; " + command.format(host=host)
    )
    _fails(world, job_id, S.INTERNAL_ERROR, EXIT_DO_NOT_RELAUNCH, named)
    _nothing_from_the_host(world)
    assert (host / "secret").read_bytes() == SECRET  # removing the work dir left it alone


@pytest.mark.parametrize(
    ("leave", "named"),
    [
        (os.mkfifo, "'output/rec_0.h5' is a FIFO"),
        (
            lambda path: path.symlink_to(path.parents[1] / "input" / path.name),
            "'output/rec_0.h5' is a symbolic link",
        ),
    ],
    ids=["fifo", "symlink"],
)
def test_h5repack_checks_its_output_layout_without_following_or_blocking_on_it(
    engine: Engine,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    leave: Callable[[Path], None],
    named: str,
):
    """The container variant checks the repacked file's layout on the worker: a FIFO left
    as the output would block h5py's open forever (the heartbeat beating on), a link would
    be followed. Both end internal_error naming them. The container is a stand-in that
    leaves the entry (the check runs after any container); the forked worker inherits it."""
    from joblife.jobtypes import h5repack as h5repack_type
    from joblife.science import outcome
    from joblife.worker import steps

    def container(job: Any, context: Any, kind: str, spec: Any) -> int:
        leave(context.output_dir / job.file_name)
        return outcome.EXIT_PRODUCT

    monkeypatch.setattr(h5repack_type, "choose_runner", lambda settings: "docker")
    monkeypatch.setattr(steps, "run_science_spec", container)
    pipeline = Pipeline(engine, db_url, tmp_path, monkeypatch)
    pipeline.set(H5REPACK_INPUT_PREFIX="in/h5")
    synthetic.make_recording(tmp_path / "h5" / "rec_0.h5", channels=6, samples=5000, seed=0)
    pipeline.upload(tmp_path / "h5", "in/h5")

    [job] = pipeline.run_until_settled("h5repack", 1, timeout=30)  # a safety net only
    assert job.status is S.INTERNAL_ERROR
    message = pipeline.history(job.id)[-1].message
    assert f"refused to upload the output {named}" in message, message
    assert not (pipeline.storage_root / "h5repack").exists()


def test_links_in_logs_are_skipped_and_the_manifest_is_not_written_through_one(
    world: World, host: Path, monkeypatch: pytest.MonkeyPatch
):
    """logs/ is uploaded best effort: a link there is skipped (the job still ends done),
    and the manifest copy the worker keeps there is never written through a planted link."""
    victim = host / "victim"
    victim.write_bytes(b"untouched")
    job_id = process_job(
        world,
        monkeypatch,
        f"echo ok > {{output_dir}}/good; ln -s {host}/secret {{logs_dir}}/stolen.log; "
        f"ln -s {victim} {{logs_dir}}/{MANIFEST}",
    )
    assert world.run(job_id) == EXIT_DO_NOT_RELAUNCH
    assert world.load(job_id).status is S.DONE, world.last(job_id).message
    assert victim.read_bytes() == b"untouched"
    stored = _stored(world)
    assert [k for k, v in stored.items() if SECRET in v] == []
    logs = [k for k in stored if k.startswith("joblife-logs/")]
    assert sorted(k.rsplit("/", 1)[1] for k in logs) == [MANIFEST, "science.log"]
    assert stored["worker_test/P1/good"] == b"ok\n"
    world.assert_clean()


def test_logs_past_the_upload_budget_are_skipped_and_counted(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """logs/ is the science step's to fill: its upload has a budget (science.log and the
    manifest copy first, then by name); a file past it is skipped, logged and counted."""
    world.configure(logs_upload_max_bytes=250_000)  # joblife's own logs and two of three
    job_id = process_job(
        world,
        monkeypatch,
        "echo ok > {output_dir}/good; "
        "for n in a b c; do head -c 100000 /dev/zero > {logs_dir}/$n.log; done",
    )
    assert world.run(job_id) == EXIT_DO_NOT_RELAUNCH
    assert world.load(job_id).status is S.DONE, world.last(job_id).message
    logs = sorted(k.rsplit("/", 1)[1] for k in _stored(world) if k.startswith("joblife-logs/"))
    assert logs == [MANIFEST, "a.log", "b.log", "science.log"]
    details = world.change(job_id, S.PROCESSED).details
    assert details["logs_skipped"] == {"files": 1, "bytes": 100_000}
    world.assert_clean()


def test_a_file_swapped_for_a_link_or_a_fifo_after_the_walk_is_not_read(tmp_path: Path, host: Path):
    """The check is made on the opened descriptor: what changed between the walk and the
    open is refused (and a FIFO does not block the reader)."""
    work = tmp_path / "work"
    (work / "output").mkdir(parents=True)
    (work / "output" / "a").write_bytes(b"a")
    (work / "output" / "b").write_bytes(b"b")
    tree = WorkTree(work, "output")
    files, refused = tree.scan()
    assert [f.name for f in files] == ["a", "b"] and refused == []
    (work / "output" / "a").unlink()
    (work / "output" / "a").symlink_to(host / "secret")
    (work / "output" / "b").unlink()
    os.mkfifo(work / "output" / "b")
    with pytest.raises(UnsafeWorkFile, match="'output/a' is a symbolic link"), tree.open("a"):
        pass
    opened = threading.Event()

    def open_fifo() -> None:
        with pytest.raises(UnsafeWorkFile, match="'output/b' is a FIFO"), tree.open("b"):
            pass
        opened.set()

    reader = threading.Thread(target=open_fifo, daemon=True)
    reader.start()
    assert opened.wait(10), "opening the FIFO blocked"


# -- item 5: output names and output paths ------------------------------------------------------
@pytest.mark.parametrize(
    ("create", "named"),
    [
        ("echo x > \"{{output_dir}}/a$(printf '\\nb')\"", "'output/a\\nb'"),
        ("echo x > \"$(printf '{{output_dir}}/bad\\377.h5')\"", "'output/bad\\udcff.h5'"),
    ],
    ids=["newline", "not-utf8"],
)
def test_an_output_name_that_is_no_safe_key_is_refused_by_name(
    world: World, monkeypatch: pytest.MonkeyPatch, create: str, named: str
):
    job_id = process_job(world, monkeypatch, "echo ok > {output_dir}/good; " + create.format())
    message = f"refused to upload the output {named}: its name is not a safe storage key"
    _fails(world, job_id, S.INTERNAL_ERROR, EXIT_DO_NOT_RELAUNCH, message)
    assert not (world.tmp / "storage" / "worker_test").exists()  # nothing uploaded


def test_an_output_path_naming_another_jobs_folder_is_refused(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """``worker_test/P1/../P2`` would read P2's manifest (skipping the science step) and
    overwrite P2's outputs."""
    other = world.tmp / "storage" / "worker_test" / "P2"
    other.mkdir(parents=True)
    (other / MANIFEST).write_text('{"files": {}}')
    (other / "good").write_bytes(b"P2's own output")
    job_id = process_job(
        world, monkeypatch, "echo evil > {output_dir}/good", output_path="worker_test/P1/../P2"
    )
    _fails(world, job_id, S.INTERNAL_ERROR, EXIT_DO_NOT_RELAUNCH, "refused the output_path")
    assert "has a '..' path segment" in world.last(job_id).message
    assert (other / "good").read_bytes() == b"P2's own output"


def test_an_input_key_with_an_empty_segment_is_refused_not_fetched_as_another(
    world: World, s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
):
    """On S3 ``in/P1//abs.h5`` is a key of its own: it is refused, not fetched as
    ``in/P1/abs.h5``."""
    monkeypatch.setattr(WorkerJob, "SCIENCE_RUNNER", "process")
    monkeypatch.setattr(WorkerJob, "EXTERNAL_DEPENDENCIES", {})
    monkeypatch.setattr(WorkerJob, "SCIENCE_COMMAND", ["sh", "-c", "cp {input_dir}/* {output_dir}"])
    world.configure(storage_url=s3_bucket.url("data"), s3_endpoint_url=s3_bucket.endpoint)
    s3_bucket.put("data/in/P1/abs.h5", b"real")
    s3_bucket.put("data/in/P1//abs.h5", b"evil")
    job_id = world.job(input_path="in/P1/")
    _fails(world, job_id, S.INTERNAL_ERROR, EXIT_DO_NOT_RELAUNCH, "refused to fetch the object")
    assert "'/abs.h5': starts with '/'" in world.last(job_id).message
    storage = open_storage(settings=world.settings)
    with pytest.raises(KeyRefused, match="empty path segment"):
        storage.download("in/P1//abs.h5", world.tmp / "x")
    with pytest.raises(KeyRefused, match="empty path segment"):
        FileStorage(world.tmp / "fs").download("in//abs.h5", world.tmp / "y")


# -- item 9: a job fetches what its creation listed -----------------------------------------------
@pytest.fixture
def stack(world: World, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three frames under ``in/stack/``, the science step concatenating what it got."""
    monkeypatch.setattr(WorkerJob, "SCIENCE_RUNNER", "process")
    monkeypatch.setattr(WorkerJob, "EXTERNAL_DEPENDENCIES", {})
    monkeypatch.setattr(
        WorkerJob, "SCIENCE_COMMAND", ["sh", "-c", "cat {input_dir}/* > {output_dir}/all"]
    )
    folder = world.tmp / "storage" / "in" / "stack"
    folder.mkdir(parents=True)
    for name in ("f0", "f1", "f2"):
        (folder / name).write_bytes(name.encode())
    return folder


LISTING = {"f0": 2, "f1": 2, "f2": 2}


def test_a_listed_job_fetches_exactly_its_listing(world: World, stack: Path):
    (stack / "f3").write_bytes(b"appeared after the job's creation")
    job_id = world.job(input_path="in/stack/", input_listing=LISTING)
    assert world.run(job_id) == EXIT_DO_NOT_RELAUNCH
    assert world.load(job_id).status is S.DONE, world.last(job_id).message
    assert (world.tmp / "storage" / "worker_test" / "P1" / "all").read_bytes() == b"f0f1f2"
    assert world.change(job_id, S.PROCESSED).details["download"]["files"] == 3


def test_a_listed_part_missing_or_resized_is_an_external_error_naming_it(world: World, stack: Path):
    (stack / "f1").unlink()
    job_id = world.job(input_path="in/stack/", input_listing=LISTING)
    _fails(world, job_id, S.EXTERNAL_ERROR, EXIT_RELAUNCH, "missing 'f1'")
    assert "f0" not in world.last(job_id).message
    (stack / "f1").write_bytes(b"f1")
    (stack / "f2").write_bytes(b"f2, rewritten")
    again = world.job("P2", input_path="in/stack/", input_listing=LISTING)
    _fails(world, again, S.EXTERNAL_ERROR, EXIT_RELAUNCH, "changed size 'f2' (13 bytes, listed")
    assert not (world.tmp / "storage" / "worker_test").exists()  # no product


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, world: World) -> Iterator[None]:
    monkeypatch.setenv("JOBLIFE_STORAGE_URL", world.settings.storage_url or "")
    monkeypatch.setenv("JOBLIFE_DATA_DIR", str(world.tmp / "data"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_image_ingest_lists_each_stacks_frames_at_creation(
    world: World, settings_env: None, monkeypatch: pytest.MonkeyPatch
):
    root = world.tmp / "storage" / "in" / "imgs"
    for name, size in (("a/f0.png", 3), ("a/f1.png", 4), ("a/notes.txt", 5), ("b/f0.png", 6)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x" * size)
    monkeypatch.setenv("JOBLIFE_IMAGE_INGEST_INPUT_PREFIX", "in/imgs")
    monkeypatch.setenv("JOBLIFE_IMAGE_INGEST_FILTER", r".*\.png")
    get_settings.cache_clear()
    found = ImageIngestJob.get_jobs_to_create(datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC))
    listings = {j.input_product_id: j.input_listing for j in found.to_create}
    assert listings == {"a": {"a/f0.png": 3, "a/f1.png": 4}, "b": {"b/f0.png": 6}}


def test_an_image_stack_whose_frame_vanished_after_creation_ends_external_error(
    engine: Engine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The issue's case end to end: creation lists each stack's frames; one frame deleted
    before the worker's fetch fails that stack (external error naming the frame, no
    pyramid with a frame fewer); the intact stack is done."""
    pipeline = Pipeline(engine, db_url, tmp_path, monkeypatch)
    local = tmp_path / "frames"
    for stack in ("s1", "s2"):
        synthetic.make_image_stack(local / stack, frames=3, height=40, width=40, seed=1)
    pipeline.set(IMAGE_INGEST_INPUT_PREFIX="in/img", IMAGE_INGEST_FILTER=r"s\d/frame_\d{3}\.png")
    pipeline.upload(local, "in/img")
    # Taken at once: the stacks were just written, within the settle time of discovery.
    monkeypatch.setattr(ImageIngestJob, "DISCOVERY_SETTLE_SECONDS", 0)
    early = pipeline.orchestrator(["create", "configure"])
    try:
        early.run_once()
    finally:
        early.close()
    jobs = {j.input_product_id: j for j in pipeline.jobs("image_ingest")}
    assert jobs["s2"].input_listing == {
        f"s2/frame_00{i}.png": (local / "s2" / f"frame_00{i}.png").stat().st_size for i in range(3)
    }
    (pipeline.storage_root / "in" / "img" / "s2" / "frame_001.png").unlink()

    settled = {j.input_product_id: j for j in pipeline.run_until_settled("image_ingest", 2)}
    assert settled["s1"].status is S.DONE
    assert settled["s2"].status is S.EXTERNAL_ERROR
    message = pipeline.history(settled["s2"].id)[-1].message
    assert "missing 's2/frame_001.png'" in message, message
    assert not (pipeline.storage_root / "image_ingest" / "s2").exists()  # no pyramid
