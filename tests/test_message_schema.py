"""The product message lets a consumer find the product (issue 17, item 9), and every
message joblife publishes matches its documented schema, docs/product-message.schema.json
(JSON Schema, draft 2020-12).

Every message is captured where a consumer would read it, the local publication spool,
after a real run: the reference types (h5repack, image_ingest, tile_series) and the ``test``
type end to end through the life-cycle services with forked workers, the example type
through ``run_worker`` and the relay, on file storage and on S3, and the partner guide's
worked example (the ndvi package) installed and run by ``joblife run --once``. Each
message is validated against the schema, and its ``output_url`` and ``files`` are followed
to the stored objects: every output is there, with the size and SHA-256 the message gives.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from joblife.config import get_settings
from joblife.jobtypes.test_job import write_test_product
from joblife.lifecycle.common import ServiceContext, utc_now
from joblife.model import Job, JobStatus
from joblife.publication.relay import PublicationService
from joblife.publication.topology import encode_body
from joblife.science import synthetic
from joblife.worker.outputs import OutputFile, ProductOutputs, record_outputs
from joblife.worker.runner import EXIT_DO_NOT_RELAUNCH
from joblife.worker.steps import MANIFEST
from jsonschema import Draft202012Validator
from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session

from tests.support.example_type import ExampleJob
from tests.support.s3 import S3Bucket
from tests.test_jobtypes_reference import Pipeline, TileSeries
from tests.test_partner_example import (
    EXAMPLE,
    FINAL,
    PIP_INSTALL,
    _environment,
    _joblife,
    _jobs,
    _write_product,
)
from tests.test_worker_steps import WorkerJob, World

S = JobStatus
SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "product-message.schema.json"


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    return Draft202012Validator(schema)


def problems(validator: Draft202012Validator, body: Any) -> list[str]:
    """Every way ``body`` fails the schema, each with where."""
    return sorted(
        f"{'/'.join(map(str, e.absolute_path)) or '(message)'}: {e.message}"
        for e in validator.iter_errors(body)
    )


def _path(url: str) -> Path:
    parts = urlsplit(url)
    assert parts.scheme == "file", url
    return Path(unquote(parts.path))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_findable_on_disk(body: dict[str, Any]) -> None:
    """The message's output folder holds exactly its files, each with its size and SHA-256
    (and joblife's manifest, at its manifest_url, which lists the same)."""
    folder = _path(body["output_url"])
    assert (body["files_listed"], body["files_total"]) == (True, len(body["files"]))
    assert _path(body["manifest_url"]) == folder / MANIFEST
    stored = sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST
    )
    assert [f["name"] for f in body["files"]] == stored
    for file in body["files"]:
        path = _path(file["url"])
        assert path == folder / file["name"]
        assert path.stat().st_size == file["size"]
        assert _sha256(path.read_bytes()) == file["sha256"]
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["files"] == {f["name"]: f["size"] for f in body["files"]}
    assert manifest["sha256"] == {f["name"]: f["sha256"] for f in body["files"]}


