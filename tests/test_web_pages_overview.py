"""The dashboard's Overview, Timeliness, Failures, Publication and Stale pages over HTTP
against the app on a real database: the figures of the jobs are on the pages, links lead to
the filtered Jobs page, bad parameters are refused with 400, the live partial is served
from the shared cache."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from joblife.db.status import set_job_status
from joblife.lifecycle.common import utc_now
from joblife.model import JobStatus
from joblife.web.cache import SharedCache
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from tests.support.factories import make_jobs, move_to
from tests.support.web import VIEWER, WebApp, login
from tests.test_web_overview_reads import fail, outbox, published_jobs, set_changed_at

S = JobStatus
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
PAGES = ("/", "/timeliness", "/failures", "/publication", "/stale")


def ids(jobs: list[Any]) -> list[int]:
    return [job.id for job in jobs]


def by_testid(page: str, testid: str) -> str:
    """The HTML of the element carrying ``data-testid=testid`` (to its closing tag, the
    elements it holds included)."""
    start = page.index(f'data-testid="{testid}"')
    tag = page.rindex("<", 0, start)
    name = re.match(r"<(\w+)", page[tag:]).group(1)  # type: ignore[union-attr]
    depth, position = 0, tag
    for match in re.finditer(rf"<(/?){name}\b", page[tag:]):
        depth += -1 if match.group(1) else 1
        if depth == 0:
            position = tag + match.end()
            break
    return page[tag : page.index(">", position) + 1]


def chart(page: str, block: str) -> dict[str, Any]:
    """The chart spec a page carries in its JSON block ``block``."""
    match = re.search(rf'<script type="application/json" id="{block}">(.*?)</script>', page, re.S)
    assert match, f"no chart data {block}"
    return json.loads(match.group(1))


def links(fragment: str) -> list[str]:
    return [html.unescape(href) for href in re.findall(r'href="([^"]+)"', fragment)]


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


@pytest.fixture
def viewer(web_client: TestClient) -> TestClient:
    login(web_client, VIEWER)
    return web_client


def forget(web_app: WebApp) -> None:
    """Drop the pages' cached figures (logging in showed the Overview before the test
    made its jobs; the cache would serve those figures for a refresh interval)."""
    web_app.app.state.cache.clear()


def settings_of(web_app: WebApp, **update: Any) -> None:
    """Change the app's settings (what the pages read) for this test."""
    web_app.app.state.settings = web_app.app.state.settings.model_copy(update=update)


# -- access and parameters ------------------------------------------------------------------


def test_anonymous_views_go_to_the_login_page_and_partials_are_refused(
    web_client: TestClient,
) -> None:
    for path in (*PAGES, "/timeliness?window=7d&type=example"):
        response = web_client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next=")
    for path in ("/partials/overview", "/partials/health"):
        assert web_client.get(path, headers={"HX-Request": "true"}).status_code == 401


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/?window=30d", "window: &#39;30d&#39; is not one of 24h, 7d"),
        ("/timeliness?window=1y", "window: &#39;1y&#39; is not one of 24h, 7d"),
        ("/timeliness?type=nosuch", "type: unknown job type &#39;nosuch&#39;"),
        ("/timeliness?priority=7", "priority: &#39;7&#39; is not one of 1 (nrt)"),
        ("/timeliness?priority=urgent", "priority: &#39;urgent&#39;"),
        ("/failures?window=<b>", "window: &#39;&lt;b&gt;&#39; is not one of"),
        ("/stale?limit=0", "limit: &#39;0&#39; is not a whole number from 1 to 1000"),
        ("/stale?limit=abc", "limit: &#39;abc&#39;"),
        ("/stale?limit=5000", "from 1 to 1000"),
        ("/partials/health?check=nosuch", "check: &#39;nosuch&#39; is not one of"),
    ],
)
def test_bad_parameters_are_refused_with_400(viewer: TestClient, path: str, message: str) -> None:
    response = viewer.get(path)
    assert response.status_code == 400
    assert message in response.text


def test_pages_without_data_say_there_is_nothing_to_show(viewer: TestClient) -> None:
    for path in PAGES:
        response = viewer.get(path)
        assert response.status_code == 200, path
        assert "Nothing to show" in response.text, path
    assert "there are no jobs" in by_testid(viewer.get("/").text, "status-matrix")


# -- Overview -------------------------------------------------------------------------------


