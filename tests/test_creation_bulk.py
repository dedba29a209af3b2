"""The bulk insert of discovered jobs (COPY into staging tables, then INSERT ... SELECT)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from joblife.db.copy import copy_text
from joblife.jobtypes.test_job import TestJob
from joblife.lifecycle import creation
from joblife.lifecycle.creation import insert_jobs
from joblife.model import JobStatus, Priority
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from tests.support.example_type import ExampleJob

AWKWARD = "tab\there, new\nline, back\\slash \\N, cr\r, ünïcødé, 'quote' \"dq\""


def test_copy_text_escapes_and_nulls() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert copy_text([(None, True, 3, "a\tb\\c\nd", when, {"k": 1})]) == (
        '\\N\tt\t3\ta\\tb\\\\c\\nd\t2026-01-02T03:04:05+00:00\t{"k": 1}\n'
    )


def test_awkward_values_round_trip(session: Session) -> None:
    published = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    job = ExampleJob(
        input_product_id=AWKWARD,
        name=AWKWARD,
        tile_id="31TCH",
        input_path="s3://bucket/a b/c",
        input_publication_date=published,
        priority=Priority.REPROCESSING,
        reprocessing_context="v2",
        band=AWKWARD,
        resolution_m=20,
    )
    assert insert_jobs(session, ExampleJob, [job], JobStatus.INITIALIZED) == 1
    session.commit()
    stored = session.scalars(select(ExampleJob)).one()
    assert (stored.input_product_id, stored.name, stored.band) == (AWKWARD, AWKWARD, AWKWARD)
    assert stored.input_publication_date == published
    assert (stored.priority, stored.reprocessing_context, stored.resolution_m) == (3, "v2", 20)
    assert stored.status is JobStatus.INITIALIZED
    assert stored.worker_flavor == "small" and stored.max_attempts == ExampleJob.MAX_ATTEMPTS
    assert stored.unique_id is not None


def test_batches_duplicates_and_known_products(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(creation, "INSERT_BATCH", 3)
    insert_jobs(session, ExampleJob, [ExampleJob(input_product_id="P02")], JobStatus.INITIALIZED)
    session.commit()
    ids = ["P00", "P01", "P01", "P02", "P03", "P04", "P05", "P05", "P06", "P07"]
    jobs = [ExampleJob(input_product_id=i, band=f"b{n}") for n, i in enumerate(ids)]
    # In one transaction, as a creation cycle does: created, then recorded as cancelled.
    assert insert_jobs(session, ExampleJob, jobs, JobStatus.INITIALIZED) == 7
    cancelled = [ExampleJob(input_product_id="X1"), ExampleJob(input_product_id="P03")]
    assert insert_jobs(session, ExampleJob, cancelled, JobStatus.CANCELLED) == 1
    session.commit()
    rows = session.execute(
        text(
            "SELECT j.input_product_id, j.status, e.band, "
            "(SELECT count(*) FROM job_status_changes c WHERE c.job_id = j.id) "
            "FROM jobs j JOIN example_jobs e USING (id) ORDER BY 1"
        )
    ).all()
    # Every job has its type row and exactly one history row; the first duplicate wins.
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("P00", 1, "b0", 1),
        ("P01", 1, "b1", 1),
        ("P02", 1, None, 1),
        ("P03", 1, "b4", 1),
        ("P04", 1, "b5", 1),
        ("P05", 1, "b6", 1),
        ("P06", 1, "b8", 1),
        ("P07", 1, "b9", 1),
        ("X1", int(JobStatus.CANCELLED), None, 1),
    ]


def test_unset_type_columns_take_their_defaults(session: Session) -> None:
    start = datetime.now(UTC) - timedelta(hours=1)
    jobs = [
        TestJob(input_product_id="T1", input_publication_date=start),
        TestJob(input_product_id="T2", behaviour="sleep", sleep_seconds=2.5, publish=True),
    ]
    assert insert_jobs(session, TestJob, jobs, JobStatus.INITIALIZED) == 2
    session.commit()
    got = {
        j.input_product_id: (j.behaviour, j.sleep_seconds, j.publish, j.behaviour_attempts)
        for j in session.scalars(select(TestJob))
    }
    assert got == {"T1": ("succeed", 0.0, False, None), "T2": ("sleep", 2.5, True, None)}


def test_a_job_without_product_id_is_refused(session: Session) -> None:
    with pytest.raises(ValueError, match="no input_product_id"):
        insert_jobs(session, ExampleJob, [ExampleJob(band="x")], JobStatus.INITIALIZED)
