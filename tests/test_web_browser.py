"""The dashboard in a real browser (issue 16): Debian's Chromium, driven by Playwright,
against ``joblife web`` served by uvicorn on a real database holding real jobs.

The jobs come from the demo's own code (:func:`joblife.demo.run_demo`): its three job types
(h5repack, image_ingest, tile_series) run through the whole life cycle on synthetic inputs
(local executor, local storage, publication spool), together with a few ``test`` jobs whose
products make them fail (``fail_internal``, and ``fail_external`` until out of attempts).
Two ``example`` jobs left in ready and queued for hours (through the status door) are the
Stale page's rows. That database is built once for the module; each test works on its own
copy of it.

Every wait is on an event (Playwright's auto-waiting ``expect``), never a sleep. With
``JOBLIFE_SCREENSHOTS=1`` the tests also save a 1280x800 screenshot of each page to
``docs/images/dashboard-<page>.png``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pytest
from joblife.db.engine import create_joblife_engine
from joblife.db.status import retry_jobs
from joblife.demo import DEMO_TYPES, applied, demo_environment, generate_inputs, run_demo
from joblife.demo import new_run_id as new_demo_run_id
from joblife.jobtypes.test_job import write_test_product
from joblife.lifecycle.common import utc_now
from joblife.model import JobStatus
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from tests.support.browser import RequestLog, save_screenshot
from tests.support.factories import make_jobs, move_to
from tests.support.web import OPERATOR, PASSWORD, VIEWER
from tests.test_web_overview_reads import set_changed_at

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture skips (or fails in CI) and says why
    expect = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Error, Page

S = JobStatus
#: Input products per demo type.
DEMO_JOBS_PER_TYPE = 2
#: The failing ``test`` products: every one ends in internal_error (``fail_external``
#: after its three attempts), in two failure groups.
FAILING = ("fail_internal", "fail_internal", "fail_internal", "fail_external")
#: The demo's own limit is 120 s; here it takes 7-10 s.
DEMO_TIMEOUT = 90.0
#: How long ago the stale example jobs changed status.
STALE_FOR = timedelta(hours=8)
SCREENSHOTS = os.environ.get("JOBLIFE_SCREENSHOTS") == "1"
DOCS_IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"


# -- the database: the demo's jobs, built once ------------------------------------------------


@dataclass(frozen=True)
class DemoWorld:
    """The module's database (read by the tests that change nothing, copied for the others)
    and its jobs."""

    database: str
    #: Job ids per job type: the demo's (done), ``test`` (internal_error), ``example``.
    jobs: dict[str, list[int]]
    #: The example jobs: ready, and queued (both stale).
    ready: int
    queued: int

    @property
    def failed(self) -> list[int]:
        return self.jobs["test"]


def _url(admin_url: str, database: str) -> str:
    return make_url(admin_url).set(database=database).render_as_string(hide_password=False)


def _create_database(admin_engine: Engine, name: str, template: str) -> None:
    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))


def _drop_database(admin_engine: Engine, name: str) -> None:
    with admin_engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _run_demo(url: str, data_dir: Path) -> dict[str, list[int]]:
    """The demo's run on ``url``, with the failing test products; the job ids per type."""
    run_id = new_demo_run_id()
    env = demo_environment(data_dir, run_id)
    # The failing jobs' automatic retries follow each other at once.
    env.update(JOBLIFE_DATABASE_URL=url, JOBLIFE_RETRY_BACKOFF_SECONDS="0")
    with applied(env) as settings:
        inputs = generate_inputs(settings, run_id, DEMO_JOBS_PER_TYPE)
        published = utc_now() - timedelta(seconds=5)
        failing = []
        for index, behaviour in enumerate(FAILING):
            product = f"F{run_id}-{index}"
            write_test_product(settings.test_products_path, product, published, behaviour=behaviour)
            failing.append(product)
        inputs.products["test"] = failing  # the demo waits for these too
        result = run_demo(settings, inputs, timeout=DEMO_TIMEOUT)
    assert not result.timed_out and not result.errors, (result.counts, result.errors)
    expected = {t: {"done": DEMO_JOBS_PER_TYPE} for t in DEMO_TYPES}
    assert result.counts == {**expected, "test": {"internal_error": len(FAILING)}}
    return result.job_ids


