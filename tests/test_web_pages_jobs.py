"""The dashboard's Jobs and Job pages over HTTP against the app on a real database: the
list's filters and pages, bad values refused with 400, everything about one job, and the
operator's actions from both pages (a viewer gets no controls)."""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from joblife.db.status import set_job_status
from joblife.jobtypes.test_job import TestJob
from joblife.model import JobStatus
from joblife.web.filter_query import parse_filter
from joblife.web.job_reads import JobFilter
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session
from starlette.datastructures import MultiDict
from starlette.testclient import TestClient

from tests.support.factories import make_jobs, move_to
from tests.support.web import OPERATOR, VIEWER, WebApp, csrf_from, login
from tests.test_web_job_reads import LOG_TAIL, three_attempts  # noqa: F401 - a fixture
from tests.test_web_pages_overview import by_testid

S = JobStatus
NOMAD_UI = "https://nomad.example:4646/ui"
ACTIONS = ("retry", "acknowledge", "republish", "cancel")


def ids(jobs: list[Any]) -> list[int]:
    return [job.id for job in jobs]


def row_ids(page: str) -> list[int]:
    """The job ids of the list's rows, in order."""
    return [int(i) for i in re.findall(r'data-testid="job-row-(\d+)"', page)]


def next_link(page: str) -> str | None:
    match = re.search(r'<a rel="next" href="([^"]+)" data-testid="next-page">', page)
    return html.unescape(match.group(1)) if match else None


def hidden_fields(fragment: str) -> list[tuple[str, str]]:
    """The hidden inputs of a form, as (name, value)."""
    return [
        (html.unescape(name), html.unescape(value))
        for name, value in re.findall(
            r'<input type="hidden" name="([^"]+)" value="([^"]*)">', fragment
        )
    ]


def form_data(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Form fields for the test client (repeated names kept)."""
    data: dict[str, list[str]] = {}
    for name, value in pairs:
        data.setdefault(name, []).append(value)
    return data


def statuses(engine: Engine, job_ids: list[int]) -> dict[int, JobStatus]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, status FROM jobs WHERE id = ANY (:ids)"), {"ids": job_ids}
        )
        return {row.id: JobStatus(row.status) for row in rows}


def operators_of(engine: Engine, job_ids: list[int], action: str) -> list[str]:
    """Who the history says did ``action`` to the jobs."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT DISTINCT details->>'operator' FROM job_status_changes "
                    "WHERE job_id = ANY (:ids) AND details->>'action' = :action"
                ),
                {"ids": job_ids, "action": action},
            ).scalars()
        )


def fail(session: Session, job_ids: list[int], status: JobStatus, message: str) -> None:
    """initialized → ready → ``status`` with ``message``."""
    set_job_status(session, job_ids, S.READY)
    set_job_status(session, job_ids, status, message=message)
    session.commit()


@pytest.fixture
def viewer(web_client: TestClient) -> TestClient:
    login(web_client, VIEWER)
    return web_client


@pytest.fixture
def operator(web_client: TestClient) -> TestClient:
    login(web_client, OPERATOR)
    return web_client


# -- the Jobs page --------------------------------------------------------------------------


@pytest.fixture
def mixed(session: Session) -> dict[str, list[int]]:
    """Example jobs failed with two messages, ready and done, and a job of another type."""
    disk = ids(make_jobs(session, 3, "DSK"))
    timeout = ids(make_jobs(session, 2, "TMO"))
    ready = ids(make_jobs(session, 2, "RDY", tile_id="31TCJ"))
    done = ids(make_jobs(session, 1, "DON"))
    other = TestJob(input_product_id="DSK_OTHER")
    session.add(other)
    session.commit()
    fail(session, disk, S.EXTERNAL_ERROR, "disk full on node 7")
    fail(session, timeout, S.INTERNAL_ERROR, "timeout <after> 30 s")
    fail(session, [other.id], S.EXTERNAL_ERROR, "disk full on node 8")
    move_to(session, ready, S.READY)
    move_to(session, done, S.DONE)
    return {
        "disk": disk,
        "timeout": timeout,
        "ready": ready,
        "done": done,
        "other": [other.id],
    }


