"""Issue 13, items 5 (discovery half), 6 and 7: untrusted product names and metadata at
creation, untrusted science output at the status door.

- a product whose key is unsafe is a cancelled job whose first history row says why;
- a product with a value that cannot be stored (a name that is not UTF-8, a NUL in its
  metadata) is one row of rejected_products, logged and counted once, and every other
  product is created (real file storage, the real creation cycle);
- every text through the status door is stored (NUL and undecodable bytes replaced,
  capped), and a failure to record a worker's failure is itself recorded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from joblife.config import Settings, get_settings
from joblife.db.status import set_job_status
from joblife.db.text import (
    DETAILS_TEXT_MAX_BYTES,
    MESSAGE_MAX_BYTES,
    storable_details,
    storable_text,
    why_unstorable,
)
from joblife.db.worker_doors import attempt_secret, attempt_secret_key, store_attempt_secrets
from joblife.lifecycle import creation
from joblife.lifecycle.common import ServiceContext
from joblife.lifecycle.creation import (
    CreationReport,
    create_jobs,
    insert_discovered,
    record_rejections,
    screen_discovered,
)
from joblife.model import Job, JobStatus, JobStatusChange, JobsToCreate, RejectedProduct
from joblife.ops.metrics import PROCESS_REGISTRY
from joblife.worker.context import WorkerContext
from joblife.worker.runner import EXIT_DO_NOT_RELAUNCH, run_worker
from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session

from tests.support.example_type import ExampleJob
from tests.support.factories import make_jobs
from tests.test_roles import denied, login_as, run

S = JobStatus
NOT_UTF8_NAME = b"rec-\xff\xfe.h5"  # a file name no decoder accepts as UTF-8


def _rejected_count(job_type: str, reason: str) -> float:
    value = PROCESS_REGISTRY.get_sample_value(
        "joblife_rejected_products_total", {"job_type": job_type, "reason": reason}
    )
    return value or 0.0


def _rejected(engine: Engine, job_type: str) -> list[RejectedProduct]:
    with Session(engine) as session:
        return list(
            session.scalars(
                select(RejectedProduct)
                .where(RejectedProduct.job_type == job_type)
                .order_by(RejectedProduct.name)
            )
        )


def _jobs(engine: Engine, job_type: str) -> dict[str, tuple[JobStatus, str | None]]:
    """Product id -> (status, first history message) of the type's jobs."""
    with Session(engine) as session:
        rows = session.execute(
            select(Job.input_product_id, Job.status_id, JobStatusChange.message)
            .join(JobStatusChange, JobStatusChange.job_id == Job.id)
            .where(Job.job_type == job_type, JobStatusChange.previous_status.is_(None))
        ).all()
    return {row[0]: (JobStatus(row[1]), row[2]) for row in rows}


# -- the validators --------------------------------------------------------------------------
def test_why_unstorable_looks_into_every_text_of_a_value() -> None:
    assert why_unstorable("plain ünïcødé \t\n\x01") is None  # storable control characters
    assert why_unstorable(None) is None and why_unstorable(3) is None
    assert why_unstorable("a\x00b") == "a NUL character"
    assert why_unstorable(os.fsdecode(NOT_UTF8_NAME)) == "a byte that is not valid UTF-8"
    assert why_unstorable({"ok": ["x", {"deep": "a\x00"}]}) == "a NUL character"
    assert why_unstorable({"k\udcff": 1}) == "a byte that is not valid UTF-8"  # a key
    assert why_unstorable(["fine", ("also", 2)]) is None


def test_storable_text_replaces_and_caps() -> None:
    assert storable_text("a\x00b\udcffc") == "a\ufffdb\ufffdc"
    assert storable_text(b"x\xffy") == "x\ufffdy"
    long = "é" * 5000  # 10,000 bytes
    capped = storable_text(long, 4096)
    assert len(capped.encode()) <= 4096 and capped.startswith("éé")
    assert "cut: 10000 bytes" in capped
    assert storable_text("short", 4096) == "short"
    details = storable_details(
        {"out\udcff.txt": {"k\x00": ["v\udcfe", b"\xff", float("nan"), 7, None]}}
    )
    assert details == {"out\ufffd.txt": {"k\ufffd": ["v\ufffd", "\ufffd", "nan", 7, None]}}