def _spooled(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the schema itself ----------------------------------------------------------------------
def _valid_message() -> dict[str, Any]:
    return {
        "job_type": "h5repack",
        "job_id": 12,
        "unique_id": "0b7f4a52-3a43-4d53-9c36-7f4a8d2b1e10",
        "product": "repacked",
        "input_product_id": "exp-1/rec_0.h5",
        "tile_id": None,
        "output_path": "h5repack/exp-1/rec_0.h5",
        "output_url": "s3://bucket/data/h5repack/exp-1/rec_0.h5",
        "files": [
            {
                "name": "rec_0.h5",
                "size": 1024,
                "sha256": "a" * 64,
                "url": "s3://bucket/data/h5repack/exp-1/rec_0.h5/rec_0.h5",
            }
        ],
        "files_listed": True,
        "files_total": 1,
        "manifest_url": "s3://bucket/data/h5repack/exp-1/rec_0.h5/_joblife_manifest.json",
        "input_publication_date": "2026-11-22T10:00:00.123456+00:00",
    }


def _unlisted_message() -> dict[str, Any]:
    """A message of a job with more outputs than product_message_max_files."""
    return {**_valid_message(), "files": None, "files_listed": False, "files_total": 100_000}


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda m: m.pop("output_url"), "(message)"),
        (lambda m: m.pop("files"), "(message)"),
        (lambda m: m.update(output_url=None), "files"),  # files without a place
        (lambda m: m.update(files=None), "files_listed"),  # a place without its files
        (lambda m: m.update(files=None, files_listed=False, manifest_url=None), "manifest_url"),
        (lambda m: m.update(files=None, files_listed=False, files_total=None), "files_total"),
        (lambda m: m.update(files_listed=False), "files_listed"),  # listed, and says not
        (lambda m: m.update(files_total=0), "files_total"),
        (lambda m: m.update(manifest_url="_joblife_manifest.json"), "manifest_url"),
        (lambda m: m.update(files=[]), "files"),
        (lambda m: m["files"][0].update(sha256="ABC"), "files/0/sha256"),
        (lambda m: m["files"][0].pop("size"), "files/0"),
        (lambda m: m["files"][0].update(size=-1), "files/0/size"),
        (lambda m: m["files"][0].update(name="/abs"), "files/0/name"),
        (lambda m: m.update(output_url="bucket/data"), "output_url"),
        (lambda m: m.update(input_publication_date="2026-11-22 10:00"), "input_publication_date"),
        (lambda m: m.update(input_publication_date="2026-11-22T10:00:00"), "input_publication_"),
        (lambda m: m.update(unique_id="not-a-uuid"), "unique_id"),
        (lambda m: m.update(job_id="12"), "job_id"),
    ],
)
def test_the_schema_refuses_a_message_a_consumer_could_not_use(
    validator: Draft202012Validator, change: Any, where: str
):
    message = _valid_message()
    assert problems(validator, message) == []
    change(message)
    found = problems(validator, message)
    assert found and any(p.startswith(where) for p in found), found


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda m: m.pop("manifest_url"), "(message)"),  # no way to the list
        (lambda m: m.pop("files_listed"), "(message)"),
        (lambda m: m.update(files_listed=True), "files_listed"),
        (lambda m: m.update(files_total=None), "files_total"),
    ],
)
def test_an_unlisted_message_must_say_where_the_list_is(
    validator: Draft202012Validator, change: Any, where: str
):
    """Past product_message_max_files, files is null: valid only with files_listed false,
    the count and the manifest's URL."""
    message = _unlisted_message()
    assert problems(validator, message) == []
    change(message)
    found = problems(validator, message)
    assert found and any(p.startswith(where) for p in found), found


def test_a_message_of_joblife_before_the_file_cap_is_still_valid(
    validator: Draft202012Validator,
):
    """Bodies written before files_listed existed (an operator may republish them) list
    every file and lack the new fields: still valid."""
    message = _valid_message()
    for name in ("files_listed", "files_total", "manifest_url"):
        del message[name]
    assert problems(validator, message) == []


def test_a_message_built_outside_a_worker_says_its_outputs_are_unknown(
    validator: Draft202012Validator, session: Session
):
    """The example type's message from a job no worker ran (as tests and benches build
    them): the outputs are not known, and the message says so with nulls, validly."""
    job = ExampleJob(input_product_id="P1", output_path="s3://b/out/P1", exit_code=0)
    session.add(job)
    session.commit()
    messages = job.get_products_publication_jsons()
    assert [m["product"] for m in messages] == ["mask", "quicklook"]
    for message in messages:
        assert (message["output_url"], message["files"]) == (None, None)
        assert (message["files_listed"], message["files_total"], message["manifest_url"]) == (
            False,
            None,
            None,
        )
        assert problems(validator, message) == []