def test_the_list_filters_by_type_status_product_and_error(
    viewer: TestClient, mixed: dict[str, list[int]]
) -> None:
    example = [*mixed["disk"], *mixed["timeout"], *mixed["ready"], *mixed["done"]]
    cases = {
        "": [*example, *mixed["other"]],
        "type=example": example,
        "type=test": mixed["other"],
        "status=external_error": [*mixed["disk"], *mixed["other"]],
        "status=ready&status=done": [*mixed["ready"], *mixed["done"]],
        "status=ready,internal_error&type=example": [*mixed["ready"], *mixed["timeout"]],
        "product=DSK000001": mixed["disk"][1:2],
        "product=DSK*": [*mixed["disk"], *mixed["other"]],
        "product=31TCJ": mixed["ready"],  # a tile id
        "error=DISK+FULL": [*mixed["disk"], *mixed["other"]],
        "error=disk&type=example": mixed["disk"],
        "error=%3Cafter%3E": mixed["timeout"],
        "priority=reprocessing": [],
        "type=example&status=cancelled": [],
    }
    for query, expected in cases.items():
        page = viewer.get(f"/jobs?{query}")
        assert page.status_code == 200, (query, page.text)
        assert sorted(row_ids(page.text)) == sorted(expected), query
        if not expected:
            assert 'data-testid="no-jobs"' in page.text
    # Newest status change first (the default order), and the row's own fields.
    page = viewer.get("/jobs?type=example&status=internal_error").text
    row = by_testid(page, f"job-row-{mixed['timeout'][0]}")
    assert 'class="status status-internal_error"' in row
    assert f'href="/jobs/{mixed["timeout"][0]}"' in row
    assert "TMO000000" in row and "nrt" in row and "0/3" in row
    assert "timeout &lt;after&gt; 30 s" in row  # the last message, escaped
    # The form shows the filter it is showing (a shareable URL, the form filled from it).
    form = by_testid(page, "filter-form")
    assert '<option value="example" selected>' in form
    assert 'value="internal_error" checked' in form
    assert 'value="external_error" checked' not in form


def test_paging_with_the_next_links_reaches_every_job_once(
    viewer: TestClient, session: Session, engine: Engine
) -> None:
    jobs = ids(make_jobs(session, 8, "PG"))
    move_to(session, jobs[:5], S.READY)
    for sort in ("changed_desc", "changed_asc", "id_desc", "id_asc"):
        url: str | None = f"/jobs?type=example&sort={sort}&limit=3"
        seen: list[int] = []
        pages = 0
        while url is not None:
            page = viewer.get(url)
            assert page.status_code == 200, page.text
            pages += 1
            seen += row_ids(page.text)
            assert ('data-testid="first-page"' in page.text) == (pages > 1)
            url = next_link(page.text)
            if url is not None:
                query = parse_qs(urlsplit(url).query)
                assert query["sort"] == [sort] if sort != "changed_desc" else "sort" not in query
                assert query["limit"] == ["3"] and query["type"] == ["example"]
        assert sorted(seen) == sorted(jobs) and len(seen) == len(set(seen)), sort
        assert pages == 3, sort
        if sort == "id_asc":
            assert seen == sorted(jobs)
        if sort == "id_desc":
            assert seen == sorted(jobs, reverse=True)


