"""``joblife jobs list`` pages: the next-page hint carries the key the page ended at
(``--before ID@TIME``), so the next page continues exactly after the last job printed even
when that job changed status since; a bare ``--before ID`` starts after the job's current
place; a malformed cursor is a usage error."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from joblife.cli.parsing import PageCursor, parse_page_cursor
from joblife.db.status import set_job_status
from joblife.model import JobStatus
from sqlalchemy.orm import Session

from tests.support.factories import make_jobs
from tests.test_cli import assert_usage_error, run, run_json

HINT = re.compile(r"next page: --before (\S+),")


@pytest.fixture
def listed(joblife_env: str, session: Session) -> list[int]:
    """Eight jobs created one transaction each (distinct status change times); their ids
    in list order, the newest first."""
    ids = [make_jobs(session, 1, prefix=f"page{i}-")[0].id for i in range(8)]
    return ids[::-1]


def next_cursor(*args: str) -> str:
    """The cursor the next-page hint of ``joblife jobs list ARGS`` prints."""
    result = run("jobs", "list", *args)
    assert result.exit_code == 0, result.output
    found = HINT.search(result.stdout)
    assert found is not None, result.stdout
    return found[1]


def page_ids(*args: str) -> list[int]:
    return [job["id"] for job in run_json("jobs", "list", *args)]


def test_the_hint_continues_after_the_last_job_printed_though_it_changed_status(
    listed: list[int], session: Session
) -> None:
    cursor = next_cursor("--limit", "3")
    assert cursor.startswith(f"{listed[2]}@") and cursor.endswith("Z")
    # The last job of page 1 is retried, finishes...: it moves to the top of the list.
    set_job_status(session, [listed[2]], JobStatus.READY, message="test: moved")
    session.commit()
    assert page_ids("--limit", "1") == [listed[2]]
    assert page_ids("--limit", "3", "--before", cursor) == listed[3:6]
    # And the page after, from that page's own hint, to the end: every job once.
    second = next_cursor("--limit", "3", "--before", cursor)
    assert page_ids("--limit", "3", "--before", second) == listed[6:]


def test_a_bare_id_starts_after_the_jobs_current_place(listed: list[int], session: Session) -> None:
    assert page_ids("--limit", "3", "--before", str(listed[2])) == listed[3:6]
    set_job_status(session, [listed[2]], JobStatus.READY, message="test: moved")
    session.commit()
    # Now the newest: the jobs after it are the first ones of the list, bar itself.
    moved_first = [listed[2], *listed[:2], *listed[3:]]
    assert page_ids("--limit", "3", "--before", str(listed[2])) == moved_first[1:4]


def test_a_cursor_of_a_job_gone_still_pages(listed: list[int], session: Session) -> None:
    """The cursor's key is enough: its job need not exist any more (purged)."""
    [job] = run_json("jobs", "list", "--limit", "0")[3:4]
    gone = PageCursor(987_654_321, datetime.fromisoformat(job["status_changed_at"]))
    assert page_ids("--limit", "2", "--before", str(gone)) == listed[3:5]


def test_the_json_rows_give_the_cursor(listed: list[int]) -> None:
    """``--json`` stays a list; its last object's ``id@status_changed_at`` is the cursor."""
    first = run_json("jobs", "list", "--limit", "3")
    last = first[-1]
    cursor = f"{last['id']}@{last['status_changed_at']}"
    assert parse_page_cursor(cursor) == parse_page_cursor(next_cursor("--limit", "3"))
    assert page_ids("--limit", "3", "--before", cursor) == listed[3:6]


@pytest.mark.parametrize(
    "value",
    [
        "twelve",
        "-5",
        "12@",
        "12@yesterday",
        "12@2026-12-05T14:48:30",  # no offset: a local time would shift the key
        "12@2026-13-01T00:00:00Z",
        "12@2026-12-05T14:48:30Z;ls",
        "1 2",
        "99999999999999999999",  # beyond bigint
        "١٢",  # not ASCII digits
        # Offsets Python reads and PostgreSQL would refuse (the database's error, exit 1)
        "12@2026-12-05T14:48:30+01:00:00.5",
        "12@2026-12-05T14:48:30+16:00",
        "12@0001-01-01T00:00+01:00",  # before year 1 in UTC
    ],
)
def test_a_malformed_cursor_is_a_usage_error(joblife_env: str, value: str) -> None:
    assert_usage_error(run("jobs", "list", "--before", value), "--before", "page cursor")


def test_cursors_round_trip_exactly() -> None:
    moment = datetime(2026, 12, 5, 15, 48, 30, 123456, tzinfo=timezone(timedelta(hours=1)))
    cursor = PageCursor(1234, moment)
    assert str(cursor) == "1234@2026-12-05T14:48:30.123456Z"
    assert parse_page_cursor(str(cursor)) == cursor
    whole = PageCursor(7, datetime(2026, 12, 5, tzinfo=UTC))
    assert str(whole) == "7@2026-12-05T00:00:00.000000Z"
    assert parse_page_cursor(str(whole)) == whole
    assert parse_page_cursor("1234@2026-12-05T15:48:30.123456+01:00") == cursor
    assert parse_page_cursor(" 42 ") == PageCursor(42)
    assert str(PageCursor(42)) == "42"