def _add_stale_example_jobs(url: str) -> tuple[int, int]:
    """An example job in ready and one in queued, both for :data:`STALE_FOR`."""
    engine = create_joblife_engine(url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            ready, queued = (job.id for job in make_jobs(session, 2, "STALE"))
            move_to(session, [ready], S.READY)
            move_to(session, [queued], S.QUEUED)
        since = utc_now() - STALE_FOR
        set_changed_at(engine, {ready: since, queued: since}, history=True)
    finally:
        engine.dispose()
    return ready, queued


@pytest.fixture(scope="module")
def demo_world(
    admin_engine: Engine,
    template_database: str,
    pg_admin_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DemoWorld]:
    """The demo's jobs in a database of their own (dropped after the module)."""
    name = f"jl_web_demo_{uuid.uuid4().hex[:10]}"
    _create_database(admin_engine, name, template_database)
    try:
        url = _url(pg_admin_url, name)
        jobs = _run_demo(url, tmp_path_factory.mktemp("web-demo"))
        ready, queued = _add_stale_example_jobs(url)
        yield DemoWorld(name, {**jobs, "example": [ready, queued]}, ready, queued)
    finally:
        _drop_database(admin_engine, name)


@pytest.fixture
def own_database() -> None:
    """Asked for by the tests that change jobs: they get a copy of the demo's database of
    their own (see :func:`db_url`)."""


@pytest.fixture
def db_url(
    request: pytest.FixtureRequest, admin_engine: Engine, demo_world: DemoWorld, pg_admin_url: str
) -> Iterator[str]:
    """The database of this test (overrides conftest's empty one: the app under test,
    ``engine`` and ``session`` all use it): the demo's own for the tests that only read,
    a copy of it for those that change jobs (:func:`own_database`). Copies are few: on a
    busy server each DROP DATABASE waits for a checkpoint."""
    if "own_database" not in request.fixturenames:
        yield _url(pg_admin_url, demo_world.database)
        return
    name = f"jl_test_{uuid.uuid4().hex[:12]}"
    _create_database(admin_engine, name, demo_world.database)
    yield _url(pg_admin_url, name)
    _drop_database(admin_engine, name)


@pytest.fixture
def fast_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Overview refreshes (and its figures are cached) every 1 s, the shortest allowed
    (asked for before ``live_web``: the app reads its settings when made)."""
    monkeypatch.setenv("JOBLIFE_WEB_REFRESH_SECONDS", "1")


# -- the database, as the tests read it -------------------------------------------------------


def statuses(engine: Engine, ids: list[int]) -> dict[int, JobStatus]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, status FROM jobs WHERE id = ANY (:ids)"), {"ids": ids})
        return {row.id: JobStatus(row.status) for row in rows}


def all_ids(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT id FROM jobs ORDER BY id")).scalars())


def history(engine: Engine, job_id: int) -> list[dict[str, Any]]:
    """The job's status changes, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT status, message, details FROM job_status_changes WHERE job_id = :id "
                "ORDER BY id"
            ),
            {"id": job_id},
        )
        return [
            {"status": JobStatus(r.status), "message": r.message, "details": r.details or {}}
            for r in rows
        ]


def history_size(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM job_status_changes")).scalar_one()


# -- the browser ------------------------------------------------------------------------------


class PageProblems:
    """The console errors and uncaught exceptions of a page, from the moment it is made."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", self._exception)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text} ({message.location.get('url')})")

    def _exception(self, error: Error) -> None:
        self.errors.append(f"exception: {error}")


def screenshot(page: Page, name: str) -> None:
    """Save the page's viewport to the docs, when ``JOBLIFE_SCREENSHOTS=1``."""
    if SCREENSHOTS:
        save_screenshot(page, DOCS_IMAGES / f"dashboard-{name}.png", full_page=False)


def log_in(page: Page, base: str, name: str, password: str = PASSWORD) -> None:
    """Log in through the login form; back on the Overview with the user's name shown."""
    page.goto(f"{base}/login")
    page.get_by_label("User").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_test_id("user")).to_contain_text(name)


def nav(page: Page, title: str) -> None:
    """Follow the navigation bar's link ``title``; wait for that page."""
    page.locator("header nav").get_by_role("link", name=title, exact=True).click()
    expect(page.locator("header nav a.active")).to_have_text(title)


def charts_drawn(page: Page) -> int:
    """Wait until every canvas of the page holds a Chart.js chart; how many there are."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('canvas')]"
        ".every((c) => window.Chart && Chart.getChart(c) !== undefined)"
    )
    return page.locator("canvas").count()


def health_loaded(page: Page, testid: str = "health") -> None:
    """Wait for the health panel's own request to be swapped in."""
    expect(page.get_by_test_id(testid)).to_contain_text("Checked at")


