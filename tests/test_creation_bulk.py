"""The bulk insert of discovered jobs (COPY into staging tables, then INSERT ... SELECT),
over one connection or creation's parallel ranges."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from joblife.db.copy import copy_text
from joblife.jobtypes.test_job import TestJob
from joblife.lifecycle import creation
from joblife.lifecycle.creation import insert_jobs
from joblife.model import JobStatus, Priority
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tests.support.example_type import ExampleJob

AWKWARD = "tab\there, new\nline, back\\slash \\N, cr\r, ünïcødé, 'quote' \"dq\""


def test_copy_text_escapes_and_nulls() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    columns = [(None,), (True,), (3,), ("a\tb\\c\nd",), (when,), ({"k": 1},)]
    assert copy_text(columns) == (
        '\\N\tt\t3\ta\\tb\\\\c\\nd\t2026-01-02T03:04:05+00:00\t{"k": 1}\n'
    )


def test_copy_text_formats_each_value_by_its_own_type() -> None:
    """A column whose values are not all of one exact type (a subclass, an int in a text
    column, a bool after an int) has each value formatted by its own type."""
    assert (
        copy_text(
            [
                ("a\tb", 7, None, Priority.NRT),
                (1, True, 2.5, None),
                (None, None, None, None),
            ]
        )
        == "a\\tb\t1\t\\N\n7\tt\t\\N\n\\N\t2.5\t\\N\n1\t\\N\t\\N\n"
    )
    assert copy_text([]) == ""


def test_copy_text_of_columns_of_one_type_with_nulls() -> None:
    """One-type columns (formatted in bulk): clean text used as it is, text to escape, and
    NULLs kept in their rows."""
    when = datetime(2026, 1, 2, tzinfo=UTC)
    assert copy_text([("a", None, "b"), ("x", "y\tz", None), (None, 2, 3), (when, None, None)]) == (
        "a\tx\t\\N\t2026-01-02T00:00:00+00:00\n\\N\ty\\tz\t2\t\\N\nb\t\\N\t3\t\\N\n"
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


# --- creation's parallel ranges -----------------------------------------------------------


def _dated(prefix: str, count: int, first: datetime, **values: object) -> list[ExampleJob]:
    return [
        ExampleJob(
            input_product_id=f"{prefix}{n:03d}",
            input_publication_date=first + timedelta(minutes=n),
            **values,
        )
        for n in range(count)
    ]


def _stored(engine: Engine) -> dict[str, tuple[int, int]]:
    """input_product_id -> (status, history rows), of every job."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT j.input_product_id, j.status, count(c.id) FROM jobs j "
                "JOIN example_jobs e USING (id) JOIN job_status_changes c ON c.job_id = j.id "
                "GROUP BY 1, 2"
            )
        ).all()
    return {r[0]: (r[1], r[2]) for r in rows}