def test_screening_sorts_a_discovery() -> None:
    now = datetime.now(UTC)

    def job(product: str, path: str | None = None, **fields: Any) -> ExampleJob:
        return ExampleJob(
            input_product_id=product, input_path=path, input_publication_date=now, **fields
        )

    good = [job("A", "in/a.h5"), job("F", "in/folder/"), job("U", "s3://bucket/in/u.h5")]
    unsafe = [
        job("dotdot", "in/x/../good.h5"),
        job("empty", "in//abs.h5"),
        job("lead", "/in/lead.h5"),
        job("ctl", "in/a\x07.h5"),
        job("url", "s3://bucket/in/../x.h5"),
        job("out", "in/o.h5", output_path="out/../elsewhere/"),
    ]
    unstorable = [job("nul", "in/n.h5", band="b\x00"), job(os.fsdecode(NOT_UTF8_NAME), "in/b.h5")]
    screened = screen_discovered(ExampleJob, [*good, *unsafe, *unstorable], [])
    assert screened.to_create == good
    assert screened.to_cancel == unsafe
    by_name = {r.name: r for r in screened.rejected}
    assert len(by_name) == len(unsafe) + len(unstorable)
    assert by_name["'dotdot'"].reason_class == "unsafe_key"
    assert "'in/x/../good.h5'" in by_name["'dotdot'"].reason
    assert "'..' path segment" in by_name["'dotdot'"].reason
    assert "'in/a\\x07.h5'" in by_name["'ctl'"].reason  # the raw name, escaped
    assert "output_path" in by_name["'out'"].reason
    assert by_name["'nul'"].reason_class == "nul" and "band 'b\\x00'" in by_name["'nul'"].reason
    assert by_name["'rec-\\udcff\\udcfe.h5'"].reason_class == "not_utf8"
    assert screened.messages[("dotdot", "")].startswith("refused at creation: input_path")