@pytest.fixture
def max_files(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int | None], None]]:
    """Set product_message_max_files as a worker reads it (its environment; None: the
    default), settings re-read; the cache is cleared again after the test."""

    def set_to(value: int | None) -> None:
        if value is None:
            monkeypatch.delenv("JOBLIFE_PRODUCT_MESSAGE_MAX_FILES", raising=False)
        else:
            monkeypatch.setenv("JOBLIFE_PRODUCT_MESSAGE_MAX_FILES", str(value))
        get_settings.cache_clear()

    yield set_to
    get_settings.cache_clear()


def _outputs(count: int) -> ProductOutputs:
    url = "s3://products/data/example/P1"
    return ProductOutputs(
        url,
        tuple(
            OutputFile(f"tiles/{i:06d}.tif", 1000 + i, f"{i:064x}", f"{url}/tiles/{i:06d}.tif")
            for i in range(count)
        ),
    )


def test_a_hundred_thousand_outputs_make_a_small_message_pointing_at_the_manifest(
    validator: Draft202012Validator,
    session: Session,
    max_files: Callable[[int | None], None],
):
    """A science step writing 100,000 files: listed, the message would be some 20 MB (over
    RabbitMQ 4's 16 MiB default max_message_size). Past product_message_max_files (1,000
    by default) it lists none, says so, and gives the manifest's URL; at the cap it still
    lists them all."""
    max_files(None)
    job = ExampleJob(input_product_id="P1", output_path="example/P1", exit_code=0)
    session.add(job)
    session.commit()

    record_outputs(job, _outputs(100_000))
    for message in job.get_products_publication_jsons():
        assert problems(validator, message) == []
        assert len(encode_body(message)) < 2000
        assert (message["files"], message["files_listed"], message["files_total"]) == (
            None,
            False,
            100_000,
        )
        assert message["manifest_url"] == "s3://products/data/example/P1/_joblife_manifest.json"

    record_outputs(job, _outputs(1000))
    for message in job.get_products_publication_jsons():
        assert problems(validator, message) == []
        assert (message["files_listed"], message["files_total"]) == (True, 1000)
        assert message["files"] == _outputs(1000).files_json()


# -- the reference types and the test type, end to end ---------------------------------------
@pytest.fixture
def pipeline(
    engine: Engine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Pipeline]:
    made = Pipeline(engine, db_url, tmp_path, monkeypatch)
    yield made
    get_settings.cache_clear()


def test_every_message_of_the_reference_types_and_the_test_type_matches_the_schema(
    pipeline: Pipeline, tmp_path: Path, validator: Draft202012Validator
):
    recordings = tmp_path / "in-h5"
    for i in range(2):
        synthetic.make_recording(
            recordings / "exp-1" / f"rec_{i}.h5", channels=4, samples=800, seed=i
        )
    pipeline.set(H5REPACK_INPUT_PREFIX="in/h5", H5REPACK_CHUNK_BYTES="4000")
    pipeline.upload(recordings, "in/h5")
    images = tmp_path / "in-img"
    synthetic.make_image_stack(images / "stack-a", frames=2, height=70, width=90, seed=3)
    pipeline.set(IMAGE_INGEST_INPUT_PREFIX="in/img", IMAGE_INGEST_FILTER=r"stack-a/.*\.png")
    pipeline.upload(images, "in/img")
    TileSeries(pipeline, tmp_path).publish(timedelta(days=2), timedelta(seconds=30))
    write_test_product(
        get_settings().test_products_path, "T0001", utc_now() - timedelta(minutes=1), publish=True
    )

    expected = {"h5repack": 2, "image_ingest": 1, "tile_series": 1, "test": 1}
    for job_type, count in expected.items():
        jobs = pipeline.run_until_settled(job_type, count)
        assert {j.status for j in jobs} == {S.DONE}, [pipeline.history(j.id)[-1] for j in jobs]

    bodies = [line["body"] for line in pipeline.spooled()]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for body in bodies:
        by_type.setdefault(body["job_type"], []).append(body)
        assert problems(validator, body) == [], body
    assert {t: len(b) for t, b in by_type.items()} == expected
    for job_type in ("h5repack", "image_ingest", "tile_series"):
        for body in by_type[job_type]:
            assert body["output_url"] == (pipeline.storage_root / body["output_path"]).as_uri()
            assert_findable_on_disk(body)
    assert [f["name"] for f in by_type["image_ingest"][0]["files"]] == ["pyramid.h5"]
    # The test type uploads nothing: its message says its outputs are not known.
    [test_message] = by_type["test"]
    assert test_message["output_path"] == "test://products/T0001"
    assert (test_message["output_url"], test_message["files"]) == (None, None)

    # The same recordings discovered again (their jobs removed): the outputs exist, the
    # science step is skipped, and the new messages list them from the manifest.
    with Session(pipeline.engine) as session:
        session.execute(delete(Job).where(Job.job_type == "h5repack"))
        session.commit()
    again = pipeline.run_until_settled("h5repack", 2)
    assert all(
        pipeline.change(j.id, S.PROCESSED).details["processing"].get("skipped") for j in again
    )
    first = {b["input_product_id"]: b for b in by_type["h5repack"]}
    later = [line["body"] for line in pipeline.spooled()[len(bodies) :]]
    assert sorted(b["input_product_id"] for b in later) == sorted(first)
    for body in later:
        assert problems(validator, body) == []
        assert body["job_id"] != first[body["input_product_id"]]["job_id"]
        assert body["output_url"] == first[body["input_product_id"]]["output_url"]
        assert body["files"] == first[body["input_product_id"]]["files"]