def test_overview_matrix_in_flight_oldest_and_charts(
    viewer: TestClient, web_app: WebApp, session: Session, engine: Engine
) -> None:
    settings_of(web_app, max_in_flight=9, max_in_flight_per_type={"example": 4})
    jobs = make_jobs(session, 10, "OV")
    ready, queued, done, failed = ids(jobs[:3]), ids(jobs[3:5]), ids(jobs[5:9]), jobs[9].id
    move_to(session, ready, S.READY)
    move_to(session, queued, S.QUEUED)
    move_to(session, done, S.DONE)
    move_to(session, [failed], S.INTERNAL_ERROR)
    now = utc_now()
    set_changed_at(engine, {ready[0]: now - 5 * HOUR, done[0]: now - 3 * 24 * HOUR})
    forget(web_app)

    page = viewer.get("/")
    assert page.status_code == 200
    matrix = by_testid(page.text, "status-matrix")
    ready_cell = by_testid(matrix, "count-example-ready")
    assert ">3</a>" in ready_cell
    (url,) = links(ready_cell)
    assert urlsplit(url).path == "/jobs"
    assert query(url) == {"type": ["example"], "status": ["ready"]}
    assert ">4</a>" in by_testid(matrix, "count-example-done")
    assert ">10<" in by_testid(matrix, "total-example")
    assert 'oldest: 5 h 00 min in ready"' in ready_cell or "oldest: 4 h 59 min" in ready_cell

    in_flight = by_testid(page.text, "in-flight")
    assert "2 of 9" in by_testid(in_flight, "in-flight-total")
    types = by_testid(in_flight, "in-flight-types")
    assert re.search(r"<td>example</td><td class=\"num\">2</td><td class=\"num\">4</td>", types)

    oldest = by_testid(page.text, "oldest-jobs")
    oldest_links = [u for u in links(oldest) if "status=ready" in u]
    assert oldest_links and query(oldest_links[0])["sort"] == ["changed_asc"]
    assert "5 h 00 min" in oldest or "4 h 59 min" in oldest

    # Done per hour over 24 h: the 3 jobs done now (the one done 3 days ago is out).
    done_chart = chart(page.text, "ov-throughput-data")
    assert done_chart["type"] == "bar" and len(done_chart["labels"]) == 25
    assert sum(done_chart["datasets"][0]["data"]) == 3
    failed_chart = chart(page.text, "ov-failures-data")
    assert [d["label"] for d in failed_chart["datasets"]] == ["internal_error", "external_error"]
    assert sum(failed_chart["datasets"][0]["data"]) == 1
    assert 'data-chart="ov-throughput-data"' in by_testid(page.text, "throughput-chart")

    week = viewer.get("/?window=7d")
    assert week.status_code == 200
    week_chart = chart(week.text, "ov-throughput-data")
    assert len(week_chart["labels"]) in (168, 169)
    assert sum(week_chart["datasets"][0]["data"]) == 4
    # The live part and the health load themselves with htmx.
    live = by_testid(week.text, "overview-live")
    assert 'hx-get="/partials/overview"' in live and 'hx-trigger="every 5000ms"' in live
    assert 'hx-get="/partials/health"' in week.text


def test_overview_partial_is_read_once_per_interval_whatever_the_requests(
    viewer: TestClient, web_app: WebApp, session: Session
) -> None:
    move_to(session, ids(make_jobs(session, 2, "PC")), S.READY)
    cache = web_app.app.state.cache = SharedCache(600)
    first = viewer.get("/partials/overview", headers={"HX-Request": "true"})
    assert first.status_code == 200
    assert "<html" not in first.text  # a fragment, not a page
    assert ">2</a>" in by_testid(first.text, "count-example-ready")
    computed = cache.computed
    for _ in range(20):
        again = viewer.get("/partials/overview", headers={"HX-Request": "true"})
        assert again.status_code == 200
    assert cache.computed == computed
    # New jobs show once the interval is over (here: the cache forgotten).
    move_to(session, ids(make_jobs(session, 1, "PD")), S.READY)
    assert ">2</a>" in by_testid(viewer.get("/partials/overview").text, "count-example-ready")
    cache.clear()
    assert ">3</a>" in by_testid(viewer.get("/partials/overview").text, "count-example-ready")
    assert cache.computed == computed + 1


