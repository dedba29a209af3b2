"""The change check reads only what it compares: of a known product's jobs, creation's
lookup (joblife.lifecycle.discovery_modes) returns the input listing of the latest job
alone (the one a discovered listing is compared with), not that of every older job."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from joblife.lifecycle.creation import insert_jobs
from joblife.lifecycle.discovery_modes import KnownSorted, skip_known
from joblife.model import JobStatus
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.support.example_type import ExampleJob

DATED = datetime(2026, 3, 1, 10, 15, tzinfo=UTC)
#: Reprocessing contexts of one product's jobs, oldest first.
CONTEXTS = ["", "changed-1", "changed-2", "changed-3", "changed-4", "changed-5"]


def listing(version: int) -> dict[str, int]:
    """A listing of many objects, each version with other sizes."""
    return {f"band_{band:02d}.tif": 1000 * version + band for band in range(50)}


@pytest.fixture
def history(session: Session) -> dict[str, int]:
    """Product ``s1`` reprocessed five times, every job with another listing (the latest:
    version 6), and product ``s2`` with one job; their job ids by context of ``s1``."""
    for version, context in enumerate(CONTEXTS, start=1):
        job = ExampleJob(
            input_product_id="s1",
            reprocessing_context=context,
            input_publication_date=DATED,
            input_listing=listing(version),
        )
        # One insert each, so that ids follow the order of the contexts.
        assert insert_jobs(session, ExampleJob, [job], JobStatus.INITIALIZED) == 1
    single = ExampleJob(input_product_id="s2", input_publication_date=DATED, input_listing={})
    assert insert_jobs(session, ExampleJob, [single], JobStatus.INITIALIZED) == 1
    session.commit()
    ids = select(ExampleJob.reprocessing_context, ExampleJob.id).where(
        ExampleJob.input_product_id == "s1"
    )
    return {context: job_id for context, job_id in session.execute(ids)}


def spy_rows(session: Session, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The rows every statement of ``session`` returns from now on, as the client got them."""
    seen: list[Any] = []
    execute: Callable[..., Any] = session.execute

    def spy(*args: Any, **kwargs: Any) -> list[Any]:
        rows = list(execute(*args, **kwargs))
        seen.extend(rows)
        return rows

    monkeypatch.setattr(session, "execute", spy)
    return seen


def sort(session: Session, found: dict[str, int], reprocess: bool = True) -> KnownSorted:
    """skip_known on ``s1`` discovered with listing ``found`` and its known date."""
    job = ExampleJob(input_product_id="s1", input_publication_date=DATED, input_listing=found)
    return skip_known(session, ExampleJob, [job], [], {}, reprocess)


def test_only_the_latest_jobs_listing_is_compared(
    session: Session, history: dict[str, int]
) -> None:
    """The listing of the latest job (highest id) decides: the same is no change, that of
    an older job is one."""
    same = sort(session, listing(len(CONTEXTS)))
    assert (same.to_create, same.known, same.reprocessed) == ([], 1, 0)
    for version in range(1, len(CONTEXTS)):  # an older job's listing: changed since
        older = sort(session, listing(version), reprocess=False)
        assert (older.known, older.changed_skipped) == (1, 1), version


def test_only_the_latest_jobs_listing_is_fetched(
    session: Session, history: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every job of the product comes back (its natural keys are known), but only the
    latest carries its listing: the five older listings are neither read nor sent."""
    seen = spy_rows(session, monkeypatch)
    assert sort(session, listing(len(CONTEXTS))).known == 1
    assert {row.id for row in seen} == set(history.values())
    with_listing = {row.id: row.listing for row in seen if row.listing is not None}
    assert with_listing == {history[CONTEXTS[-1]]: listing(len(CONTEXTS))}


def test_the_latest_job_is_each_products_own(
    session: Session, history: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two products looked up together: each one's latest job carries its listing (not
    only the latest of all), so an older listing of ``s1`` is still seen as a change."""
    seen = spy_rows(session, monkeypatch)
    jobs = [
        ExampleJob(input_product_id="s1", input_publication_date=DATED, input_listing=listing(1)),
        ExampleJob(input_product_id="s2", input_publication_date=DATED, input_listing={"x": 1}),
    ]
    result = skip_known(session, ExampleJob, jobs, [], {}, False)
    assert (result.known, result.changed_skipped) == (2, 2)
    [s2_id] = {row.id for row in seen} - set(history.values())
    with_listing = {row.id for row in seen if row.listing is not None}
    assert with_listing == {history[CONTEXTS[-1]], s2_id}
