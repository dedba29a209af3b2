"""The CLI reads rewritten to read ranges of indexes instead of whole tables (issue 15 item
3, revision 0014) return what the plain queries they replace return: ``jobs list`` (every
filter, limits, and its ``--before`` pages), ``jobs stale`` (the oldest jobs per status
across job types) and ``timeliness`` (against revision 0006's definition, in and out of
windows)."""

from __future__ import annotations

import importlib.util
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from joblife.cli.parsing import PageCursor
from joblife.cli.queries import list_jobs
from joblife.config import get_settings
from joblife.db import migrate
from joblife.db.status import set_job_status
from joblife.errors import JobNotFound
from joblife.jobtypes.test_job import TestJob
from joblife.lifecycle.common import utc_now
from joblife.model import JobStatus
from joblife.ops.stale import stale_jobs
from joblife.publication.timeliness import timeliness_summary
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from tests.support.example_type import ExampleJob
from tests.support.factories import PATH_TO
from tests.test_cli import run, run_json
from tests.test_roles import run as run_sql

S = JobStatus
BASE = datetime(2026, 11, 1, tzinfo=UTC)
MIX = [
    S.INITIALIZED,
    S.CONFIGURED,
    S.READY,
    S.QUEUED,
    S.DONE,
    S.CANCELLED,
    S.EXTERNAL_ERROR,
    S.PROCESSED,
]


