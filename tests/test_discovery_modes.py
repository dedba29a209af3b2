"""Discovery modes (issue 17, items 4 and 5), against real file storage with the h5repack
type: rediscovery costs no job id, the blind spot of ``modified_since`` and what
``listing_diff`` finds, a changed input reprocessed with ``REPROCESS_ON_CHANGE``, a product
still settling left for a later cycle, the overlap, and the logs saying what was skipped."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from joblife.config import get_settings
from joblife.jobtypes.h5repack import H5RepackJob
from joblife.lifecycle.common import ServiceContext
from joblife.lifecycle.creation import CreationReport, create_jobs, insert_jobs
from joblife.lifecycle.discovery_modes import EVERYTHING, KnownSorted, skip_known
from joblife.model import JobStatus
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from tests.support.example_type import ExampleJob

SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Where the h5repack products are written: ``in/h5`` of the file storage."""
    path = tmp_path / "storage" / "in" / "h5"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def context(
    engine: Engine, joblife_env: str, tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ServiceContext]:
    monkeypatch.setenv("JOBLIFE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JOBLIFE_STORAGE_URL", (tmp_path / "storage").as_uri())
    monkeypatch.setenv("JOBLIFE_H5REPACK_INPUT_PREFIX", "in/h5")
    get_settings.cache_clear()
    yield ServiceContext(engine, get_settings())
    get_settings.cache_clear()


@pytest.fixture
def now() -> datetime:
    """The cycles' clock: whole seconds, like the dates of an S3 listing."""
    return datetime.now(UTC).replace(microsecond=0)


def write(folder: Path, name: str, modified: datetime, content: bytes = b"not read") -> None:
    """A product file with this modification time."""
    path = folder / name
    path.write_bytes(content)
    os.utime(path, (modified.timestamp(), modified.timestamp()))


def cycle(context: ServiceContext, now: datetime) -> CreationReport:
    [report] = [r for r in create_jobs(context, now) if r.job_type == "h5repack"]
    assert report.error is None, report.error
    return report


def jobs(engine: Engine) -> dict[tuple[str, str], H5RepackJob]:
    """The h5repack jobs by natural key (product, reprocessing context)."""
    with Session(engine, expire_on_commit=False) as session:
        found = session.scalars(select(H5RepackJob)).all()
    return {(j.input_product_id, j.reprocessing_context): j for j in found}