# -- item 5: an unsafe key is a cancelled job that says why ----------------------------------
@pytest.fixture
def context(engine: Engine, joblife_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("JOBLIFE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JOBLIFE_STORAGE_URL", (tmp_path / "storage").as_uri())
    get_settings.cache_clear()
    yield ServiceContext(engine, get_settings())
    get_settings.cache_clear()


def _cycle(context: ServiceContext, job_type: str, now: datetime) -> CreationReport:
    [report] = [r for r in create_jobs(context, now) if r.job_type == job_type]
    assert report.error is None, report.error
    return report


def test_unsafe_keys_become_cancelled_jobs_naming_the_reason(
    context: ServiceContext, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    products = [
        ("A", "in/a.h5"),
        ("dotdot", "in/x/../good.h5"),
        ("empty", "in//abs.h5"),
        ("lead", "/in/lead.h5"),
        ("ctl", "in/bell\x07.h5"),
        ("B", "in/b.h5"),
    ]

    def discover(cls: type[ExampleJob], start: datetime, end: datetime) -> JobsToCreate:
        return JobsToCreate(
            to_create=[
                cls(
                    input_product_id=product,
                    input_path=path,
                    input_publication_date=now - timedelta(minutes=10 - index),
                )
                for index, (product, path) in enumerate(products)
            ]
        )

    monkeypatch.setattr(ExampleJob, "get_jobs_to_create", classmethod(discover))
    report = _cycle(context, "example", now)
    assert (report.inserted, report.cancelled, report.rejected) == (2, 4, 4)
    jobs = _jobs(engine, "example")
    assert jobs["A"] == (S.INITIALIZED, "created") and jobs["B"] == (S.INITIALIZED, "created")
    status, message = jobs["dotdot"]
    assert status is S.CANCELLED
    assert message == (
        "refused at creation: input_path: unsafe storage key 'in/x/../good.h5': "
        "has a '..' path segment"
    )
    assert "'in//abs.h5'" in jobs["empty"][1] and "empty path segment" in jobs["empty"][1]
    assert "starts with '/'" in jobs["lead"][1]
    assert "'in/bell\\x07.h5'" in jobs["ctl"][1] and "control character" in jobs["ctl"][1]
    assert {r.name for r in _rejected(engine, "example")} == {
        "'dotdot'",
        "'empty'",
        "'lead'",
        "'ctl'",
    }
    # Rediscovered: nothing new, the same four rows, seen twice.
    again = _cycle(context, "example", now + timedelta(seconds=1))
    assert (again.inserted, again.cancelled) == (0, 0)
    assert {r.times_seen for r in _rejected(engine, "example")} == {2}


def test_a_product_name_too_long_for_the_index_is_rejected_alone(
    context: ServiceContext, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name or reprocessing context over 1,024 bytes: the unique index on the natural
    key refuses an entry over 2,704 bytes, which failed the whole insert range (every new
    product of the type, at every cycle). It is rejected alone; the others are created."""
    now = datetime.now(UTC).replace(microsecond=0)
    # Incompressible (PostgreSQL compresses an index entry before it measures it).
    long_name, long_context = (
        "".join(hashlib.sha512(f"{s}{i}".encode()).hexdigest() for i in range(40)) for s in "nc"
    )
    products = [("A", ""), (long_name, ""), ("C", long_context), ("B", "")]

    def discover(cls: type[ExampleJob], start: datetime, end: datetime) -> JobsToCreate:
        return JobsToCreate(
            to_create=[
                cls(
                    input_product_id=product,
                    reprocessing_context=context_,
                    input_publication_date=now - timedelta(minutes=10 - index),
                )
                for index, (product, context_) in enumerate(products)
            ]
        )

    monkeypatch.setattr(ExampleJob, "get_jobs_to_create", classmethod(discover))
    report = _cycle(context, "example", now)
    assert (report.inserted, report.cancelled, report.rejected) == (2, 0, 2)
    assert set(_jobs(engine, "example")) == {"A", "B"}
    rejected = _rejected(engine, "example")
    assert len(rejected) == 2
    assert all("longer than 1024 bytes" in r.reason for r in rejected), rejected


# -- item 6: one poison product never stops a job type ---------------------------------------
def _touch(path: Path | bytes, modified: datetime) -> None:
    with open(path, "wb") as file:
        file.write(b"not read at creation")
    os.utime(path, (modified.timestamp(), modified.timestamp()))


def test_a_name_that_is_not_utf8_is_rejected_and_the_others_are_created(
    context: ServiceContext,
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = tmp_path / "storage" / "in" / "h5"
    folder.mkdir(parents=True)
    monkeypatch.setenv("JOBLIFE_H5REPACK_INPUT_PREFIX", "in/h5")
    get_settings.cache_clear()
    context = ServiceContext(engine, get_settings())
    now = datetime.now(UTC).replace(microsecond=0)
    _touch(folder / "good1.h5", now - timedelta(seconds=60))
    _touch(folder / "good2.h5", now - timedelta(seconds=50))
    _touch(os.fsencode(folder) + b"/" + NOT_UTF8_NAME, now - timedelta(seconds=30))
    counted = _rejected_count("h5repack", "not_utf8")
    caplog.set_level(logging.WARNING, logger="joblife")

    first = _cycle(context, "h5repack", now)
    assert (first.discovered, first.inserted, first.rejected) == (3, 2, 1)
    assert set(_jobs(engine, "h5repack")) == {"good1.h5", "good2.h5"}
    # A good product published after the rejected one is created by the next cycle: the
    # rejected one holds nothing back (and, rediscovered, stays one row).
    _touch(folder / "good3.h5", now - timedelta(seconds=10))
    second = _cycle(context, "h5repack", now + timedelta(seconds=1))
    assert (second.inserted, second.rejected) == (1, 1)
    assert set(_jobs(engine, "h5repack")) == {"good1.h5", "good2.h5", "good3.h5"}
    [row] = _rejected(engine, "h5repack")
    assert row.name == "'rec-\\udcff\\udcfe.h5'"
    assert (row.reason_class, row.times_seen) == ("not_utf8", 2)
    assert "not valid UTF-8" in row.reason and row.first_seen < row.last_seen
    assert _rejected_count("h5repack", "not_utf8") == counted + 1  # counted once
    logged = [r for r in caplog.records if "rec-\\udcff\\udcfe.h5" in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.WARNING  # logged once


def test_a_nul_in_tile_metadata_is_rejected_and_the_other_tiles_are_created(
    context: ServiceContext, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    root = tmp_path / "storage" / "in" / "s2"
    for index, (product, tile) in enumerate(
        [("T1", "31TCH"), ("T2", "31T\x00CH"), ("T3", "31TCJ")]
    ):
        (root / product).mkdir(parents=True)
        metadata = {
            "tile_id": tile,
            "measurement_date": (now - timedelta(days=1)).isoformat(),
            "publication_date": (now - timedelta(minutes=5 - index)).isoformat(),
        }
        (root / product / "metadata.json").write_text(json.dumps(metadata))
    monkeypatch.setenv("JOBLIFE_TILE_SERIES_INPUT_PREFIX", "in/s2")
    get_settings.cache_clear()
    context = ServiceContext(engine, get_settings())
    report = _cycle(context, "tile_series", now)
    assert (report.inserted, report.rejected) == (2, 1)
    assert set(_jobs(engine, "tile_series")) == {"T1", "T3"}
    [row] = _rejected(engine, "tile_series")
    assert (row.name, row.reason_class) == ("'T2'", "nul")
    assert row.reason == "tile_id '31T\\x00CH' contains a NUL character"


def test_the_service_role_records_refused_products(
    engine: Engine, admin_engine: Engine, db_url: str
) -> None:
    """Creation as the least-privilege service role: the refused product's row and the
    cancelled job's message; the other roles cannot write rejected_products."""
    now = datetime.now(UTC)
    jobs = [
        ExampleJob(input_product_id="ok", input_path="in/ok", input_publication_date=now),
        ExampleJob(input_product_id="bad", input_path="in/../x", input_publication_date=now),
    ]
    screened = screen_discovered(ExampleJob, jobs, [])
    with login_as(admin_engine, db_url, "joblife_service") as service:
        assert record_rejections(service, "example", screened.rejected, now) != []
        assert record_rejections(service, "example", screened.rejected, now) == []  # known
        counts = insert_discovered(
            service,
            ExampleJob,
            screened.to_create,
            screened.to_cancel,
            now,
            messages=screened.messages,
        )
        assert counts == {S.INITIALIZED: 1, S.CANCELLED: 1}
        denied(service, "DELETE FROM rejected_products")
    assert _jobs(engine, "example")["bad"][1].startswith("refused at creation: input_path")
    [row] = _rejected(engine, "example")
    assert row.times_seen == 2
    for role in ("joblife_worker", "joblife_operator"):
        with login_as(admin_engine, db_url, role) as other:
            assert run(other, "SELECT count(*) FROM rejected_products") == [(1,)]
            denied(other, "UPDATE rejected_products SET reason = 'x'")
            denied(
                other,
                "SELECT record_rejected_products('x', ARRAY['n'], ARRAY['nul'], ARRAY['r'], now())",
            )


def test_creation_messages_do_not_leak_to_other_jobs_or_batches(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A created job with the same natural key as a message keeps 'created'; batches after
    the one with messages get none (two ranges in parallel, batches of two)."""
    monkeypatch.setattr(creation, "INSERT_BATCH", 2)
    now = datetime.now(UTC)
    to_create = [
        ExampleJob(input_product_id=f"C{i}", input_publication_date=now + timedelta(seconds=i))
        for i in range(4)
    ]  # ranges [C0, C1] and [X, C2, C3], the latter in batches [X, C2] and [C3]
    to_cancel = [
        ExampleJob(input_product_id="X", input_publication_date=now + timedelta(seconds=1.5))
    ]
    messages = {("X", ""): "refused: x", ("C0", ""): "never used: C0 is created"}
    counts = insert_discovered(engine, ExampleJob, to_create, to_cancel, now, 2, None, messages)
    assert counts == {S.INITIALIZED: 4, S.CANCELLED: 1}  # over two ranges of batches of 2
    jobs = _jobs(engine, "example")
    assert jobs["X"] == (S.CANCELLED, "refused: x")
    assert {jobs[f"C{i}"] for i in range(4)} == {(S.INITIALIZED, "created")}


# -- item 7: text from science output is always storable -------------------------------------
def test_the_status_door_stores_any_text(session: Session, engine: Engine) -> None:
    (job,) = make_jobs(session, 1)
    details = {
        "out\udcff.txt": {"k\x00": ["v\udcfe", "tail \x00 line"]},
        "big": "x" * (DETAILS_TEXT_MAX_BYTES + 10),
    }
    set_job_status(session, job.id, S.READY, message="m\x00" + "é" * 4000, details=details)
    session.commit()
    change = session.scalars(
        select(JobStatusChange)
        .where(JobStatusChange.job_id == job.id)
        .order_by(JobStatusChange.id.desc())
        .limit(1)
    ).one()
    assert change.message.startswith("m\ufffdéé")
    assert len(change.message.encode()) <= MESSAGE_MAX_BYTES
    assert change.details["out\ufffd.txt"] == {"k\ufffd": ["v\ufffd", "tail \ufffd line"]}
    assert len(change.details["big"].encode()) <= DETAILS_TEXT_MAX_BYTES
    assert details["out\udcff.txt"]["k\x00"] == ["v\udcfe", "tail \x00 line"]  # untouched


class TrustWorkerJob(ExampleJob):
    """The example type with a science step run as a process (rows in example_jobs)."""

    __mapper_args__ = {"polymorphic_identity": "trust_worker"}
    JOB_NAME = "trust_worker"
    OUTPUT_PRODUCTS_LIST = []
    SCIENCE_RUNNER = "process"


@pytest.fixture
def worker_settings(db_url: str, tmp_path: Path) -> Iterator[Settings]:
    (tmp_path / "storage" / "in").mkdir(parents=True)
    (tmp_path / "storage" / "in" / "x").write_bytes(b"x")
    yield Settings(
        database_url=db_url,
        data_dir=tmp_path / "data",
        work_root=tmp_path / "work",
        storage_url=(tmp_path / "storage").as_uri(),
        heartbeat_interval_seconds=1,
    )


def _queued_job(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch, script: str
) -> int:
    """A job queued for attempt 1 (with its attempt secret, as the dispatcher would)."""
    monkeypatch.setattr(TrustWorkerJob, "SCIENCE_COMMAND", ["sh", "-c", script])
    with Session(engine) as session:
        job = TrustWorkerJob(input_product_id="P1", input_path="in/x")
        session.add(job)
        session.commit()
        for status in (S.READY, S.QUEUED):
            set_job_status(session, job.id, status)
        secret = attempt_secret(attempt_secret_key(settings), job.id, 1, job.unique_id)
        session.execute(update(Job).where(Job.id == job.id).values(attempt=1))
        store_attempt_secrets(session, {job.id: secret})
        session.commit()
        return job.id


def _last_change(engine: Engine, job_id: int) -> tuple[JobStatus, JobStatusChange]:
    with Session(engine) as session:
        change = session.scalars(
            select(JobStatusChange)
            .where(JobStatusChange.job_id == job_id)
            .order_by(JobStatusChange.id.desc())
            .limit(1)
        ).one()
        status = session.scalar(select(Job.status_id).where(Job.id == job_id))
        return JobStatus(status), change


def test_science_output_with_nul_and_bad_utf8_is_stored_with_the_failure(
    engine: Engine, worker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _queued_job(
        engine,
        worker_settings,
        monkeypatch,
        r"echo starting; printf 'bad \000 nul\nbad \377\376 bytes\n'; exit 3",
    )
    assert run_worker(job_id, 1, worker_settings) == EXIT_DO_NOT_RELAUNCH
    status, change = _last_change(engine, job_id)
    assert status is S.INTERNAL_ERROR, change.message
    assert "return code 3" in change.message
    starting, nul, undecodable = change.details["log_tail"][-3:]
    assert (starting, nul) == ("starting", "bad \ufffd nul")
    assert undecodable.startswith("bad ") and undecodable.endswith(" bytes")


def test_a_failure_to_record_a_failure_is_recorded_with_the_original_reason(
    engine: Engine, worker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _queued_job(engine, worker_settings, monkeypatch, "echo about to fail; exit 3")
    # Details that cannot be stored at all (no JSON for this object): the first recording
    # fails, the second records the error with minimal details.
    monkeypatch.setattr(WorkerContext, "details", lambda self: {"figure": object()})
    assert run_worker(job_id, 1, worker_settings) == EXIT_DO_NOT_RELAUNCH
    status, change = _last_change(engine, job_id)
    assert status is S.INTERNAL_ERROR
    assert "return code 3" in change.message
    assert change.details["error"]["message"] == change.message
    assert "not JSON serializable" in change.details["recording_error"]
    assert change.details["attempt"] == 1


def test_with_the_database_refusing_the_first_recording_the_error_is_still_recorded(
    engine: Engine, worker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database itself refuses the first recording (a check violated for the occasion),
    not the details' serialisation."""
    job_id = _queued_job(engine, worker_settings, monkeypatch, "exit 3")
    with engine.begin() as conn:
        conn.execute(
            text(
                "ALTER TABLE job_status_changes ADD CONSTRAINT no_durations "
                "CHECK (NOT coalesce(details ? 'durations', false))"
            )
        )
    assert run_worker(job_id, 1, worker_settings) == EXIT_DO_NOT_RELAUNCH
    status, change = _last_change(engine, job_id)
    assert status is S.INTERNAL_ERROR
    assert "no_durations" in change.details["recording_error"]
    assert change.details["error"]["class"] in change.message