@pytest.fixture
def mixed(engine: Engine, session: Session) -> list[int]:
    """60 jobs of two types in eight statuses, moved in batches (ties in status_changed_at,
    broken by id), with input and output publication dates."""
    rng = random.Random(15)
    jobs: list[Any] = []
    for cls, prefix in ((ExampleJob, "E"), (TestJob, "T")):
        jobs += [
            cls(
                input_product_id=f"{prefix}{i:03d}",
                input_publication_date=BASE + timedelta(hours=rng.randrange(0, 96)),
            )
            for i in range(30)
        ]
    session.add_all(jobs)
    session.commit()
    ids = [job.id for job in jobs]
    by_status: dict[JobStatus, list[int]] = {}
    for job_id in ids:
        by_status.setdefault(rng.choice(MIX), []).append(job_id)
    for status, members in by_status.items():
        for step in PATH_TO[status]:
            for part in (members[: len(members) // 2], members[len(members) // 2 :]):
                if part:
                    set_job_status(session, part, step)
            session.commit()
    for job_id in ids:  # outputs of most jobs published some hours after their input
        if rng.random() < 0.7:
            run_sql(
                engine,
                "UPDATE jobs SET output_publication_date = input_publication_date "
                "+ make_interval(mins => :m) WHERE id = :id",
                m=rng.randrange(10, 600),
                id=job_id,
            )
    return ids


def reference(engine: Engine, where: str = "", **params: Any) -> list[int]:
    """The ids in list order, by the plain query over every row."""
    sql = "SELECT id FROM jobs j WHERE true " + where + " ORDER BY status_changed_at DESC, id DESC"
    return [row[0] for row in run_sql(engine, sql, **params)]


def listed(session: Session, **filters: Any) -> list[int]:
    return [row["id"] for row in list_jobs(session, **filters)]


def test_jobs_list_pages_are_the_plain_querys(engine: Engine, session: Session, mixed) -> None:
    since = run_sql(engine, "SELECT percentile_disc(0.5) WITHIN GROUP "
                    "(ORDER BY status_changed_at) FROM jobs")[0][0]  # fmt: skip
    cases = [
        ({}, ""),
        ({"job_type": "test"}, "AND job_type = 'test'"),
        ({"statuses": [S.READY]}, "AND status = 3"),
        ({"statuses": [S.DONE, S.EXTERNAL_ERROR]}, "AND status IN (12, 14)"),
        ({"job_type": "example", "statuses": [S.INITIALIZED, S.CANCELLED]},
         "AND job_type = 'example' AND status IN (1, 16)"),
        ({"since": since}, "AND status_changed_at >= :since"),
        ({"job_type": "nosuch"}, "AND job_type = 'nosuch'"),
    ]  # fmt: skip
    for filters, where in cases:
        expected = reference(engine, where, since=since)
        assert listed(session, **filters) == expected, filters
        for limit in (1, 7, 100):
            assert listed(session, **filters, limit=limit) == expected[:limit], (filters, limit)
        # Page after page with --before: every job once, in order.
        pages: list[int] = []
        before = None
        while True:
            page = listed(session, **filters, limit=7, before=before)
            pages += page
            if len(page) < 7:
                break
            before = page[-1]
        assert pages == expected, filters
        # The same with the printed hint's cursor, the last row's key (ties included).
        keyed: list[int] = []
        cursor = None
        while True:
            rows = list_jobs(session, **filters, limit=7, before=cursor)
            keyed += [row["id"] for row in rows]
            if len(rows) < 7:
                break
            cursor = PageCursor(rows[-1]["id"], rows[-1]["status_changed_at"])
        assert keyed == expected, filters
        if expected:
            middle = expected[len(expected) // 2]
            after = expected[len(expected) // 2 + 1 :]
            assert listed(session, **filters, before=middle) == after
    with pytest.raises(JobNotFound):
        list_jobs(session, limit=5, before=10**9)


def test_jobs_list_before_option(joblife_env: str, engine: Engine, mixed) -> None:
    everything = [job["id"] for job in run_json("jobs", "list", "--limit", "0")]
    first = run("jobs", "list", "--limit", "5")
    assert f"next page: --before {everything[4]}" in first.stdout
    second = run_json("jobs", "list", "--limit", "5", "--before", str(everything[4]))
    assert [job["id"] for job in second] == everything[5:10]
    result = run("jobs", "list", "--before", "999999999")
    assert result.exit_code == 1 and "job 999999999 not found" in result.stderr


def test_stale_reads_the_oldest_of_each_status_across_types(
    engine: Engine, session: Session, mixed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "JOBLIFE_STALE_AFTER_SECONDS", '{"initialized": 0, "ready": 0, "processed": 0}'
    )
    get_settings.cache_clear()
    settings = get_settings()
    now = utc_now() + timedelta(seconds=1)
    # Configured jobs wait for their type's own dependency deadline: past for one type.
    job_types: dict[str, Any] = {
        "example": type("Due", (), {"DEPENDENCY_TIMEOUT": timedelta(0)}),
        "test": type("NotDue", (), {"DEPENDENCY_TIMEOUT": timedelta(days=1)}),
    }
    plain = run_sql(
        engine,
        "SELECT id FROM jobs WHERE status IN (1, 3, 9) OR (status = 2 AND job_type = 'example') "
        "ORDER BY status_changed_at, id",
    )
    expected = [row[0] for row in plain]
    assert len(expected) > 10
    [(not_due,)] = run_sql(
        engine, "SELECT count(*) FROM jobs WHERE status = 2 AND job_type = 'test'"
    )
    assert not_due > 0
    for limit in (3, 10, 1000):
        with Session(engine) as s:
            found = stale_jobs(s, settings, job_types, now, limit)
        assert [job.job_id for job in found] == expected[:limit]


def _timeliness_0006(engine: Engine) -> None:
    """Revision 0006's job_timeliness_summary, installed beside the new one."""
    path = next(
        p / "0014_job_counts.py"
        for p in migrate.version_locations()
        if (p / "0014_job_counts.py").exists()
    )
    spec = importlib.util.spec_from_file_location("joblife_revision_0014", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    old = module._TIMELINESS_0006.replace(
        "FUNCTION job_timeliness_summary(", "FUNCTION job_timeliness_summary_0006("
    )
    with engine.begin() as conn:
        conn.exec_driver_sql(old.replace("%", "%%"))


def test_timeliness_is_revision_0006s(engine: Engine, session: Session, mixed) -> None:
    _timeliness_0006(engine)
    windows = [
        (None, None),
        (BASE + timedelta(hours=30), None),
        (None, BASE + timedelta(hours=50)),
        (BASE + timedelta(hours=20), BASE + timedelta(hours=60)),
        (BASE + timedelta(days=30), None),
    ]
    for since, until in windows:
        for target in (timedelta(hours=1), timedelta(hours=3)):
            new = timeliness_summary(session, target, since, until)
            old = session.execute(
                text(
                    "SELECT * FROM job_timeliness_summary_0006(make_interval(secs => :t), "
                    ":since, :until)"
                ),
                {"t": target.total_seconds(), "since": since, "until": until},
            ).all()
            assert [
                (
                    r.job_type,
                    r.published,
                    r.pending,
                    r.p50_seconds,
                    r.p90_seconds,
                    r.p99_seconds,
                    r.max_seconds,
                    r.within_target,
                    r.within_target_share,
                )
                for r in new
            ] == [tuple(r) for r in old], (since, until, target)
    assert any(r.published and r.pending for r in timeliness_summary(session, timedelta(hours=3)))