# -- logging in and out -----------------------------------------------------------------------


def test_log_in_out_and_a_wrong_password(live_web: str, page: Page) -> None:
    page.goto(live_web)
    expect(page).to_have_url(f"{live_web}/login?next=/")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    screenshot(page, "login")

    page.get_by_label("User").fill(OPERATOR)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong user name or password.")
    expect(page.get_by_test_id("user")).to_have_count(0)

    page.get_by_label("User").fill(OPERATOR)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{live_web}/")
    expect(page.get_by_test_id("user")).to_have_text(f"{OPERATOR} (operator)")
    expect(page.get_by_test_id("status-matrix")).to_be_visible()

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{live_web}/login")
    expect(page.get_by_test_id("user")).to_have_count(0)
    page.goto(f"{live_web}/failures")  # the session is gone
    expect(page).to_have_url(f"{live_web}/login?next=/failures")


# -- every page -------------------------------------------------------------------------------


def test_every_page_from_the_navigation(
    live_web: str, page: Page, demo_world: DemoWorld, engine: Engine
) -> None:
    problems = PageProblems(page)
    requests = RequestLog(page)
    log_in(page, live_web, VIEWER)

    # Overview: the matrix of the demo's jobs, both charts, the health checks.
    matrix = page.get_by_test_id("status-matrix")
    for job_type in DEMO_TYPES:
        expect(matrix.get_by_test_id(f"count-{job_type}-done")).to_have_text(
            str(DEMO_JOBS_PER_TYPE)
        )
    expect(matrix.get_by_test_id("count-test-internal_error")).to_have_text(str(len(FAILING)))
    expect(page.get_by_test_id("throughput-chart")).to_be_visible()
    assert charts_drawn(page) == 2
    health_loaded(page)
    screenshot(page, "overview")

    nav(page, "Timeliness")
    summary = page.get_by_test_id("timeliness-summary")
    for job_type in DEMO_TYPES:
        expect(summary.locator(f"tr[data-type={job_type}]")).to_be_visible()
    expect(page.get_by_test_id("late-jobs")).to_be_visible()
    assert charts_drawn(page) >= len(DEMO_TYPES)
    screenshot(page, "timeliness")

    nav(page, "Jobs")
    table = page.get_by_test_id("jobs-table")
    expect(table.locator("tbody tr")).to_have_count(len(all_ids(engine)))
    screenshot(page, "jobs")

    # A job of the demo: its page from the list.
    job_id = demo_world.jobs["h5repack"][0]
    table.get_by_role("link", name=str(job_id), exact=True).click()
    expect(page).to_have_url(f"{live_web}/jobs/{job_id}")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Job {job_id} done")
    expect(page.get_by_test_id("job-fields")).to_contain_text("h5repack")
    expect(page.get_by_test_id("timeline").get_by_test_id("timeline-step")).to_have_count(
        len(history(engine, job_id))
    )
    expect(page.get_by_test_id("attempt-1")).to_be_visible()
    screenshot(page, "job")

    nav(page, "Failures")
    groups = page.get_by_test_id("failure-groups")
    expect(groups.get_by_test_id("failure-group")).to_have_count(2)
    expect(groups).to_contain_text("simulated bug")
    expect(groups).to_contain_text("attempts exhausted")
    screenshot(page, "failures")

    nav(page, "Publication")
    expect(page.get_by_test_id("outbox")).to_be_visible()
    expect(page.get_by_test_id("outbox-unpublished")).to_have_text("0")
    health_loaded(page, "broker")
    screenshot(page, "publication")

    nav(page, "Stale")
    stale = page.get_by_test_id("stale-jobs")
    for job_id in (demo_world.ready, demo_world.queued):
        expect(stale.get_by_role("link", name=str(job_id), exact=True)).to_be_visible()
    screenshot(page, "stale")

    assert problems.errors == []
    assert requests.off_host() == []


# -- the Overview's live refresh ----------------------------------------------------------------