def test_health_partial_reports_each_service_and_is_cached(
    viewer: TestClient, web_app: WebApp
) -> None:
    response = viewer.get("/partials/health", headers={"HX-Request": "true"})
    assert response.status_code == 200
    checks = by_testid(response.text, "health-checks")
    assert ">ok<" in by_testid(checks, "health-database")
    assert 'data-check="broker"' in checks and 'data-check="storage"' in checks
    health_cache = web_app.app.state.health_cache
    assert health_cache.computed == 1
    broker = viewer.get("/partials/health?check=broker")
    assert 'data-check="broker"' in broker.text and 'data-check="database"' not in broker.text
    assert health_cache.computed == 1  # the same checks' result


# -- Timeliness -----------------------------------------------------------------------------


def test_timeliness_summary_charts_and_late_jobs(
    viewer: TestClient, web_app: WebApp, session: Session
) -> None:
    settings_of(web_app, timeliness_target_hours=3.0)
    now = utc_now()
    made = published_jobs(
        session,
        now,
        {  # output published ago (h), delay (h), priority
            "a": (1.0, 1.0, 1),
            "b": (2.0, 2.0, 1),
            "late": (1.5, 4.0, 1),
            "slow": (2.5, 5.0, 2),
            "old": (50.0, 9.0, 1),  # outside 24 h, inside 7 d
        },
    )
    forget(web_app)
    page = viewer.get("/timeliness")
    assert page.status_code == 200
    summary = by_testid(page.text, "timeliness-summary")
    # example: 4 published in 24 h, 2 within the target of 3 h.
    assert re.search(
        r"<td>example</td>\s*<td class=\"num\">4</td>\s*<td class=\"num\">2</td>", summary
    )
    assert "50.0 %" in summary
    assert "5 h 00 min" in summary  # the worst delay
    late = by_testid(page.text, "late-jobs")
    late_ids = [int(u.rsplit("/", 1)[1]) for u in links(late)]
    assert late_ids == [made["slow"], made["late"]]  # the longest delay first
    assert made["old"] not in late_ids
    # A chart per (type, priority): p50, p90, p99, max and the target (3 h) per hour.
    specs = [chart(page.text, f"ov-timeliness-{i}") for i in (1, 2)]
    assert page.text.count('data-testid="timeliness-chart"') == 2
    nrt = specs[0]
    assert [d["label"] for d in nrt["datasets"]] == ["p50", "p90", "p99", "max", "target"]
    assert len(nrt["labels"]) == 25
    assert set(nrt["datasets"][4]["data"]) == {3.0}
    assert max(v for v in nrt["datasets"][3]["data"] if v is not None) == pytest.approx(4.0)

    filtered = viewer.get("/timeliness?window=7d&type=example&priority=delayed")
    assert filtered.status_code == 200
    assert 'data-chart="ov-timeliness-1"' in filtered.text
    assert "ov-timeliness-2" not in filtered.text
    assert [int(u.rsplit("/", 1)[1]) for u in links(by_testid(filtered.text, "late-jobs"))] == [
        made["slow"]
    ]
    week = viewer.get("/timeliness?window=7d&priority=1")
    assert made["old"] in [
        int(u.rsplit("/", 1)[1]) for u in links(by_testid(week.text, "late-jobs"))
    ]
    assert len(chart(week.text, "ov-timeliness-1")["labels"]) in (28, 29)
    month = viewer.get("/timeliness?window=30d&type=example")  # too slow at scale: not offered
    assert month.status_code == 400
    other = viewer.get("/timeliness?type=test")  # a registered type without jobs
    assert other.status_code == 200 and "Nothing to show" in by_testid(other.text, "late-jobs")


# -- Failures -------------------------------------------------------------------------------


