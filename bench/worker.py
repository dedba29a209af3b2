"""Benchmark of the worker runtime (issue 5): its own overhead around a no-op science step,
and its S3 transfer throughput against a plain sequential boto3 loop.

Run: ``python bench/worker.py`` (``--help`` for the options), with podman's Docker API at
``DOCKER_HOST`` (``eval "$(bash scripts/services.sh)"``) and PostgreSQL at the admin URL.
Not a test: it prints figures; ``docs/benchmarks.md`` records a run.

Set-up: moto's S3 server in a process of its own (``moto_server``, loopback, free port), a
scratch database migrated with joblife's migrations (dropped at the end), the busybox test
image imported into the engine (removed at the end), ``--files`` inputs of ``--size-mb`` MB
of random bytes uploaded under one prefix.

1. **Worker, no-op science step** (``--jobs`` runs, default 3): ``run_worker`` of a job whose
   type takes the whole prefix as input and runs, in a container, a science step that only
   copies its inputs into ``output/`` (a hard link would be refused): so every input is downloaded
   from and uploaded back to S3. Figures from the job's ``processed`` status details:
   download and upload seconds; the container's create, start → end of wait (the runner's
   ``duration``, the ``processing`` seconds) and remove seconds, each timed by
   ``DockerRunner``; the worker's wall time from ``run_worker`` call to return; and what
   is left, the worker's own overhead (engine client, ping and image look-up, status
   changes, work dir, manifest, logs upload).
2. **Transfer throughput**: the same files uploaded by ``S3Storage.upload_many`` (joblife's
   settings: ``storage_transfer_concurrency`` files at once, multipart from 16 MiB) and by
   a plain loop of ``client.upload_file`` calls (one file after the other, boto3's default
   transfer settings), each ``--repeat`` times to fresh keys; the median of each, MB/s, and
   the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchkit import add_database_url_argument, bench_database, print_table, sqlalchemy_url
from sqlalchemy import select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test image's rootfs

import boto3
import docker
from joblife.config import Settings
from joblife.db.engine import create_joblife_engine
from joblife.db.migrate import upgrade
from joblife.db.status import set_job_status
from joblife.db.worker_doors import issue_attempt_secret
from joblife.jobtypes.test_job import TestJob
from joblife.model import Job, JobStatus, JobStatusChange, JobTemplate
from joblife.storage import Transfer, open_storage
from joblife.worker.runner import run_worker

from tests.support.containers import _busybox_rootfs

MB = 1_000_000
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class NoOpScienceJob(TestJob):
    """A ``test`` job (its table) with the JobTemplate default steps and a no-op science
    step in a container."""

    __mapper_args__ = {"polymorphic_identity": "bench_worker"}
    JOB_NAME = "bench_worker"
    OUTPUT_PRODUCTS_LIST = []  # nothing to publish: done after processed
    SCIENCE_RUNNER = "docker"
    # A copy, not a hard link: the worker uploads only files with one link (a hard link
    # could name a file outside the work dir).
    SCIENCE_COMMAND = ["sh", "-c", "cp {input_dir}/* {output_dir}/"]
    job_pre_processing = JobTemplate.job_pre_processing
    job_processing = JobTemplate.job_processing
    job_post_processing = JobTemplate.job_post_processing
    generated_a_product = JobTemplate.generated_a_product


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server in its own process (not this one's GIL), stopped at the end."""
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)


@contextmanager
def busybox_image(client: docker.DockerClient) -> Iterator[str]:
    repository = f"localhost/joblife-bench-busybox-{uuid.uuid4().hex[:8]}"
    reply = client.api.import_image_from_data(
        _busybox_rootfs(), repository=repository, tag="latest", changes=["ENV PATH=/bin"]
    )
    import json

    client.images.get(json.loads(reply.splitlines()[-1])["id"]).tag(repository, "latest")
    try:
        yield f"{repository}:latest"
    finally:
        client.images.remove(f"{repository}:latest", force=True)