def test_overview_updates_live_without_a_reload(
    own_database: None,
    fast_refresh: None,
    live_web: str,
    page: Page,
    demo_world: DemoWorld,
    session: Session,
) -> None:
    problems = PageProblems(page)
    log_in(page, live_web, OPERATOR)
    matrix = page.get_by_test_id("status-matrix")
    failed = matrix.get_by_test_id("count-test-internal_error")
    expect(failed).to_have_text(str(len(FAILING)))
    expect(matrix.get_by_test_id("count-test-ready")).to_have_count(0)
    charts_drawn(page)
    # A mark of this very document: a reload or a navigation would lose it.
    page.evaluate("window.__joblifeMark = 'same document'")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))

    retry_jobs(session, [demo_world.failed[0]], "retried behind the page's back")
    session.commit()

    expect(failed).to_have_text(str(len(FAILING) - 1))
    expect(matrix.get_by_test_id("count-test-ready")).to_have_text("1")
    assert page.evaluate("window.__joblifeMark") == "same document"
    assert navigations == []
    assert problems.errors == []


# -- the Jobs and Job pages ---------------------------------------------------------------------


def listed_ids(page: Page) -> list[int]:
    """The ids of the jobs listed on the Jobs page, in order."""
    rows = page.get_by_test_id("jobs-table").locator("tbody tr[data-testid^=job-row-]")
    return [
        int(testid.removeprefix("job-row-"))
        for testid in rows.evaluate_all("(rows) => rows.map((row) => row.dataset.testid)")
    ]