def test_failures_grouped_with_links_to_the_jobs(
    viewer: TestClient, web_app: WebApp, session: Session, engine: Engine
) -> None:
    a, b, c, d, old = ids(make_jobs(session, 5, "FG"))
    fail(session, a, S.INTERNAL_ERROR, "job 12 failed at /a/b")
    fail(session, b, S.INTERNAL_ERROR, "job 13 failed at /c/d")
    fail(session, c, S.EXTERNAL_ERROR, "job 14 failed at /e/f")
    fail(session, d, S.EXTERNAL_ERROR, "<script>alert(1)</script> disk full on node 7")
    fail(session, old, S.INTERNAL_ERROR, "job 16 failed at /old")
    set_changed_at(engine, {old: utc_now() - 3 * 24 * HOUR}, history=True)

    forget(web_app)
    page = viewer.get("/failures")
    assert page.status_code == 200
    groups = by_testid(page.text, "failure-groups")
    assert groups.count('data-testid="failure-group"') == 2
    first = by_testid(groups, "failure-group")
    assert "job &lt;n&gt; failed at &lt;path&gt;" in first
    assert '<td class="num">3</td>' in first
    jobs_url = links(by_testid(first, "failure-group-jobs"))[0]
    params = query(jobs_url)
    assert params["type"] == ["example"] and params["error"] == ["failed at"]
    assert "changed_from" in params
    status_links = [u for u in links(first) if "status=" in u]
    assert {query(u)["status"][0] for u in status_links} == {"internal_error", "external_error"}
    assert "internal_error 2" in first and "external_error 1" in first
    assert {f"/jobs/{i}" for i in (a, b, c)} <= set(links(first))
    assert "job 14 failed at /e/f" in first  # the latest message
    # Escaped, never markup.
    assert "<script>alert" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; disk full on node 7" in groups

    week = by_testid(viewer.get("/failures?window=7d").text, "failure-groups")
    assert '<td class="num">4</td>' in by_testid(week, "failure-group")
    assert f"/jobs/{old}" in links(week)


# -- Publication ----------------------------------------------------------------------------


def test_publication_outbox_failed_rows_waiting_jobs_and_broker(
    viewer: TestClient, web_app: WebApp, session: Session, engine: Engine
) -> None:
    now = utc_now()
    waiting, sending, refused = ids(make_jobs(session, 3, "PB"))
    move_to(session, [waiting, refused], S.PROCESSED)
    move_to(session, [sending], S.START_PUBLICATION)
    set_job_status(session, refused, S.START_PUBLICATION)
    set_job_status(session, refused, S.EXTERNAL_ERROR, message="not routed")
    session.commit()
    set_changed_at(engine, {waiting: now - 2 * HOUR})
    outbox(
        engine,
        [
            {"job_id": waiting, "created_at": now - 90 * MINUTE},
            {"job_id": waiting, "created_at": now - MINUTE},
            {"job_id": sending, "created_at": now - 30 * MINUTE},
            {
                "job_id": refused,
                "created_at": now - 3 * HOUR,
                "error": "NO_ROUTE <unroutable>",
                "error_at": now - 2 * HOUR,
            },
        ],
    )
    forget(web_app)
    page = viewer.get("/publication")
    assert page.status_code == 200
    box = by_testid(page.text, "outbox")
    for testid, value in (
        ("outbox-unpublished", 4),
        ("outbox-pending", 3),
        ("outbox-unsent", 2),
        ("outbox-unconfirmed", 1),
        ("outbox-failed", 1),
    ):
        assert f">{value}</td>" in by_testid(box, testid), testid
    assert "1 h 30 min" in by_testid(box, "outbox-oldest")
    failed = by_testid(page.text, "failed-publications")
    assert f"/jobs/{refused}" in links(failed) and "NO_ROUTE &lt;unroutable&gt;" in failed
    waiting_jobs = by_testid(page.text, "publication-waiting")
    assert ">1</a>" in by_testid(waiting_jobs, "waiting-processed")  # the refused one failed
    assert query(links(by_testid(waiting_jobs, "waiting-processed"))[0]) == {
        "status": ["processed"]
    }
    assert "2 h 00 min" in waiting_jobs or "1 h 59 min" in waiting_jobs
    assert 'hx-get="/partials/health?check=broker"' in by_testid(page.text, "broker")


# -- Stale ----------------------------------------------------------------------------------


def test_stale_jobs_with_reason_action_and_limit(
    viewer: TestClient, web_app: WebApp, session: Session, engine: Engine
) -> None:
    fresh, stale_a, stale_b = ids(make_jobs(session, 3, "ST"))
    move_to(session, [fresh, stale_a, stale_b], S.READY)
    now = utc_now()
    set_changed_at(engine, {stale_a: now - 9 * HOUR, stale_b: now - 7 * HOUR})
    forget(web_app)
    page = viewer.get("/stale")
    assert page.status_code == 200
    rows = by_testid(page.text, "stale-jobs")
    assert [u for u in links(rows)] == [f"/jobs/{stale_a}", f"/jobs/{stale_b}"]
    assert "past its deadline of 6:00:00" in rows
    assert "dispatch is held back by the in-flight caps, or not running" in rows
    assert "2 stale jobs" in page.text
    one = viewer.get("/stale?limit=1")
    assert links(by_testid(one.text, "stale-jobs")) == [f"/jobs/{stale_a}"]
    assert "the limit: there may be more" in one.text