def test_ranges_are_contiguous_and_never_cut_a_publication_date(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(creation, "INSERT_BATCH", 2)
    first = datetime(2026, 5, 1, tzinfo=UTC)
    # Dates 0, 1, 1, 1, 2, 3, 4, 5 (minutes): a cut at 2 or 3 would split the three 1s.
    minutes = [0, 1, 1, 1, 2, 3, 4, 5]
    rows = [
        (
            ExampleJob(
                input_product_id=f"R{n}", input_publication_date=first + timedelta(minutes=m)
            ),
            JobStatus.INITIALIZED,
        )
        for n, m in enumerate(minutes)
    ]
    ranges = creation._ranges(rows, 2)
    assert [len(r) for r in ranges] == [4, 4]
    assert [job.input_product_id for r in ranges for job, _ in r] == [f"R{n}" for n in range(8)]
    assert [len(r) for r in creation._ranges(rows, 3)] == [4, 1, 3]
    assert [len(r) for r in creation._ranges(rows, 1)] == [8]
    # No more ranges than INSERT_BATCH rows allow: 3 rows make one range.
    assert [len(r) for r in creation._ranges(rows[:3], 8)] == [3]


def test_parallel_creation_inserts_every_job_once(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(creation, "INSERT_BATCH", 4)
    first = datetime(2026, 5, 1, tzinfo=UTC)
    to_create = _dated("C", 30, first)
    random.Random(7).shuffle(to_create)  # discovery order is not publication order
    to_cancel = [*_dated("X", 5, first), ExampleJob(input_product_id="C003")]  # C003: created
    backends: set[int] = set()
    original = creation._insert_range

    def recording(session: Session, *args: object) -> object:
        backends.add(session.connection().connection.dbapi_connection.get_backend_pid())
        return original(session, *args)

    monkeypatch.setattr(creation, "_insert_range", recording)
    counts = creation.insert_discovered(engine, ExampleJob, to_create, to_cancel, parallelism=3)
    assert counts == {JobStatus.INITIALIZED: 30, JobStatus.CANCELLED: 5}
    assert len(backends) == 3  # three ranges, each in its own connection (and transaction)
    stored = _stored(engine)
    assert len(stored) == 35 and set(stored.values()) == {
        (int(JobStatus.INITIALIZED), 1),
        (int(JobStatus.CANCELLED), 1),
    }
    # Again: every key is known, nothing is inserted.
    again = creation.insert_discovered(engine, ExampleJob, _dated("C", 30, first), [], None, 3)
    assert sum(again.values()) == 0 and len(_stored(engine)) == 35


def _ids_drawn(engine: Engine) -> tuple[int, int]:
    """(max(jobs.id), the last value the jobs' id sequence gave)."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT (SELECT max(id) FROM jobs), (SELECT last_value FROM pg_sequences "
                "WHERE schemaname || '.' || sequencename = pg_get_serial_sequence('jobs', 'id'))"
            )
        ).one()


def test_known_keys_draw_no_job_id(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The inserts leave known natural keys out before drawing ids (issue 17 item 4): an
    ``ON CONFLICT DO NOTHING`` alone draws one per row, inserted or not. Here the insert
    functions on their own (no creation cycle): over parallel ranges, and in the caller's
    transaction (a key inserted earlier in it is known too)."""
    monkeypatch.setattr(creation, "INSERT_BATCH", 4)
    first = datetime(2026, 5, 1, tzinfo=UTC)
    assert sum(creation.insert_discovered(engine, ExampleJob, _dated("D", 10, first), []).values())
    for _ in range(3):
        known_and_two_new = _dated("D", 12, first)
        counts = creation.insert_discovered(engine, ExampleJob, known_and_two_new, [], None, 3)
        assert sum(counts.values()) in (2, 0)
    with Session(engine) as session:
        contexts = [ExampleJob(input_product_id="D000", reprocessing_context=c) for c in "ab"]
        assert insert_jobs(session, ExampleJob, contexts, JobStatus.INITIALIZED) == 2
        assert insert_jobs(session, ExampleJob, contexts, JobStatus.CANCELLED) == 0
        session.commit()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 14
    assert _ids_drawn(engine) == (14, 14)


@pytest.mark.parametrize("failing", [0, 1, 2])
def test_a_failing_range_keeps_only_the_ranges_before_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, failing: int
) -> None:
    """The ranges are committed in publication order: those before the failing one stay, it
    and those after it are rolled back, so the newest committed job is never newer than a
    lost one (the discovery cursor cannot pass it)."""
    monkeypatch.setattr(creation, "INSERT_BATCH", 4)
    first = datetime(2026, 5, 1, tzinfo=UTC)
    jobs = _dated("F", 12, first)
    jobs[failing * 4 + 1].priority = 9  # refused by ck_jobs_priority_level
    committed: Counter[JobStatus] = Counter()
    with pytest.raises(IntegrityError, match="ck_jobs_priority_level"):
        creation.insert_discovered(engine, ExampleJob, jobs, [], None, 3, committed)
    kept = {f"F{n:03d}" for n in range(failing * 4)}
    assert set(_stored(engine)) == kept
    assert committed == ({JobStatus.INITIALIZED: len(kept)} if kept else {})


def test_a_range_failing_at_commit_keeps_only_the_ranges_before_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(creation, "INSERT_BATCH", 4)
    jobs = _dated("K", 12, datetime(2026, 5, 1, tzinfo=UTC))
    original = creation._open_range

    def second_fails_at_commit(engine: Engine, cls: type, rows: list, now: datetime) -> object:
        session, counts = original(engine, cls, rows, now)
        if rows[0][0].input_product_id == "K004":

            def refuse() -> None:
                raise RuntimeError("commit lost")

            session.commit = refuse  # type: ignore[method-assign]
        return session, counts

    monkeypatch.setattr(creation, "_open_range", second_fails_at_commit)
    committed: Counter[JobStatus] = Counter()
    with pytest.raises(RuntimeError, match="commit lost"):
        creation.insert_discovered(engine, ExampleJob, jobs, [], None, 3, committed)
    assert set(_stored(engine)) == {f"K{n:03d}" for n in range(4)}
    assert committed == {JobStatus.INITIALIZED: 4}
    with engine.connect() as conn:  # no range left open
        idle = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state LIKE 'idle in transaction%'"
            )
        ).scalar()
    assert idle == 0


@pytest.mark.parametrize(
    "published", [datetime(2026, 5, 1), "2026-05-01T00:00:00+00:00"], ids=["naive", "text"]
)
def test_a_publication_date_that_is_not_an_aware_datetime_is_refused(
    engine: Engine, published: object
) -> None:
    """Ranges are cut and committed in publication order: a naive date (which the server
    would read in its own time zone) or a string cannot be placed in it."""
    jobs = [*_dated("N", 2, datetime(2026, 5, 1, tzinfo=UTC))]
    jobs.append(ExampleJob(input_product_id="N-bad", input_publication_date=published))
    with pytest.raises(ValueError, match="N-bad: input_publication_date must be a timezone-aware"):
        creation.insert_discovered(engine, ExampleJob, jobs, [])
    assert _stored(engine) == {}


def test_a_range_waiting_too_long_for_a_row_lock_is_a_creation_error_not_an_outage(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A range blocked by another transaction inserting the same product gives up after
    its lock timeout with an error of its own (an OperationalError would make the
    orchestrator back off every service as for a database outage)."""
    monkeypatch.setattr(creation, "INSERT_BATCH", 4)
    monkeypatch.setattr(creation, "RANGE_LOCK_TIMEOUT", "300ms")
    first = datetime(2026, 5, 1, tzinfo=UTC)
    jobs = _dated("W", 12, first)
    with Session(engine) as other:  # inserts W005 (range 2) and does not commit
        insert_jobs(other, ExampleJob, _dated("W", 12, first)[5:6], JobStatus.INITIALIZED)
        with pytest.raises(RuntimeError, match="waited more than 300ms for a row lock"):
            creation.insert_discovered(engine, ExampleJob, jobs, [], None, 3)
        other.rollback()
    assert set(_stored(engine)) == {f"W{n:03d}" for n in range(4)}