def test_a_search_bounded_by_its_scan_says_so_and_pages_on(
    viewer: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    from joblife.web import job_reads

    jobs = ids(make_jobs(session, 6, "SC"))
    fail(session, jobs[:1], S.EXTERNAL_ERROR, "needle in the haystack")
    fail(session, jobs[1:], S.EXTERNAL_ERROR, "hay")
    # The page examines 2 jobs at most (search_jobs' default is read at call time).
    search = job_reads.search_jobs
    monkeypatch.setattr(
        "joblife.web.pages_jobs.search_jobs",
        lambda session, flt, **kw: search(session, flt, scan_limit=2, **kw),
    )
    url: str | None = "/jobs?error=needle&sort=id_desc"
    found, truncated = [], 0
    while url is not None:
        page = viewer.get(url).text
        found += row_ids(page)
        truncated += 'data-testid="truncated-search"' in page
        url = next_link(page)
    assert found == jobs[:1]
    assert truncated >= 2  # the first pages searched 2 jobs each without filling up


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=nosuch", "status: unknown job status &#39;nosuch&#39;"),
        ("priority=9", "invalid priority 9"),
        ("type=Bad-Type", "invalid job type &#39;Bad-Type&#39;"),
        ("changed_from=yesterday", "invalid changed_from &#39;yesterday&#39;"),
        ("changed_from=2026-11-02&changed_to=2026-11-01", "changed_from must be before"),
        ("product=*", "product: give at least one character before *"),
        ("sort=random", "unknown sort &#39;random&#39;"),
        ("after=garbage", "invalid cursor &#39;garbage&#39;"),
        # Positions the database would refuse (an offset past ±16 h, an id past a bigint).
        ("after=WyJjaGFuZ2VkX2Rlc2MiLDEsIjIwMjYtMDEtMDFUMDA6MDA6MDArMjA6MDAiXQ", "invalid cursor"),
        (
            "after=WyJjaGFuZ2VkX2Rlc2MiLDkyMjMzNzIwMzY4NTQ3NzU4MDgsIjIwMjYtMDEtMDFUMDA6MDA6MD"
            "ArMDA6MDAiXQ",
            "invalid cursor",
        ),
        ("limit=0", "limit: &#39;0&#39; is not a whole number from 1 to 500"),
        ("limit=x", "limit: &#39;x&#39;"),
        ("error=" + "x" * 201, "error_text is longer than 200 characters"),
        ("status=<script>", "&lt;script&gt;"),
        # PostgreSQL text cannot hold NUL: refused by name before any read, never a 500.
        ("product=a%00b", "product filter: must not contain a NUL character"),
        ("product=a%00*", "product filter: must not contain a NUL character"),
        ("error=a%00b", "error filter: must not contain a NUL character"),
        ("status=ready&status=%00", "status filter: must not contain a NUL character"),
    ],
)
def test_bad_filter_values_are_refused_with_400_and_the_form(
    viewer: TestClient, session: Session, query: str, message: str
) -> None:
    (job,) = make_jobs(session, 1, "BAD")  # a job the error text is searched in
    fail(session, [job.id], S.EXTERNAL_ERROR, "disk full")
    page = viewer.get(f"/jobs?{query}")
    assert page.status_code == 400
    assert message in by_testid(page.text, "filter-error")
    assert 'data-testid="filter-form"' in page.text  # to correct the value
    assert 'data-testid="jobs-table"' not in page.text
    assert "<script>" not in page.text.split("</head>")[1]


def test_a_cursor_of_another_order_is_refused(viewer: TestClient, session: Session) -> None:
    make_jobs(session, 3, "CUR")
    after = parse_qs(urlsplit(next_link(viewer.get("/jobs?limit=2").text) or "").query)["after"]
    page = viewer.get(f"/jobs?limit=2&sort=id_asc&after={after[0]}")
    assert page.status_code == 400
    assert "the cursor is of the order" in page.text