def _queue_job(engine, settings: Settings, product: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """A queued job at attempt 1, and that attempt's secret."""
    with Session(engine) as session:
        job = NoOpScienceJob(input_product_id=product, input_path="inputs/", output_path=None)
        session.add(job)
        session.commit()
        for status in (JobStatus.READY, JobStatus.QUEUED):
            set_job_status(session, job.id, status)
        session.execute(update(Job).where(Job.id == job.id).values(attempt=1))
        secret = issue_attempt_secret(session, settings, job.id)  # as dispatch does
        session.commit()
        return job.id, secret


def bench_worker(args: argparse.Namespace, settings: Settings, engine) -> list[tuple]:  # type: ignore[no-untyped-def]
    rows = []
    names = ("wall", "download", "create", "processing", "remove", "upload", "overhead")
    figures: dict[str, list[float]] = {k: [] for k in names}
    for run in range(args.jobs):
        job_id, secret = _queue_job(engine, settings, f"B{run:03d}")
        start = time.perf_counter()
        code = run_worker(job_id, 1, settings, attempt_secret=secret)
        wall = time.perf_counter() - start
        with Session(engine) as session:
            status = session.get(Job, job_id).status
            change = session.scalars(
                select(JobStatusChange).where(
                    JobStatusChange.job_id == job_id,
                    JobStatusChange.status == int(JobStatus.PROCESSED),
                )
            ).one_or_none()
        if code != 0 or status is not JobStatus.DONE or change is None:
            raise RuntimeError(f"bench job {job_id} ended {status} (exit {code})")
        d = change.details
        times = {
            "wall": wall,
            "download": d["download"]["seconds"],
            "create": d["processing"]["create_seconds"],
            "processing": d["processing"]["seconds"],
            "remove": d["processing"]["remove_seconds"],
            "upload": d["upload"]["seconds"],
        }
        times["overhead"] = wall - sum(v for k, v in times.items() if k != "wall")
        for name, value in times.items():
            figures[name].append(value)
        assert d["download"]["bytes"] == d["upload"]["bytes"] == args.files * args.size_mb * MB
    total_mb = args.files * args.size_mb
    med = {k: statistics.median(v) for k, v in figures.items()}
    rows.append(("worker wall time per job (median)", f"{med['wall']:.2f} s", "", ""))
    rows.append(
        (
            f"  download {args.files} x {args.size_mb} MB",
            f"{med['download']:.2f} s ({total_mb / med['download']:.0f} MB/s)",
            "",
            "",
        )
    )
    rows.append(("  container create", f"{med['create']:.2f} s", "", ""))
    rows.append(("  container start -> end of wait", f"{med['processing']:.2f} s", "", ""))
    rows.append(("  container remove", f"{med['remove']:.2f} s", "", ""))
    rows.append(
        (
            f"  upload {args.files} x {args.size_mb} MB",
            f"{med['upload']:.2f} s ({total_mb / med['upload']:.0f} MB/s)",
            "",
            "",
        )
    )
    rows.append(("  worker's own overhead (the rest)", f"{med['overhead']:.2f} s", "", ""))
    return rows


def bench_transfer(args: argparse.Namespace, settings: Settings, files: list[Path]) -> list[tuple]:
    storage = open_storage(settings=settings)
    client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name="us-east-1")
    bucket = settings.storage_url.split("/")[2]  # type: ignore[union-attr]
    ours, plain = [], []
    for r in range(args.repeat):
        start = time.perf_counter()
        storage.upload_many([Transfer(f"joblife-{r}/{p.name}", p) for p in files])
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        for path in files:
            client.upload_file(str(path), bucket, f"plain-{r}/{path.name}")
        plain.append(time.perf_counter() - start)
    total_mb = sum(p.stat().st_size for p in files) / MB
    o, p = statistics.median(ours), statistics.median(plain)
    return [
        ("upload_many (joblife S3Storage)", f"{o:.2f} s ({total_mb / o:.0f} MB/s)", "", ""),
        ("plain sequential boto3 loop", f"{p:.2f} s ({total_mb / p:.0f} MB/s)", "", ""),
        ("ratio (plain / joblife)", f"{p / o:.2f}x", "> 1", "met" if p / o > 1 else "not met"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_database_url_argument(parser)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--size-mb", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()
    docker_host = os.environ.get("DOCKER_HOST")
    if not docker_host:
        sys.exit('DOCKER_HOST is not set: eval "$(bash scripts/services.sh)" first')
    os.environ.update(CREDENTIALS)
    client = docker.DockerClient(base_url=docker_host)
    tmp = Path(tempfile.mkdtemp(prefix="joblife-bench-worker-"))
    try:
        with (
            moto_server() as endpoint,
            busybox_image(client) as image,
            bench_database(make_url(args.database_url), args.keep) as url,
        ):
            NoOpScienceJob.SCIENCE_IMAGE = image
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
            settings = Settings(
                database_url=sqlalchemy_url(url),
                data_dir=tmp / "data",
                storage_url=f"s3://{bucket}/data",
                s3_endpoint_url=endpoint,
                container_engine_url=docker_host,
            )
            engine = create_joblife_engine(sqlalchemy_url(url))
            upgrade(engine)
            files = []
            for i in range(args.files):
                path = tmp / "inputs" / f"input-{i:02d}.bin"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(os.urandom(args.size_mb * MB))
                files.append(path)
            open_storage(settings=settings).upload_many(
                [Transfer(f"inputs/{p.name}", p) for p in files]
            )
            rows = bench_worker(args, settings, engine)
            rows += bench_transfer(args, settings, files)
            engine.dispose()
        print_table(rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        client.close()


if __name__ == "__main__":
    main()