def ids_drawn(engine: Engine) -> tuple[int, int]:
    """(max(jobs.id), the last value the jobs' id sequence gave)."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT (SELECT max(id) FROM jobs), (SELECT last_value FROM pg_sequences "
                "WHERE schemaname || '.' || sequencename = pg_get_serial_sequence('jobs', 'id'))"
            )
        ).one()


# -- item 4: rediscovery burns no id ---------------------------------------------------------
def test_rediscovering_the_same_products_draws_no_job_id(
    context: ServiceContext, engine: Engine, folder: Path, now: datetime
) -> None:
    """Five products dated the same second (the cursor): every cycle sees them again, and
    only the first draws job ids."""
    dated = now - MINUTE
    for index in range(5):
        write(folder, f"rec_{index}.h5", dated)
    first = cycle(context, now)
    assert (first.discovered, first.inserted, first.already_known) == (5, 5, 0)
    for number in range(1, 5):
        again = cycle(context, now + number * SECOND)
        assert again.window_start == dated  # the cursor: its date is seen again
        assert (again.discovered, again.inserted, again.already_known) == (5, 0, 5)
    assert len(jobs(engine)) == 5
    assert ids_drawn(engine) == (5, 5)


# -- item 5: the modes --------------------------------------------------------------------------
def test_an_old_dated_late_product_is_found_by_listing_diff_only(
    context: ServiceContext,
    engine: Engine,
    folder: Path,
    now: datetime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write(folder, "a.h5", now - 10 * MINUTE)
    write(folder, "b.h5", now - 5 * MINUTE)
    assert cycle(context, now).inserted == 2
    # A late product dated before the cursor (b's date), e.g. copied with its old date.
    write(folder, "late.h5", now - 30 * MINUTE)

    since = cycle(context, now + SECOND)
    assert since.mode == "modified_since" and since.window_start == now - 5 * MINUTE
    assert (since.discovered, since.inserted) == (1, 0)  # b again; the late one is not seen
    assert {p for p, _ in jobs(engine)} == {"a.h5", "b.h5"}

    monkeypatch.setattr(H5RepackJob, "DISCOVERY_MODE", "listing_diff")
    diff = cycle(context, now + 2 * SECOND)
    assert diff.mode == "listing_diff" and diff.window_start == EVERYTHING
    assert (diff.discovered, diff.inserted, diff.already_known) == (3, 1, 2)
    assert {p for p, _ in jobs(engine)} == {"a.h5", "b.h5", "late.h5"}
    again = cycle(context, now + 3 * SECOND)
    assert (again.discovered, again.inserted, again.already_known) == (3, 0, 3)
    assert ids_drawn(engine) == (3, 3)


def test_the_overlap_finds_a_product_dated_shortly_before_the_cursor(
    context: ServiceContext,
    engine: Engine,
    folder: Path,
    now: datetime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(H5RepackJob, "DISCOVERY_OVERLAP_SECONDS", 600)
    write(folder, "b.h5", now - 5 * MINUTE)
    assert cycle(context, now).inserted == 1
    write(folder, "late.h5", now - 8 * MINUTE)  # within the overlap
    write(folder, "older.h5", now - 20 * MINUTE)  # before it
    report = cycle(context, now + SECOND)
    assert report.window_start == now - 5 * MINUTE - 10 * MINUTE
    assert (report.discovered, report.inserted, report.already_known) == (2, 1, 1)
    assert {p for p, _ in jobs(engine)} == {"b.h5", "late.h5"}


def test_a_changed_input_is_reprocessed_with_reprocess_on_change(
    context: ServiceContext,
    engine: Engine,
    folder: Path,
    now: datetime,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="joblife.creation")
    write(folder, "p.h5", now - 10 * MINUTE, b"version 1")
    assert cycle(context, now).inserted == 1
    changed = now - 2 * MINUTE + timedelta(microseconds=250_000)
    write(folder, "p.h5", changed, b"version 2, longer")

    # Off (the default): known, skipped, and the log says why.
    off = cycle(context, now + SECOND)
    assert (off.discovered, off.inserted, off.already_known) == (1, 0, 1)
    assert (off.reprocessed, off.changed_not_reprocessed) == (0, 1)
    [skipped] = [r for r in caplog.records if "REPROCESS_ON_CHANGE is off" in r.getMessage()]
    assert skipped.levelno == logging.DEBUG and "p.h5 skipped: known (job 1)" in skipped.message
    assert list(jobs(engine)) == [("p.h5", "")]

    monkeypatch.setattr(H5RepackJob, "REPROCESS_ON_CHANGE", True)
    on = cycle(context, now + 2 * SECOND)
    assert (on.discovered, on.inserted, on.reprocessed, on.already_known) == (1, 1, 1, 0)
    context_name = f"changed-{changed:%Y%m%dT%H%M%S}.250000Z"
    assert set(jobs(engine)) == {("p.h5", ""), ("p.h5", context_name)}
    new = jobs(engine)[("p.h5", context_name)]
    assert new.input_publication_date == changed
    assert new.default_output_path() == f"h5repack/p.h5/{context_name}"  # its own outputs

    # Seen again unchanged: known (its latest job has its date); changed once more: a third.
    assert cycle(context, now + 3 * SECOND).inserted == 0
    write(folder, "p.h5", now - MINUTE, b"version 3")
    third = cycle(context, now + 4 * SECOND)
    assert (third.inserted, third.reprocessed) == (1, 1)
    assert len(jobs(engine)) == 3
    assert ids_drawn(engine) == (3, 3)


def test_a_product_still_settling_is_left_for_a_later_cycle_and_counted(
    context: ServiceContext,
    engine: Engine,
    folder: Path,
    now: datetime,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(H5RepackJob, "DISCOVERY_SETTLE_SECONDS", 30)
    caplog.set_level(logging.DEBUG, logger="joblife.creation")
    for index in range(3):
        write(folder, f"old_{index}.h5", now - 10 * MINUTE)
    assert cycle(context, now).inserted == 3
    write(folder, "new.h5", now - 5 * MINUTE)
    write(folder, "fresh.h5", now - 10 * SECOND)  # still being written, maybe

    caplog.clear()
    first = cycle(context, now + SECOND)
    assert (first.discovered, first.inserted, first.already_known, first.settling) == (5, 1, 3, 1)
    assert {p for p, _ in jobs(engine)} == {"old_0.h5", "old_1.h5", "old_2.h5", "new.h5"}
    [line] = [r for r in caplog.records if r.levelno == logging.INFO]
    assert line.getMessage() == (
        "h5repack: 5 products listed, 1 new, 3 known, 1 too recent (settling)"
    )
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("fresh.h5 left for a later cycle" in m and "(settling)" in m for m in debug)
    assert sum("skipped: known (job" in m for m in debug) == 3

    later = cycle(context, now + MINUTE)  # settled: taken
    assert (later.inserted, later.settling) == (1, 0)
    assert "fresh.h5" in {p for p, _ in jobs(engine)}


def test_a_cycle_that_only_sees_known_products_logs_at_debug_level(
    context: ServiceContext, folder: Path, now: datetime, caplog: pytest.LogCaptureFixture
) -> None:
    write(folder, "a.h5", now - MINUTE)
    caplog.set_level(logging.DEBUG, logger="joblife.creation")
    cycle(context, now)
    cycle(context, now + SECOND)
    lines = [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.getMessage().startswith("h5repack: 1 products listed")
    ]
    assert lines == [
        (logging.INFO, "h5repack: 1 products listed, 1 new, 0 known, 0 too recent (settling)"),
        (logging.DEBUG, "h5repack: 1 products listed, 0 new, 1 known, 0 too recent (settling)"),
    ]


def test_an_unknown_mode_fails_its_type_only(
    context: ServiceContext, folder: Path, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(H5RepackJob, "DISCOVERY_MODE", "everything")
    write(folder, "a.h5", now - MINUTE)
    reports = {r.job_type: r for r in create_jobs(context, now)}
    assert "DISCOVERY_MODE is 'everything'" in (reports["h5repack"].error or "")
    assert all(r.error is None for t, r in reports.items() if t != "h5repack")


def test_a_changed_listing_is_a_change_and_an_undated_product_gets_a_digest_context(
    session: Session,
) -> None:
    """For a product of many objects, a listing that differs (an object of another size)
    is a change even when the date is the same; a product without a date is reprocessed
    under a digest of its listing."""
    dated = datetime(2026, 3, 1, 10, 15, tzinfo=UTC)
    stack = ExampleJob(input_product_id="s1", input_publication_date=dated, input_listing={"a": 1})
    bare = ExampleJob(input_product_id="b1", input_listing={"x": 1})
    assert insert_jobs(session, ExampleJob, [stack, bare], JobStatus.INITIALIZED) == 2
    session.commit()

    def sort(listing: dict[str, int], reprocess: bool) -> KnownSorted:
        found = ExampleJob(
            input_product_id="s1", input_publication_date=dated, input_listing=listing
        )
        return skip_known(session, ExampleJob, [found], [], {}, reprocess)

    same = sort({"a": 1}, reprocess=True)
    assert (same.to_create, same.known, same.reprocessed) == ([], 1, 0)
    grown = sort({"a": 2}, reprocess=True)
    [again] = grown.to_create
    assert grown.reprocessed == 1 and again.reprocessing_context == "changed-20260301T101500Z"
    off = sort({"a": 2}, reprocess=False)
    assert (off.to_create, off.known, off.changed_skipped) == ([], 1, 1)

    undated = ExampleJob(input_product_id="b1", input_listing={"x": 2})
    [changed] = skip_known(session, ExampleJob, [undated], [], {}, True).to_create
    digest = hashlib.sha256(b'{"x": 2}').hexdigest()[:16]
    assert changed.reprocessing_context == f"changed-{digest}"


def test_a_changed_product_whose_new_context_fails_is_rejected_alone(
    context: ServiceContext,
    engine: Engine,
    folder: Path,
    now: datetime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A type's changed_input_context() that raises (or gives an unstorable context) for one
    product rejects that product; the type's other products are created."""
    write(folder, "bad.h5", now - 10 * MINUTE, b"version 1")
    write(folder, "nul.h5", now - 10 * MINUTE, b"version 1")
    assert cycle(context, now).inserted == 2
    write(folder, "bad.h5", now - 2 * MINUTE, b"version 2")
    write(folder, "nul.h5", now - 2 * MINUTE, b"version 2")
    write(folder, "new.h5", now - 2 * MINUTE)

    def context_of(job: H5RepackJob) -> str:
        if job.input_product_id == "bad.h5":
            raise ValueError("no context for you")
        return "changed\x00"

    monkeypatch.setattr(H5RepackJob, "REPROCESS_ON_CHANGE", True)
    monkeypatch.setattr(H5RepackJob, "changed_input_context", context_of)
    report = cycle(context, now + SECOND)
    assert report.error is None
    assert (report.inserted, report.rejected) == (1, 2)
    assert report.already_known == 0  # the two refused are counted as refused only
    assert set(jobs(engine)) == {("bad.h5", ""), ("nul.h5", ""), ("new.h5", "")}
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name, reason FROM rejected_products")).all()
        rejected = {row.name: row.reason for row in rows}
    # Named as screening names its rejections (escaped, quoted).
    assert set(rejected) == {"'bad.h5'", "'nul.h5'"}, rejected
    assert "no context for you" in rejected["'bad.h5'"]
    assert "changed_input_context() gave" in rejected["'nul.h5'"]