def test_jobs_filter_page_through_and_open_a_job(
    live_web: str, page: Page, demo_world: DemoWorld, engine: Engine
) -> None:
    log_in(page, live_web, VIEWER)
    everything = all_ids(engine)

    # Five a page: Next until the end, every job once.
    page.goto(f"{live_web}/jobs?limit=5")
    seen: list[int] = []
    pages = 0
    while True:
        expect(page.get_by_test_id("jobs-table")).to_be_visible()
        ids = listed_ids(page)
        assert 0 < len(ids) <= 5
        seen += ids
        pages += 1
        following = page.get_by_test_id("next-page")
        if following.count() == 0:
            break
        target = following.get_attribute("href")
        following.click()
        expect(page).to_have_url(f"{live_web}{target}")
        expect(page.get_by_test_id("first-page")).to_be_visible()
    assert pages == -(-len(everything) // 5) >= 2
    assert sorted(seen) == sorted(everything)

    # The filter form: the test jobs in internal_error (the page size is kept).
    form = page.get_by_test_id("filter-form")
    form.get_by_label("Type").select_option("test")
    form.get_by_role("checkbox", name="internal_error").check()
    form.get_by_role("button", name="Show").click()
    expect(page).to_have_url(re.compile(r"/jobs\?.*status=internal_error"))
    query = parse_qs(urlsplit(page.url).query)
    assert query["type"] == ["test"] and query["status"] == ["internal_error"]
    assert query["limit"] == ["5"]
    expect(page.get_by_test_id("jobs-table").locator("tbody tr")).to_have_count(len(FAILING))
    assert sorted(listed_ids(page)) == sorted(demo_world.failed)
    statuses_shown = page.get_by_test_id("jobs-table").locator("tbody .status")
    expect(statuses_shown).to_have_text(["internal_error"] * len(FAILING))
    expect(page.get_by_test_id("next-page")).to_have_count(0)

    # One of them, from the list.
    job_id = listed_ids(page)[0]
    page.get_by_test_id(f"job-row-{job_id}").get_by_role("link", name=str(job_id)).click()
    expect(page).to_have_url(f"{live_web}/jobs/{job_id}")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Job {job_id} internal_error")
    expect(page.get_by_test_id("job-fields")).to_contain_text("test")
    expect(page.get_by_test_id("timeline").get_by_test_id("timeline-step")).to_have_count(
        len(history(engine, job_id))
    )


# -- operator actions -------------------------------------------------------------------------


def operator_of_last_change(engine: Engine, job_id: int) -> str | None:
    return history(engine, job_id)[-1]["details"].get("operator")


def test_retry_and_cancel_from_a_job_page(
    own_database: None, live_web: str, page: Page, demo_world: DemoWorld, engine: Engine
) -> None:
    problems = PageProblems(page)
    log_in(page, live_web, OPERATOR)
    failed, ready = demo_world.failed[0], demo_world.ready

    page.goto(f"{live_web}/jobs/{failed}")
    page.get_by_test_id("action-message").fill("the dependency is back")
    page.get_by_test_id("action-retry").click()
    expect(page.get_by_test_id("flash")).to_have_text("retried 1 job")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Job {failed} ready")
    assert statuses(engine, [failed]) == {failed: S.READY}
    last = history(engine, failed)[-1]
    assert last["status"] is S.READY and last["message"] == "the dependency is back"
    assert last["details"]["operator"] == OPERATOR

    page.goto(f"{live_web}/jobs/{ready}")
    page.get_by_test_id("action-cancel").click()
    expect(page.get_by_test_id("flash")).to_have_text("cancelled 1 job")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Job {ready} cancelled")
    expect(page.get_by_test_id("job-actions")).to_contain_text("None")
    assert statuses(engine, [ready]) == {ready: S.CANCELLED}
    assert operator_of_last_change(engine, ready) == OPERATOR
    assert problems.errors == []


def test_bulk_acknowledge_with_select_all_and_confirmation(
    own_database: None, live_web: str, page: Page, demo_world: DemoWorld, engine: Engine
) -> None:
    problems = PageProblems(page)
    log_in(page, live_web, OPERATOR)
    page.goto(f"{live_web}/jobs?type=test&status=internal_error")
    rows = page.get_by_test_id("jobs-table").locator("tbody input[name=job_id]")
    expect(rows).to_have_count(len(FAILING))
    page.get_by_test_id("select-all").check()
    for index in range(len(FAILING)):
        expect(rows.nth(index)).to_be_checked()
    page.get_by_test_id("bulk-action").select_option("acknowledge")
    page.get_by_test_id("bulk-message").fill("seen: a known bug")
    page.get_by_test_id("bulk-selected").click()

    # The confirmation: how many, which; nothing changed yet.
    expect(page.get_by_role("heading", level=1)).to_have_text(
        f"Acknowledge (check error): {len(FAILING)} jobs?"
    )
    for job_id in demo_world.failed:
        expect(page.get_by_role("link", name=str(job_id), exact=True)).to_be_visible()
    assert set(statuses(engine, demo_world.failed).values()) == {S.INTERNAL_ERROR}
    screenshot(page, "confirm")

    page.get_by_test_id("confirm").click()
    expect(page.get_by_test_id("flash")).to_have_text(f"acknowledged {len(FAILING)} jobs")
    expect(page.get_by_test_id("no-jobs")).to_be_visible()  # none left in internal_error
    assert statuses(engine, demo_world.failed) == dict.fromkeys(demo_world.failed, S.ERROR_CHECKED)
    for job_id in demo_world.failed:
        last = history(engine, job_id)[-1]
        assert last["status"] is S.ERROR_CHECKED and last["message"] == "seen: a known bug"
        assert last["details"]["operator"] == OPERATOR
    assert problems.errors == []


# -- a viewer ---------------------------------------------------------------------------------


def test_a_viewer_has_no_actions_and_forged_ones_are_refused(
    live_web: str, page: Page, browser: Browser, demo_world: DemoWorld, engine: Engine
) -> None:
    log_in(page, live_web, VIEWER)
    job_id = demo_world.failed[0]
    page.goto(f"{live_web}/jobs/{job_id}")
    expect(page.get_by_test_id("job-fields")).to_be_visible()
    expect(page.get_by_test_id("job-actions")).to_have_count(0)
    expect(page.locator("main form")).to_have_count(0)
    page.goto(f"{live_web}/jobs")
    expect(page.get_by_test_id("jobs-table")).to_be_visible()
    expect(page.get_by_test_id("bulk-form")).to_have_count(0)
    expect(page.get_by_test_id("select-all")).to_have_count(0)

    before = statuses(engine, all_ids(engine)), history_size(engine)
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert token
    one = f"{live_web}/jobs/{job_id}/action"
    bulk = f"{live_web}/jobs/actions"
    retry = {"action": "retry"}
    acknowledge = {"action": "acknowledge", "confirmed": "yes", "ids": str(job_id)}
    # The viewer's session, with the right CSRF token: not an operator.
    for url, form in ((one, retry), (bulk, acknowledge)):
        response = page.request.post(url, form={**form, "csrf_token": token}, max_redirects=0)
        assert response.status == 403, response.text()
        assert "operators only" in response.text()
    # ... without it: refused before the role is even looked at.
    for url, form in ((one, retry), (bulk, acknowledge)):
        response = page.request.post(url, form=form, max_redirects=0)
        assert response.status == 403, response.text()
        assert "CSRF" in response.text()
    # No session at all.
    stranger = browser.new_context()
    try:
        for url, form in ((one, retry), (bulk, acknowledge)):
            response = stranger.request.post(url, form={**form, "csrf_token": token})
            assert response.status == 401, response.text()
    finally:
        stranger.close()
    assert (statuses(engine, all_ids(engine)), history_size(engine)) == before
