"""The dashboard's Jobs and Job page reads (:mod:`joblife.web.job_reads`): every filter and
order against a plain query over every row, pages that follow their cursor, bounded
searches that continue, the bulk-action ids, and one job's timeline and attempts."""

from __future__ import annotations

import base64
import json
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from joblife.config import get_settings
from joblife.db.status import acknowledge_jobs, set_job_status
from joblife.jobtypes.test_job import TestJob
from joblife.model import JobStatus, Priority
from joblife.web import job_reads
from joblife.web.job_reads import (
    SORTS,
    JobFilter,
    count_matching,
    job_detail,
    matching_ids,
    search_jobs,
)
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from tests.support.example_type import ExampleJob
from tests.support.factories import PATH_TO
from tests.test_roles import run as run_sql

S = JobStatus
FINAL = [
    S.INITIALIZED,
    S.CONFIGURED,
    S.READY,
    S.QUEUED,
    S.DONE,
    S.CANCELLED,
    S.EXTERNAL_ERROR,
    S.INTERNAL_ERROR,
    S.ERROR_CHECKED,
    S.PROCESSED,
]
ERRORS = [
    "ExternalJobError: Disk full on node-3",
    "timeout contacting S3 at s3.example",
    "science step failed with return code 2; last log lines in the status details",
]
TILES = ["31TCJ", "31TCK", "32ULU", None]