def test_a_filter_value_postgresql_cannot_store_is_refused_by_name_before_any_read() -> None:
    # What a query string cannot carry (Starlette decodes bad UTF-8 as U+FFFD), a
    # multi-dict or a plain mapping may: every value of every filter key is checked.
    for params, message in (
        ({"error": "a\udcffb"}, "error filter: must not contain a byte that is not valid UTF-8"),
        ({"product": "ok", "type": "a\x00"}, "type filter: must not contain a NUL character"),
        (MultiDict([("status", "ready"), ("status", "\x00")]), "status filter: must not"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_filter(params)
    assert parse_filter(MultiDict([("product", "AB*")])) == JobFilter(
        product="AB", product_prefix=True
    )


def test_a_failing_read_is_not_passed_off_as_a_bad_filter(
    viewer: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the request's values are answered 400: a ValueError of the read itself is a
    fault of joblife's (a 500, logged), not the operator's."""

    def broken(session: Session, flt: Any, **kwargs: Any) -> None:
        raise ValueError("a bug in the read")

    monkeypatch.setattr("joblife.web.pages_jobs.search_jobs", broken)
    with pytest.raises(ValueError, match="a bug in the read"):
        viewer.get("/jobs?product=ABC")


# -- the Job page ---------------------------------------------------------------------------


def test_the_job_page_shows_fields_timeline_attempts_and_publications(
    web_app: WebApp,
    viewer: TestClient,
    engine: Engine,
    three_attempts: int,  # noqa: F811
) -> None:
    web_app.app.state.settings = web_app.settings.model_copy(
        update={"web_nomad_ui_url": NOMAD_UI + "/"}
    )
    page = viewer.get(f"/jobs/{three_attempts}")
    assert page.status_code == 200
    text_ = page.text
    fields = by_testid(text_, "job-fields")
    for shown in ("input_product_id", "S2A_T31TCJ_0001", "31TCJ", "max_attempts", "due_at"):
        assert shown in fields, shown
    assert re.search(r"<th scope=\"row\">band</th><td class=\"jb-value\">B04</td>", fields)
    assert "resolution_m" in fields  # the type's own columns, even when empty

    timeline = by_testid(text_, "timeline")
    with engine.connect() as conn:
        changes = conn.execute(
            text("SELECT count(*) FROM job_status_changes WHERE job_id = :id"),
            {"id": three_attempts},
        ).scalar_one()
    assert timeline.count('data-testid="timeline-step"') == changes > 20
    assert "1 min 00 s" in timeline  # each step a minute long
    assert "<meter" in timeline
    assert "&#34;produced_at&#34;: &#34;2026-11-03T08:20:00+00:00&#34;" in timeline  # JSON
    assert "<details" in timeline

    assert "\n".join(LOG_TAIL) in by_testid(text_, "log-tail")

    attempts = by_testid(text_, "attempts")
    for n, reference in ((2, "dispatch-2"), (3, "dispatch-3")):
        row = by_testid(attempts, f"attempt-{n}")
        assert f'href="{NOMAD_UI}/jobs/joblife-example%2F{reference}"' in row
        assert f"node-{n}" in row
    first = by_testid(attempts, "attempt-1")
    assert "<a " not in first  # no reference kept, a file:// log URL: nothing linked
    assert "file:///logs/1" in first
    assert "MemoryError: out" in first

    outputs = by_testid(text_, "outputs")
    assert "s3://out/S2A_T31TCJ_0001" in outputs and "<a " not in outputs

    publications = by_testid(text_, "publications")
    mask = publications.index(">mask<")
    quicklook = publications.index(">quicklook<")
    assert quicklook < mask  # newest first
    assert "jb-pub-published" in publications[mask:] and "jb-pub-pending" in publications

    # Without a Nomad UI address, the reference is text.
    web_app.app.state.settings = web_app.settings
    attempts = by_testid(viewer.get(f"/jobs/{three_attempts}").text, "attempts")
    assert "joblife-example/dispatch-3" in attempts and "nomad.example" not in attempts


def test_the_job_page_escapes_what_jobs_report_and_links_only_web_urls(
    viewer: TestClient, session: Session
) -> None:
    (job,) = make_jobs(session, 1, "ESC", output_path="/data/out/<x>")
    set_job_status(session, job.id, S.READY)
    set_job_status(session, job.id, S.QUEUED)
    set_job_status(session, job.id, S.STARTED, details={"attempt": 1, "host": "<b>node</b>"})
    failure = {
        "attempt": 1,
        "log_tail": ["<script>alert(1)</script>", "a & b"],
        "logs": "https://logs.example/job/1?a=1&b=2",
    }
    set_job_status(session, job.id, S.EXTERNAL_ERROR, message="<i>boom</i>", details=failure)
    session.commit()
    page = viewer.get(f"/jobs/{job.id}").text
    assert "<script>alert" not in page and "<b>node" not in page and "<i>boom" not in page
    log = by_testid(page, "log-tail")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\na &amp; b" in log
    attempts = by_testid(page, "attempts")
    assert 'href="https://logs.example/job/1?a=1&amp;b=2"' in attempts
    assert "&lt;b&gt;node&lt;/b&gt;" in attempts
    outputs = by_testid(page, "outputs")
    assert "/data/out/&lt;x&gt;" in outputs and "<a " not in outputs


def test_an_unknown_job_is_404(viewer: TestClient) -> None:
    page = viewer.get("/jobs/999999999")
    assert page.status_code == 404
    assert "There is no job 999999999" in page.text


@pytest.mark.parametrize(
    ("status", "offered"),
    [
        (S.EXTERNAL_ERROR, {"retry", "acknowledge", "cancel"}),
        (S.INTERNAL_ERROR, {"retry", "acknowledge", "cancel"}),
        (S.ERROR_CHECKED, {"retry", "cancel"}),
        (S.READY, {"cancel"}),
        (S.DONE, {"republish"}),
        (S.PROCESSED, set()),
        (S.CANCELLED, set()),
    ],
)
def test_the_job_page_offers_the_actions_its_status_allows(
    operator: TestClient, session: Session, status: JobStatus, offered: set[str]
) -> None:
    (job,) = make_jobs(session, 1, "ACT")
    move_to(session, [job.id], status)
    page = operator.get(f"/jobs/{job.id}").text
    assert {a for a in ACTIONS if f'data-testid="action-{a}"' in page} == offered


def test_a_failed_job_with_products_of_its_attempt_may_be_republished(
    operator: TestClient, session: Session, engine: Engine
) -> None:
    (job,) = make_jobs(session, 1, "REP")
    move_to(session, [job.id], S.START_PUBLICATION)
    set_job_status(session, job.id, S.EXTERNAL_ERROR, message="unroutable")
    session.commit()
    assert 'data-testid="action-republish"' not in operator.get(f"/jobs/{job.id}").text
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO publications (job_id, attempt, product, message_id, body, error) "
                "VALUES (:id, 0, 'mask', 'm-1', '{}', 'NO_ROUTE')"
            ),
            {"id": job.id},
        )
    page = operator.get(f"/jobs/{job.id}").text
    assert 'data-testid="action-republish"' in page
    assert "NO_ROUTE" in by_testid(page, "publications")


# -- actions --------------------------------------------------------------------------------


def test_an_operator_retries_a_job_from_its_page(
    operator: TestClient, session: Session, engine: Engine
) -> None:
    jobs = ids(make_jobs(session, 2, "RT"))
    fail(session, jobs, S.EXTERNAL_ERROR, "disk full")
    page = operator.get(f"/jobs/{jobs[0]}").text
    actions = by_testid(page, "job-actions")
    assert f'action="/jobs/{jobs[0]}/action"' in actions
    form = dict(hidden_fields(actions))
    response = operator.post(
        f"/jobs/{jobs[0]}/action",
        data={**form, "action": "retry", "message": "disk replaced"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/jobs/{jobs[0]}"
    page = operator.get(f"/jobs/{jobs[0]}").text
    assert "retried 1 job" in by_testid(page, "flash")
    assert 'class="status status-ready"' in page.split("</h1>")[0]
    assert statuses(engine, jobs) == {jobs[0]: S.READY, jobs[1]: S.EXTERNAL_ERROR}
    assert operators_of(engine, jobs, "retry") == [OPERATOR]
    assert "disk replaced" in by_testid(page, "timeline")


def test_a_bulk_acknowledge_of_all_jobs_matching_the_filter_after_confirmation(
    operator: TestClient, engine: Engine, mixed: dict[str, list[int]]
) -> None:
    query = "type=example&status=external_error&error=disk"
    page = operator.get(f"/jobs?{query}&limit=2").text  # 3 match: more than the page
    assert len(row_ids(page)) == 2
    bulk = by_testid(page, "bulk-form")
    assert 'data-testid="select-all"' in bulk and 'data-testid="bulk-all-matching"' in bulk
    fields = hidden_fields(bulk)
    assert ("f_type", "example") in fields and ("f_error", "disk") in fields
    assert not any(name in ("f_after", "f_limit") for name, _ in fields)
    confirm = operator.post(
        "/jobs/actions",
        data=form_data([*fields, ("action", "acknowledge"), ("scope", "filter")]),
    )
    assert confirm.status_code == 200
    assert "3 jobs?" in confirm.text
    before = statuses(engine, [i for group in mixed.values() for i in group])
    assert set(before.values()) != {S.ERROR_CHECKED}  # nothing changed yet
    confirmed = hidden_fields(confirm.text.split('action="/jobs/actions"')[1])
    response = operator.post(
        "/jobs/actions", data=form_data([*confirmed, ("message", "seen")]), follow_redirects=False
    )
    assert response.status_code == 303
    back = urlsplit(response.headers["location"])
    assert back.path == "/jobs" and parse_qs(back.query) == parse_qs(query)
    after = statuses(engine, list(before))
    changed = {i for i in before if after[i] != before[i]}
    assert changed == set(mixed["disk"])
    assert {after[i] for i in changed} == {S.ERROR_CHECKED}
    assert operators_of(engine, mixed["disk"], "acknowledge") == [OPERATOR]
    assert "acknowledged 3 jobs" in operator.get(response.headers["location"]).text


def test_a_bulk_action_on_selected_rows(
    operator: TestClient, engine: Engine, mixed: dict[str, list[int]]
) -> None:
    page = operator.get("/jobs?status=internal_error").text
    fields = hidden_fields(by_testid(page, "bulk-form"))
    chosen = mixed["timeout"][:1]
    confirm = operator.post(
        "/jobs/actions",
        data=form_data(
            [*fields, ("action", "retry"), ("scope", "selected"), ("job_id", str(chosen[0]))]
        ),
    )
    assert "1 job?" in confirm.text
    confirmed = hidden_fields(confirm.text.split('action="/jobs/actions"')[1])
    operator.post("/jobs/actions", data=form_data(confirmed))
    assert statuses(engine, mixed["timeout"]) == {
        chosen[0]: S.READY,
        mixed["timeout"][1]: S.INTERNAL_ERROR,
    }


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("f_product", "product filter: must not contain a NUL character"),
        ("f_error", "error filter: must not contain a NUL character"),
    ],
)
def test_a_bulk_action_on_a_filter_with_a_nul_is_refused_by_name_before_any_read(
    operator: TestClient,
    engine: Engine,
    mixed: dict[str, list[int]],
    monkeypatch: pytest.MonkeyPatch,
    field: str,
    message: str,
) -> None:
    reads: list[Any] = []
    monkeypatch.setattr("joblife.web.actions.matching_ids", lambda *args: reads.append(args))
    token = csrf_from(operator.get("/jobs").text)
    before = statuses(engine, mixed["disk"])
    response = operator.post(
        "/jobs/actions",
        data={
            "csrf_token": token,
            "action": "retry",
            "scope": "filter",
            "f_status": "external_error",
            field: "disk\x00full",
        },
        follow_redirects=False,
    )
    assert response.status_code == 303  # back to the list, which says why
    assert reads == []
    assert statuses(engine, mixed["disk"]) == before
    page = operator.get(response.headers["location"])
    assert page.status_code == 400  # the list of the same filter refuses it too
    assert f"Retry: {message}" in by_testid(page.text, "flash")
    assert message in by_testid(page.text, "filter-error")


def test_a_viewer_sees_no_action_controls(
    web_client: TestClient, mixed: dict[str, list[int]]
) -> None:
    failed = mixed["disk"][0]
    for name, acts in ((OPERATOR, True), (VIEWER, False)):
        web_client.cookies.clear()
        login(web_client, name)
        listing = web_client.get("/jobs?status=external_error").text
        job = web_client.get(f"/jobs/{failed}").text
        for marker in ('data-testid="bulk-form"', 'data-testid="select-all"', 'name="job_id"'):
            assert (marker in listing) is acts, (name, marker)
        for marker in ('data-testid="action-retry"', f'action="/jobs/{failed}/action"'):
            assert (marker in job) is acts, (name, marker)
        assert failed in row_ids(listing)
        csrf_from(job)  # the logout form still carries the token


def test_a_bulk_action_with_a_huge_filter_field_redirects_to_the_bare_list(
    operator: TestClient, engine: Engine, mixed: dict[str, list[int]]
) -> None:
    """A 200 KB filter field is not echoed in the redirect's Location (a proxy or browser
    refuses such a header): the bare list, with the refusal flashed."""
    token = csrf_from(operator.get("/jobs").text)
    before = statuses(engine, mixed["disk"])
    response = operator.post(
        "/jobs/actions",
        data={"csrf_token": token, "action": "retry", "scope": "filter", "f_error": "x" * 200_000},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/jobs"
    assert statuses(engine, mixed["disk"]) == before
    assert "Retry:" in by_testid(operator.get("/jobs").text, "flash")