# -- the example type, on file storage and on S3 ---------------------------------------------
@pytest.fixture
def example(
    engine: Engine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    """The example type (its two products, mask and quicklook) with a process science step
    writing two outputs, one in a sub-folder."""
    monkeypatch.setattr(WorkerJob, "OUTPUT_PRODUCTS_LIST", list(ExampleJob.OUTPUT_PRODUCTS_LIST))
    monkeypatch.setattr(WorkerJob, "SCIENCE_RUNNER", "process")
    monkeypatch.setattr(WorkerJob, "EXTERNAL_DEPENDENCIES", {})
    monkeypatch.setattr(
        WorkerJob,
        "SCIENCE_COMMAND",
        [
            "sh",
            "-c",
            "mkdir {output_dir}/quick && cat {input_dir}/* > {output_dir}/mask.bin "
            "&& printf 'look at %s' {input_product_id} > {output_dir}/quick/look.png",
        ],
    )
    world = World(engine, db_url, tmp_path)
    world.configure(publication_spool=str(tmp_path / "spool"), amqp_url=None)
    yield world
    world.assert_clean()


def _publish(world: World) -> list[dict[str, Any]]:
    """Relay the outbox to the world's spool; the bodies of every line written so far."""
    service = PublicationService(ServiceContext(world.engine, world.settings))
    try:
        assert service.run_cycle().error is None
    finally:
        service.close()
    return [line["body"] for line in _spooled(world.tmp / "spool" / "publications.jsonl")]


def test_the_example_type_s_messages_on_file_storage(
    example: World, validator: Draft202012Validator
):
    world = example
    (world.tmp / "storage" / "in").mkdir(parents=True)
    (world.tmp / "storage" / "in" / "P1.dat").write_bytes(b"band data " * 100)
    job_id = world.job(input_path="in/P1.dat", output_path="out/P1")
    assert world.run(job_id) == EXIT_DO_NOT_RELAUNCH
    bodies = _publish(world)
    assert world.load(job_id).status is S.DONE
    assert [b["product"] for b in bodies] == ["mask", "quicklook"]
    for body in bodies:
        assert problems(validator, body) == []
        assert body["output_url"] == (world.tmp / "storage" / "out" / "P1").as_uri()
        assert [(f["name"], f["size"]) for f in body["files"]] == [
            ("mask.bin", 1000),
            ("quick/look.png", len("look at P1")),
        ]
        assert_findable_on_disk(body)
    assert world.change(job_id, S.PROCESSED).details["checksum"]["bytes"] == 1010

    # A second job of the same product finds the outputs in place: its messages are the
    # same but for the job.
    again = world.job("P1-again", input_path="in/P1.dat", output_path="out/P1")
    assert world.run(again) == EXIT_DO_NOT_RELAUNCH
    later = _publish(world)[len(bodies) :]
    assert [b["job_id"] for b in later] == [again, again]
    for before, after in zip(bodies, later, strict=True):
        assert problems(validator, after) == []
        assert after["files"] == before["files"]
        assert after["output_url"] == before["output_url"]


def test_a_job_with_more_files_than_the_cap_announces_them_through_its_manifest(
    example: World,
    validator: Draft202012Validator,
    max_files: Callable[[int | None], None],
    monkeypatch: pytest.MonkeyPatch,
):
    """Through the worker and the relay: with product_message_max_files 3, a job writing 3
    outputs lists them; one writing 4 lists none, and its manifest_url, followed, lists all
    4 with their sizes and SHA-256."""
    world = example
    max_files(3)
    monkeypatch.setattr(
        WorkerJob,
        "SCIENCE_COMMAND",
        [
            "sh",
            "-c",
            "n=$(cat {input_dir}/*); i=0; while [ $i -lt $n ]; do i=$((i+1)); "
            "printf 'part %s of %s' $i {input_product_id} > {output_dir}/part-$i.txt; done",
        ],
    )
    inputs = world.tmp / "storage" / "in"
    inputs.mkdir(parents=True)
    jobs = {}
    for product, count in (("AT-CAP", 3), ("OVER", 4)):
        (inputs / f"{product}.dat").write_text(str(count))
        jobs[product] = world.job(product, input_path=f"in/{product}.dat", output_path=product)
        assert world.run(jobs[product]) == EXIT_DO_NOT_RELAUNCH
    bodies = _publish(world)
    assert {world.load(job_id).status for job_id in jobs.values()} == {S.DONE}
    assert len(bodies) == 4  # two products each
    for body in bodies:
        assert problems(validator, body) == [], body
    at_cap = [b for b in bodies if b["input_product_id"] == "AT-CAP"]
    for body in at_cap:
        assert [f["name"] for f in body["files"]] == [f"part-{i}.txt" for i in (1, 2, 3)]
        assert_findable_on_disk(body)

    over = [b for b in bodies if b["input_product_id"] == "OVER"]
    folder = world.tmp / "storage" / "OVER"
    for body in over:
        assert body["output_url"] == folder.as_uri()
        assert (body["files"], body["files_listed"], body["files_total"]) == (None, False, 4)
        assert body["manifest_url"] == (folder / MANIFEST).as_uri()
        manifest = json.loads(_path(body["manifest_url"]).read_text())
        names = [f"part-{i}.txt" for i in (1, 2, 3, 4)]
        assert sorted(manifest["files"]) == names
        for name in names:
            data = (folder / name).read_bytes()
            assert data == f"part {name[5]} of OVER".encode()
            assert (manifest["files"][name], manifest["sha256"][name]) == (len(data), _sha256(data))


def test_an_old_manifest_without_checksums_still_gives_a_valid_message(
    example: World, validator: Draft202012Validator
):
    """Outputs an earlier joblife uploaded (its manifest lists sizes only) are announced
    with a null sha256, as the schema allows for them."""
    world = example
    folder = world.tmp / "storage" / "out" / "P1"
    folder.mkdir(parents=True)
    (folder / "mask.bin").write_bytes(b"old")
    (folder / MANIFEST).write_text(json.dumps({"files": {"mask.bin": 3}}))
    (world.tmp / "storage" / "in").mkdir(parents=True)
    (world.tmp / "storage" / "in" / "P1.dat").write_bytes(b"new")
    job_id = world.job(input_path="in/P1.dat", output_path="out/P1")
    assert world.run(job_id) == EXIT_DO_NOT_RELAUNCH
    for body in _publish(world):
        assert problems(validator, body) == []
        assert body["files"] == [
            {"name": "mask.bin", "size": 3, "sha256": None, "url": (folder / "mask.bin").as_uri()}
        ]


def test_the_example_type_s_messages_on_s3(
    example: World, s3_bucket: S3Bucket, validator: Draft202012Validator
):
    world = example
    world.configure(storage_url=s3_bucket.url("data"), s3_endpoint_url=s3_bucket.endpoint)
    s3_bucket.put("data/inputs/P1/band1.txt", b"band 1\n")
    job_id = world.job(input_path="inputs/P1/")
    assert world.run(job_id) == EXIT_DO_NOT_RELAUNCH
    bodies = _publish(world)
    assert len(bodies) == 2
    prefix = f"s3://{s3_bucket.name}/data/worker_test/P1"
    for body in bodies:
        assert problems(validator, body) == []
        assert body["output_url"] == prefix
        for file in body["files"]:
            assert file["url"] == f"{prefix}/{file['name']}"
            stored = s3_bucket.get(f"data/worker_test/P1/{file['name']}")
            assert (len(stored), _sha256(stored)) == (file["size"], file["sha256"])
        assert [f["name"] for f in body["files"]] == ["mask.bin", "quick/look.png"]
        assert body["manifest_url"] == f"{prefix}/{MANIFEST}"
        assert json.loads(s3_bucket.get(f"data/worker_test/P1/{MANIFEST}"))["sha256"] == {
            f["name"]: f["sha256"] for f in body["files"]
        }


def test_the_partner_guide_s_example_message_matches_the_schema(
    validator: Draft202012Validator,
):
    guide = (SCHEMA.parent / "partner-guide.md").read_text()
    section = guide.split("### The product message", 1)[1]
    example = json.loads(section.split("```json\n", 1)[1].split("```", 1)[0])
    assert problems(validator, example) == []
    # Every field of the default message (the required ones and the file cap's), but
    # tile_series' own.
    assert set(example) == set(validator.schema["properties"]) - {"measurement_date"}


# -- the partner guide's worked example --------------------------------------------------------
@pytest.fixture(scope="module")
def ndvi_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ndvi example package pip-installed on its own, as tests/test_partner_example.py
    installs it."""
    target = tmp_path_factory.mktemp("ndvi-site")
    result = subprocess.run(
        [*PIP_INSTALL, "--no-deps", "--target", str(target), str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def test_the_worked_example_s_messages_match_the_schema(
    ndvi_site: Path, db_url: str, engine: Engine, tmp_path: Path, validator: Draft202012Validator
):
    """The partner's case: a product, and a malformed one whose failure message quotes the
    science step's own words."""
    env = _environment(db_url, tmp_path, ndvi_site)
    _joblife(env, "db", "upgrade")
    storage = tmp_path / "storage"
    _write_product(storage, "GREEN", np.array([[10, 50]]), np.array([[90, 50]]))
    _write_product(storage, "BROKEN", np.zeros((2, 2)), np.zeros((3, 3)))
    deadline = time.monotonic() + 90
    while True:
        _joblife(env, "run", "--once")
        jobs = _jobs(engine)
        if len(jobs) == 2 and all(status in FINAL for status, _ in jobs.values()):
            break
        assert time.monotonic() < deadline, f"ndvi jobs not final: {jobs}"
        time.sleep(0.3)
    assert jobs["GREEN"][0] is S.DONE, jobs
    assert jobs["BROKEN"] == (
        S.INTERNAL_ERROR,
        "InternalJobError: science step failed with return code 4: "
        "python -m joblife_ndvi.science: band shapes differ: (2, 2) and (3, 3)",
    )
    [body] = [line["body"] for line in _spooled(tmp_path / "spool" / "publications.jsonl")]
    assert problems(validator, body) == []
    assert body["output_url"] == (storage / "ndvi" / "GREEN").as_uri()
    assert [f["name"] for f in body["files"]] == ["ndvi.npy"]
    assert_findable_on_disk(body)