@pytest.fixture
def population(session: Session) -> list[int]:
    """60 jobs of two types in ten statuses (moved in halves, in one transaction per step:
    many ties in status_changed_at), with tiles, priorities and error messages; the
    acknowledged errors' last message is the acknowledgement."""
    rng = random.Random(42)
    jobs: list[Any] = []
    for cls, prefix in ((ExampleJob, "S2A_MSIL1C_"), (TestJob, "S2B_MSIL2A_")):
        jobs += [
            cls(
                input_product_id=f"{prefix}{i:03d}",
                tile_id=rng.choice(TILES),
                priority=rng.choice([1, 1, 2, 3]),
            )
            for i in range(30)
        ]
    session.add_all(jobs)
    session.commit()
    by_status: dict[JobStatus, list[int]] = {}
    for job in jobs:
        by_status.setdefault(rng.choice(FINAL), []).append(job.id)
    for status, members in by_status.items():
        for step in PATH_TO[status]:
            for part in (members[: len(members) // 2], members[len(members) // 2 :]):
                if not part:
                    continue
                if step is S.ERROR_CHECKED:
                    acknowledge_jobs(session, part, "seen by ops")
                    continue
                failing = step in (S.INTERNAL_ERROR, S.EXTERNAL_ERROR)
                set_job_status(session, part, step, message=rng.choice(ERRORS) if failing else None)
            session.commit()
    return [job.id for job in jobs]


def reference(engine: Engine, flt: JobFilter) -> list[int]:
    """The ids ``flt`` matches in its order, by a plain query over every row."""
    where, params = ["true"], {}
    if flt.job_type is not None:
        where.append("j.job_type = :job_type")
        params["job_type"] = flt.job_type
    if flt.statuses:
        where.append("j.status = ANY (:statuses)")
        params["statuses"] = [int(s) for s in flt.statuses]
    if flt.priority is not None:
        where.append("j.priority = :priority")
        params["priority"] = int(flt.priority)
    if flt.changed_from is not None:
        where.append("j.status_changed_at >= :changed_from")
        params["changed_from"] = flt.changed_from
    if flt.changed_to is not None:
        where.append("j.status_changed_at < :changed_to")
        params["changed_to"] = flt.changed_to
    if flt.product is not None:
        operator = "starts_with({0}, :product)" if flt.product_prefix else "{0} = :product"
        columns = ("j.input_product_id", "j.tile_id")
        where.append("(" + " OR ".join(operator.format(c) for c in columns) + ")")
        params["product"] = flt.product
    if flt.error_text is not None:
        where.append(
            "j.status IN (13, 14, 15) AND strpos(lower((SELECT h.message "
            "FROM job_status_changes h WHERE h.job_id = j.id AND h.status IN (13, 14) "
            "ORDER BY h.id DESC LIMIT 1)), lower(:error)) > 0"
        )
        params["error"] = flt.error_text
    direction = "DESC" if flt.sort.endswith("desc") else "ASC"
    order = f"j.id {direction}"
    if flt.sort.startswith("changed"):
        order = f"j.status_changed_at {direction}, {order}"
    sql = f"SELECT j.id FROM jobs j WHERE {' AND '.join(where)} ORDER BY {order}"
    return [row[0] for row in run_sql(engine, sql, **params)]


def all_pages(session: Session, flt: JobFilter, limit: int, **kw: Any) -> list[job_reads.JobPage]:
    pages = [search_jobs(session, flt, limit=limit, **kw)]
    while pages[-1].next_cursor is not None:
        assert len(pages) < 100, "the cursor does not advance"
        pages.append(search_jobs(session, flt, after=pages[-1].next_cursor, limit=limit, **kw))
    return pages


def ids_of(pages: list[job_reads.JobPage]) -> list[int]:
    return [row.id for page in pages for row in page.rows]


def middle_time(engine: Engine, fraction: float) -> datetime:
    return run_sql(
        engine,
        "SELECT percentile_disc(:f) WITHIN GROUP (ORDER BY status_changed_at) FROM jobs",
        f=fraction,
    )[0][0]


def filter_cases(engine: Engine) -> list[JobFilter]:
    since, until = middle_time(engine, 0.3), middle_time(engine, 0.8)
    return [
        JobFilter(),
        JobFilter(job_type="test"),
        JobFilter(statuses=(S.DONE, S.EXTERNAL_ERROR)),
        JobFilter(job_type="example", statuses=(S.INITIALIZED, S.CANCELLED)),
        JobFilter(priority=Priority.DELAYED),
        JobFilter(changed_from=since),
        JobFilter(changed_from=since, changed_to=until),
        JobFilter(changed_to=until, job_type="example"),
        JobFilter(product="S2A_MSIL1C_007"),
        JobFilter(product="S2B_MSIL2A_01", product_prefix=True),
        JobFilter(product="31TCJ"),
        JobFilter(product="31TC", product_prefix=True, job_type="test"),
        JobFilter(product="S2_", product_prefix=True),  # _ is no wildcard: nothing
        JobFilter(product="S2A_", product_prefix=True, statuses=(S.DONE, S.READY)),
        JobFilter(error_text="DISK FULL"),
        JobFilter(error_text="s3", statuses=(S.ERROR_CHECKED,)),
        JobFilter(error_text="return code", priority=Priority.NRT),
        JobFilter(error_text="disk", statuses=(S.DONE,)),  # not an error status: nothing
        JobFilter(job_type="example", priority=Priority.NRT, changed_from=since),
        JobFilter(job_type="nosuch"),
    ]


def may_truncate(flt: JobFilter, primary_key: bool) -> bool:
    """Whether a search may stop at its scan bound: a filter is applied to the rows read."""
    if flt.product is not None:
        return False
    residual = flt.priority is not None or flt.error_text is not None
    if flt.sort.startswith("id"):
        narrowed = bool(flt.job_type or flt.statuses or flt.error_text)
        window = bool(flt.changed_from or flt.changed_to)
        if primary_key or not narrowed:
            residual = residual or narrowed or window
    return residual


@pytest.mark.parametrize("primary_key", [False, True], ids=["indexes", "primary-key"])
def test_every_filter_in_every_order_pages_through_the_plain_querys_rows(
    engine: Engine,
    session: Session,
    population: list[int],
    primary_key: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if primary_key:  # the id orders' read of the primary key, whatever the filter
        monkeypatch.setattr(job_reads, "ID_INDEX_READ", 0)
    nonempty = 0
    for case in filter_cases(engine):
        for sort in [s for s in SORTS if s.startswith("id") or not primary_key]:
            flt = replace(case, sort=sort)
            expected = reference(engine, flt)
            nonempty += bool(expected)
            first = search_jobs(session, flt, limit=100)
            assert [r.id for r in first.rows] == expected, flt
            assert first.next_cursor is None and not first.truncated_search
            pages = all_pages(session, flt, limit=7)
            assert ids_of(pages) == expected, flt
            assert all(len(p.rows) == 7 for p in pages[:-1])
            # A scan bound far below the data: short pages, flagged, that go on.
            pages = all_pages(session, flt, limit=4, scan_limit=5)
            assert ids_of(pages) == expected, flt
            if not may_truncate(flt, primary_key):
                assert not any(p.truncated_search for p in pages), flt
    assert nonempty > 25  # the cases are not vacuous
    assert len(population) == 60


def test_filters_narrow_and_rows_carry_the_jobs_fields(
    engine: Engine, session: Session, population: list[int]
) -> None:
    everything = search_jobs(session, JobFilter(), limit=500).rows
    assert sorted(r.id for r in everything) == sorted(population)
    for case in filter_cases(engine)[1:]:
        rows = search_jobs(session, case, limit=500).rows
        assert len(rows) < len(everything), case
    row = next(r for r in everything if r.status is S.EXTERNAL_ERROR)
    stored = run_sql(
        engine,
        "SELECT job_type, priority, input_product_id, tile_id, attempt, max_attempts, "
        "status_changed_at, created_at FROM jobs WHERE id = :id",
        id=row.id,
    )[0]
    assert (row.job_type, int(row.priority), row.input_product_id, row.tile_id) == tuple(stored[:4])
    assert (row.attempt, row.max_attempts, row.status_changed_at, row.created_at) == tuple(
        stored[4:]
    )
    assert row.message in ERRORS
    acknowledged = next(r for r in everything if r.status is S.ERROR_CHECKED)
    assert acknowledged.message == "seen by ops"
    ready = next(r for r in everything if r.status is S.READY)
    assert ready.message is None  # set without a message


def test_three_pages_each_job_once(engine: Engine, session: Session, population) -> None:
    for sort in SORTS:
        flt = JobFilter(job_type="example", sort=sort)
        expected = reference(engine, flt)
        pages = all_pages(session, flt, limit=-(-len(expected) // 3))
        assert len(pages) == 3
        ids = ids_of(pages)
        assert ids == expected and len(set(ids)) == len(ids) == 30


def test_a_page_is_not_disturbed_by_jobs_that_move(
    engine: Engine, session: Session, population: list[int]
) -> None:
    flt = JobFilter(sort="changed_asc")
    first = search_jobs(session, flt, limit=10)
    expected = reference(engine, flt)[10:]
    # The first page's jobs move on (a new status change, at the end of the order).
    moved = [r.id for r in first.rows if r.status is S.INITIALIZED]
    assert moved
    set_job_status(session, moved, S.READY)
    session.commit()
    rest = search_jobs(session, flt, after=first.next_cursor, limit=500)
    assert [r.id for r in rest.rows] == expected + moved


def test_a_bounded_search_says_so_and_goes_on(
    engine: Engine, session: Session, population: list[int]
) -> None:
    flt = JobFilter(priority=Priority.REPROCESSING, sort="id_asc")
    expected = reference(engine, flt)
    first = search_jobs(session, flt, limit=50, scan_limit=10)
    # Only the 10 oldest jobs were examined: those of them that match, and a cursor after
    # the 10th job.
    assert [r.id for r in first.rows] == [i for i in expected if i <= min(population) + 9]
    assert first.truncated_search and first.truncated_by == "scan"
    rest = search_jobs(session, flt, after=first.next_cursor, limit=50)
    assert [r.id for r in first.rows + rest.rows] == expected
    assert not rest.truncated_search and rest.next_cursor is None


def test_product_candidates_are_bounded(
    session: Session, population: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_reads, "PRODUCT_CANDIDATES", 3)
    page = search_jobs(session, JobFilter(product="S2A_", product_prefix=True), limit=50)
    assert page.truncated_search and page.truncated_by == "product"
    assert len(page.rows) == 3 and page.next_cursor is None
    page = search_jobs(session, JobFilter(product="S2A_MSIL1C_001"), limit=50)
    assert len(page.rows) == 1 and not page.truncated_search


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "!!!!",
        "",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b'{"a": 1}').decode(),
        base64.urlsafe_b64encode(b'["changed_desc", "7", "2026-11-01T00:00:00+00:00"]').decode(),
        base64.urlsafe_b64encode(b'["changed_desc", 7, "yesterday"]').decode(),
        base64.urlsafe_b64encode(b'["changed_desc", 7, "2026-11-01T00:00:00"]').decode(),
        base64.urlsafe_b64encode(b'["changed_desc", 7]').decode(),
        base64.urlsafe_b64encode(b'["sideways", 7]').decode(),
        "A" * 500,
    ],
)
def test_a_garbage_cursor_is_refused(session: Session, cursor: str) -> None:
    with pytest.raises(ValueError, match="cursor"):
        search_jobs(session, JobFilter(), after=cursor)


def test_a_cursor_of_another_order_is_refused(session: Session, population: list[int]) -> None:
    page = search_jobs(session, JobFilter(sort="id_desc"), limit=5)
    assert page.next_cursor is not None
    assert json.loads(base64.urlsafe_b64decode(page.next_cursor + "=="))[0] == "id_desc"
    with pytest.raises(ValueError, match="order 'id_desc'"):
        search_jobs(session, JobFilter(), after=page.next_cursor)
    with pytest.raises(ValueError, match="limit"):
        search_jobs(session, JobFilter(), limit=0)


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ({"status": "done,bogus"}, "status: unknown job status 'bogus'"),
        ({"priority": "4"}, "invalid priority 4"),
        ({"priority": "urgent"}, "unknown priority 'urgent'"),
        ({"changed_from": "last tuesday"}, "invalid changed_from 'last tuesday'"),
        ({"changed_to": "2026-13-01"}, "invalid changed_to"),
        ({"changed_from": "2026-11-02", "changed_to": "2026-11-01"}, "before changed_to"),
        ({"sort": "random"}, "unknown sort 'random'"),
        ({"type": "Robert'); DROP TABLE jobs;--"}, "invalid job type"),
        ({"product": "*"}, "at least one character before *"),
        ({"error": "x" * 201}, "longer than 200"),
    ],
)
def test_bad_filter_values_are_refused(query: dict[str, str], fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        JobFilter.from_query(query)
    assert fragment in str(info.value)


def test_query_strings_round_trip() -> None:
    flt = JobFilter.from_query(
        {
            "type": "example",
            "status": "external_error, DONE,external_error",
            "priority": "2",
            "changed_from": "2026-11-01",
            "changed_to": "2026-11-02T08:30+01:00",
            "product": "S2A_*",
            "error": "disk full",
            "sort": "id_asc",
            "after": "ignored: the page's own",
            "unknown": "ignored",
        }
    )
    assert flt.statuses == (S.DONE, S.EXTERNAL_ERROR)
    assert flt.priority is Priority.DELAYED
    assert flt.changed_from == datetime(2026, 11, 1, tzinfo=UTC)
    assert flt.changed_to == datetime(2026, 11, 2, 7, 30, tzinfo=UTC)
    assert (flt.product, flt.product_prefix) == ("S2A_", True)
    query = flt.to_query()
    assert query == {
        "type": "example",
        "status": "done,external_error",
        "priority": "delayed",
        "changed_from": "2026-11-01T00:00:00Z",
        "changed_to": "2026-11-02T07:30:00Z",
        "product": "S2A_*",
        "error": "disk full",
        "sort": "id_asc",
    }
    assert JobFilter.from_query(query) == flt and hash(JobFilter.from_query(query)) == hash(flt)
    assert JobFilter.from_query({"type": "", "status": "", "sort": ""}) == JobFilter()
    assert JobFilter().to_query() == {}


def test_matching_ids_and_counts_are_capped(
    engine: Engine, session: Session, population: list[int]
) -> None:
    for flt in (
        JobFilter(),
        JobFilter(job_type="example", statuses=(S.DONE, S.READY, S.INITIALIZED)),
        JobFilter(priority=Priority.NRT, sort="id_asc"),
        JobFilter(product="S2B_", product_prefix=True, sort="changed_asc"),
        JobFilter(error_text="S"),
    ):
        expected = reference(engine, flt)
        assert len(expected) > 3, flt
        assert matching_ids(session, flt, cap=1000) == (expected, False)
        assert matching_ids(session, flt, cap=len(expected)) == (expected, False)
        assert matching_ids(session, flt, cap=3) == (expected[:3], True)
        assert count_matching(session, flt, cap=1000) == (len(expected), False)
        assert count_matching(session, flt, cap=3) == (3, True)
    # A filter no index serves that examined its bound: it says it may miss some.
    flt = JobFilter(priority=Priority.REPROCESSING)
    ids, truncated = matching_ids(session, flt, cap=1, scan_limit=1)
    assert truncated and len(ids) <= 1
    with pytest.raises(ValueError, match="cap"):
        matching_ids(session, flt, cap=0)


def test_product_indexes_serve_the_product_filter(engine: Engine, population) -> None:
    """The product filter's indexes (revision 0019): the candidates are read by index
    ranges, exact or by prefix, whatever the collation."""
    with engine.begin() as conn:
        conn.execute(text("ANALYZE jobs"))
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        for product in ("S2A\\_MSIL1C\\_00%", "31TCJ"):
            operator = "LIKE" if product.endswith("%") else "="
            plan = "\n".join(
                conn.execute(
                    text(
                        f"EXPLAIN SELECT j.id FROM jobs j WHERE (j.input_product_id {operator} "
                        f":p OR j.tile_id {operator} :p) LIMIT 10"
                    ),
                    {"p": product},
                ).scalars()
            )
            assert "ix_jobs_input_product_pattern" in plan, plan
            assert "ix_jobs_tile_pattern" in plan, plan


# -- the Job page -------------------------------------------------------------------------

BASE = datetime(2026, 11, 3, 8, 0, tzinfo=UTC)
LOG_TAIL = ["reading band B04", "Traceback (most recent call last):", "MemoryError"]


def _walk(session: Session, job_id: int, steps: list[tuple[JobStatus, str | None, dict]]) -> None:
    for status, message, details in steps:
        set_job_status(session, job_id, status, message=message, details=details or None)
        session.commit()


def _queue(session: Session, engine: Engine, job_id: int, reference: str) -> None:
    """ready → queued as the dispatcher does it: the attempt counted, its reference kept."""
    set_job_status(session, job_id, S.QUEUED, message="dispatch requested")
    session.commit()
    run_sql(
        engine,
        "UPDATE jobs SET attempt = attempt + 1, nomad_job_id = :ref WHERE id = :id",
        ref=reference,
        id=job_id,
    )


@pytest.fixture
def three_attempts(session: Session, engine: Engine) -> int:
    """A job that failed in its worker (attempt 1), was failed by the monitor (attempt 2),
    then succeeded and is publishing (attempt 3); its history dated minute after minute
    from BASE."""
    (job,) = [ExampleJob(input_product_id="S2A_T31TCJ_0001", tile_id="31TCJ", band="B04")]
    session.add(job)
    session.commit()
    job_id = job.id

    def attempt(n: int) -> list[tuple[JobStatus, str | None, dict]]:
        return [
            (S.STARTED, f"attempt {n} started", {"attempt": n, "host": f"node-{n}", "pid": n}),
            (S.PRE_PROCESSING, None, {"attempt": n}),
            (S.PROCESSING, None, {"attempt": n}),
        ]

    _walk(session, job_id, [(S.READY, None, {})])
    _queue(session, engine, job_id, "local:1-1-x")
    failure = {
        "attempt": 1,
        "durations": {"pre_processing": 1.5, "processing": 20.0},
        "log_tail": LOG_TAIL,
        "logs": "file:///logs/1",
    }
    _walk(session, job_id, [*attempt(1), (S.EXTERNAL_ERROR, "MemoryError: out", failure)])
    _walk(session, job_id, [(S.READY, "automatic retry after backoff", {})])
    _queue(session, engine, job_id, "joblife-example/dispatch-2")
    stale = {"attempt": 2, "reference": "joblife-example/dispatch-2"}
    _walk(session, job_id, [*attempt(2), (S.EXTERNAL_ERROR, "heartbeat stale", stale)])
    _walk(session, job_id, [(S.READY, "automatic retry after backoff", {})])
    _queue(session, engine, job_id, "joblife-example/dispatch-3")
    processed = {
        "attempt": 3,
        "return_code": 0,
        "durations": {"pre_processing": 1.0, "processing": 30.0, "post_processing": 2.0},
        "outputs": "s3://out/S2A_T31TCJ_0001",
        "produced_at": "2026-11-03T08:20:00+00:00",
        "upload": {"files": 2, "bytes": 2048, "seconds": 0.5},
    }
    _walk(
        session,
        job_id,
        [
            *attempt(3),
            (S.POST_PROCESSING, None, {"attempt": 3, "return_code": 0}),
            (S.PROCESSED, None, processed),
            (S.START_PUBLICATION, "publication started", {"stage": "publication"}),
        ],
    )
    run_sql(
        engine,
        "INSERT INTO publications (job_id, attempt, product, message_id, body, published_at) "
        "VALUES (:id, 3, 'mask', 'm-1', '{}', now()), (:id, 3, 'quicklook', 'm-2', '{}', NULL)",
        id=job_id,
    )
    with engine.begin() as conn:  # date the history a minute apart (test set-up)
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(
            text(
                "UPDATE job_status_changes c SET time = :base + make_interval(mins => n.rank::int) "
                "FROM (SELECT id, rank() OVER (ORDER BY id) - 1 AS rank "
                "FROM job_status_changes WHERE job_id = :id) n WHERE c.id = n.id"
            ),
            {"base": BASE, "id": job_id},
        )
    return job_id


def test_job_detail_timeline_durations_and_attempts(
    session: Session, joblife_env: str, three_attempts: int
) -> None:
    now = BASE + timedelta(hours=1)
    detail = job_detail(session, three_attempts, get_settings(), now=now)
    assert detail is not None
    assert (detail.id, detail.job_type, detail.status) == (
        three_attempts,
        "example",
        S.START_PUBLICATION,
    )
    assert detail.priority is Priority.NRT
    assert detail.job["input_product_id"] == "S2A_T31TCJ_0001"
    assert detail.job["attempt"] == 3 and "waiting_for" in detail.job
    assert detail.type_fields == {"band": "B04", "resolution_m": None}
    assert detail.type_error is None

    timeline = detail.timeline
    assert [s.time for s in timeline] == [BASE + timedelta(minutes=i) for i in range(len(timeline))]
    assert timeline[0].previous_status is None and timeline[0].status is S.INITIALIZED
    assert all(s.duration == timedelta(minutes=1) for s in timeline[:-1])
    assert timeline[-1].current and timeline[-1].duration == now - timeline[-1].time
    assert not any(s.current for s in timeline[:-1])
    assert timeline[-1].details == {"stage": "publication"}

    first, second, third = detail.attempts
    assert [a.number for a in detail.attempts] == [1, 2, 3]
    queued = [s.time for s in timeline if s.status is S.QUEUED]
    started = [s.time for s in timeline if s.status is S.STARTED]
    assert [a.queued_at for a in detail.attempts] == queued
    assert [a.started_at for a in detail.attempts] == started
    assert [(a.host, a.pid) for a in detail.attempts] == [
        ("node-1", 1),
        ("node-2", 2),
        ("node-3", 3),
    ]
    assert (first.outcome, first.message) == (S.EXTERNAL_ERROR, "MemoryError: out")
    assert first.log_tail == LOG_TAIL and first.logs_url == "file:///logs/1"
    assert first.durations == {"pre_processing": 1.5, "processing": 20.0}
    assert first.reference is None  # an earlier attempt's reference is not kept
    assert first.duration == timedelta(minutes=4)  # queued .. external_error
    assert second.outcome is S.EXTERNAL_ERROR and second.message == "heartbeat stale"
    assert (second.reference, second.executor) == ("joblife-example/dispatch-2", "nomad")
    assert third.outcome is S.PROCESSED and third.return_code == 0
    assert third.reference == "joblife-example/dispatch-3"
    assert third.ended_at == next(s.time for s in timeline if s.status is S.PROCESSED)
    assert detail.log_tail == LOG_TAIL

    outputs = detail.outputs
    assert (outputs.url, outputs.attempt, outputs.files, outputs.bytes) == (
        "s3://out/S2A_T31TCJ_0001",
        3,
        2,
        2048,
    )
    assert [(p["product"], p["state"]) for p in detail.publications] == [
        ("quicklook", "pending"),
        ("mask", "published"),
    ]


def test_job_detail_of_a_job_in_flight_and_of_no_job(
    session: Session, engine: Engine, joblife_env: str
) -> None:
    job = TestJob(input_product_id="S2B_X")
    session.add(job)
    session.commit()
    _walk(session, job.id, [(S.READY, None, {})])
    _queue(session, engine, job.id, "local:7-1-abc")
    _walk(session, job.id, [(S.STARTED, "attempt 1 started", {"attempt": 1, "pid": 99})])
    detail = job_detail(session, job.id, get_settings())
    assert detail is not None
    (attempt,) = detail.attempts
    assert attempt.ended_at is None and attempt.outcome is None and attempt.duration is None
    assert (attempt.reference, attempt.executor, attempt.pid) == ("local:7-1-abc", "local", 99)
    assert detail.timeline[-1].current and detail.timeline[-1].duration >= timedelta(0)
    assert detail.outputs.url is None and detail.publications == []
    assert detail.log_tail == []
    # An operator's cancel ends the attempt in flight.
    set_job_status(session, job.id, S.CANCELLED, message="cancelled by an operator")
    session.commit()
    (attempt,) = job_detail(session, job.id, get_settings()).attempts
    assert attempt.outcome is S.CANCELLED and attempt.message == "cancelled by an operator"
    assert job_detail(session, 10**12, get_settings()) is None
