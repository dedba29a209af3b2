"""The dashboard's doors: login, sessions, roles, CSRF, the login rate limit, cookies and
headers, over HTTP against the app on a real database (the browser tests drive the same
through Chromium)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode

import pytest
from joblife.model import JobStatus
from joblife.web.app import SESSION_COOKIE, create_app
from joblife.web.body_limit import MAX_BODY_BYTES
from joblife.web.cache import SharedCache
from joblife.web.users import Role, UserStore, create_first_user
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from tests.support.factories import make_jobs, move_to
from tests.support.web import OPERATOR, PASSWORD, VIEWER, WebApp, csrf_from, login


def _statuses(engine: Engine, ids: list[int]) -> dict[int, JobStatus]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, status FROM jobs WHERE id = ANY (:ids)"), {"ids": ids})
        return {row.id: JobStatus(row.status) for row in rows}


@pytest.fixture
def failed_jobs(session: Session) -> list[int]:
    jobs = make_jobs(session, 3, prefix="WEB")
    ids = [job.id for job in jobs]
    move_to(session, ids, JobStatus.EXTERNAL_ERROR)
    return ids


def test_anonymous_page_views_go_to_the_login_page(web_client: TestClient) -> None:
    for path in ("/", "/jobs?status=ready", "/failures"):
        response = web_client.get(path, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login?next=")
    # An htmx partial refresh is refused rather than redirected into the fragment.
    assert web_client.get("/", headers={"HX-Request": "true"}).status_code == 401


def test_login_with_a_wrong_password_is_refused_and_a_right_one_opens_a_session(
    web_client: TestClient,
) -> None:
    token = csrf_from(web_client.get("/login").text)
    wrong = web_client.post(
        "/login", data={"username": OPERATOR, "password": "nope", "csrf_token": token}
    )
    assert wrong.status_code == 401
    assert "Wrong user name or password" in wrong.text
    unknown = web_client.post(
        "/login", data={"username": "mallory", "password": PASSWORD, "csrf_token": token}
    )
    assert unknown.status_code == 401
    assert web_client.get("/", follow_redirects=False).status_code == 303

    login(web_client, OPERATOR)
    page = web_client.get("/")
    assert page.status_code == 200
    assert f"{OPERATOR} <small>(operator)" in page.text


def test_login_without_the_form_token_is_refused(web_client: TestClient) -> None:
    web_client.get("/login")
    response = web_client.post("/login", data={"username": OPERATOR, "password": PASSWORD})
    assert response.status_code == 403
    assert web_client.get("/", follow_redirects=False).status_code == 303


def test_logout_ends_the_session(web_client: TestClient) -> None:
    token = login(web_client, VIEWER)
    response = web_client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303
    assert web_client.get("/", follow_redirects=False).status_code == 303


def test_after_login_the_user_lands_where_they_were_going_but_never_off_site(
    web_client: TestClient,
) -> None:
    for target, landing in (
        ("/failures", "/failures"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
    ):
        web_client.cookies.clear()
        token = csrf_from(web_client.get("/login").text)
        response = web_client.post(
            "/login",
            data={"username": VIEWER, "password": PASSWORD, "csrf_token": token, "next": target},
            follow_redirects=False,
        )
        assert response.headers["location"] == landing, target


def test_failed_logins_are_rate_limited_per_user(web_client: TestClient) -> None:
    token = csrf_from(web_client.get("/login").text)
    for _ in range(5):  # web_login_rate: 5/minute
        response = web_client.post(
            "/login", data={"username": VIEWER, "password": "guess", "csrf_token": token}
        )
        assert response.status_code == 401
    refused = web_client.post(
        "/login", data={"username": VIEWER, "password": PASSWORD, "csrf_token": token}
    )
    assert refused.status_code == 429  # even the right password, until the window passes
    assert web_client.get("/", follow_redirects=False).status_code == 303


def test_actions_need_an_operator_session_and_the_csrf_token(
    web_app: WebApp, web_client: TestClient, failed_jobs: list[int], engine: Engine
) -> None:
    form = {
        "action": "retry",
        "job_id": [str(i) for i in failed_jobs],
        "confirmed": "yes",
        "ids": ",".join(map(str, failed_jobs)),
    }
    # No session at all.
    assert web_client.post("/jobs/actions", data=form).status_code == 401
    # A viewer, with the right token.
    token = login(web_client, VIEWER)
    viewer = web_client.post("/jobs/actions", data={**form, "csrf_token": token})
    assert viewer.status_code == 403
    assert "operators only" in viewer.text
    # An operator without the token, and with a wrong one (a forged cross-site POST).
    web_client.cookies.clear()
    token = login(web_client, OPERATOR)
    assert web_client.post("/jobs/actions", data=form).status_code == 403
    forged = web_client.post("/jobs/actions", data={**form, "csrf_token": token[::-1]})
    assert forged.status_code == 403
    assert set(_statuses(engine, failed_jobs).values()) == {JobStatus.EXTERNAL_ERROR}
    # The operator with the token: the jobs are retried, and the history names them.
    done = web_client.post(
        "/jobs/actions", data={**form, "csrf_token": token}, follow_redirects=False
    )
    assert done.status_code == 303
    assert set(_statuses(engine, failed_jobs).values()) == {JobStatus.READY}
    with engine.connect() as conn:
        operators = (
            conn.execute(
                text(
                    "SELECT DISTINCT details->>'operator' FROM job_status_changes "
                    "WHERE job_id = ANY (:ids) AND details->>'action' = 'retry'"
                ),
                {"ids": failed_jobs},
            )
            .scalars()
            .all()
        )
    assert operators == [OPERATOR]


def test_the_csrf_token_also_works_as_a_header_for_htmx(
    web_client: TestClient, failed_jobs: list[int], engine: Engine
) -> None:
    token = login(web_client, OPERATOR)
    response = web_client.post(
        f"/jobs/{failed_jobs[0]}/action",
        data={"action": "acknowledge"},
        headers={"X-CSRF-Token": token},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert _statuses(engine, failed_jobs[:1]) == {failed_jobs[0]: JobStatus.ERROR_CHECKED}


def test_a_removed_user_loses_their_session_at_the_next_request(
    web_app: WebApp, web_client: TestClient
) -> None:
    login(web_client, VIEWER)
    assert web_client.get("/", follow_redirects=False).status_code == 200
    web_app.users.remove(VIEWER)
    assert web_client.get("/", follow_redirects=False).status_code == 303


def test_session_cookie_and_security_headers(web_app: WebApp, web_client: TestClient) -> None:
    token = csrf_from(web_client.get("/login").text)
    response = web_client.post(
        "/login",
        data={"username": VIEWER, "password": PASSWORD, "csrf_token": token},
        follow_redirects=False,
    )
    cookie = response.headers["set-cookie"].lower()
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert "secure" not in cookie  # web_address is loopback: plain HTTP on this host
    assert PASSWORD.lower() not in cookie
    page = web_client.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"

    exposed = web_app.settings.model_copy(update={"web_address": "0.0.0.0"})
    app = create_app(exposed, web_app.app.state.engine, web_app.users)
    with TestClient(app, base_url="https://testserver") as client:
        token = csrf_from(client.get("/login").text)
        response = client.post(
            "/login",
            data={"username": VIEWER, "password": PASSWORD, "csrf_token": token},
            follow_redirects=False,
        )
        assert "secure" in response.headers["set-cookie"].lower()


def test_trusted_proxy_header_names_the_user_only_from_a_trusted_proxy(
    web_app: WebApp,
) -> None:
    settings = web_app.settings.model_copy(
        update={
            "web_trusted_user_header": "X-Forwarded-User",
            "web_trusted_proxies": ["testclient"],
        }
    )
    app = create_app(settings, web_app.app.state.engine, web_app.users)
    with TestClient(app) as client:
        assert client.get("/", headers={"X-Forwarded-User": VIEWER}).status_code == 200
        # A name the users file does not list gets nothing.
        response = client.get("/", headers={"X-Forwarded-User": "mallory"}, follow_redirects=False)
        assert response.status_code == 303
    untrusted = settings.model_copy(update={"web_trusted_proxies": ["10.0.0.1"]})
    app = create_app(untrusted, web_app.app.state.engine, web_app.users)
    with TestClient(app) as client:
        response = client.get("/", headers={"X-Forwarded-User": VIEWER}, follow_redirects=False)
        assert response.status_code == 303


def test_users_file_is_private_hashed_and_reread_when_it_changes(tmp_path) -> None:
    store = UserStore(tmp_path / "users")
    assert create_first_user(store) is not None
    assert create_first_user(store) is None  # only when there is no user at all
    store.set("ann", Role.VIEWER, "a password")
    assert (store.path.stat().st_mode & 0o777) == 0o600
    content = store.path.read_text()
    assert "a password" not in content and "$argon2id$" in content
    assert store.authenticate("ann", "a password") == store.get("ann")
    assert store.authenticate("ann", "wrong") is None
    store.set("ann", Role.OPERATOR, None)  # proxy-only: no password login
    assert store.get("ann").role is Role.OPERATOR
    assert store.authenticate("ann", "a password") is None
    store.path.write_text("bob:admin:x\n")
    with pytest.raises(Exception, match="line 1: unknown role 'admin'"):
        store.users()


def test_shared_cache_computes_each_key_once_per_interval_for_concurrent_readers() -> None:
    cache = SharedCache(ttl_seconds=60)
    gate = threading.Event()
    calls = []
    asked = threading.Semaphore(0)

    def compute() -> int:
        calls.append(1)
        gate.wait(10)
        return 42

    def reader() -> int:
        asked.release()
        return cache.get("page", compute)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(reader) for _ in range(8)]
        for _ in range(8):
            assert asked.acquire(timeout=10)
        # Every reader has asked and the first computation is held: without the per-key
        # lock the others compute too (and block on the gate), which this second shows.
        deadline = time.monotonic() + 1
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        assert [f.result() for f in futures] == [42] * 8
    assert len(calls) == 1 and cache.computed == 1
    cache.clear()
    assert cache.get("page", lambda: 7) == 7


def test_a_page_whose_read_times_out_says_so(
    web_app: WebApp, web_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that hits the statement timeout (forced here with a 1 ms one) answers a
    page naming the problem, with 503, not a bare 500."""
    from joblife.web import database

    monkeypatch.setattr(database, "READ_TIMEOUT_MS", 1)
    login(web_client, VIEWER)
    monkeypatch.setattr(database, "_read", _slow_read(database._read), raising=True)
    response = web_client.get("/jobs")
    assert response.status_code == 503
    assert "took too long" in response.text


def _slow_read(read):
    from sqlalchemy import text as sql

    def slow(request, function, *args, **kwargs):
        def with_sleep(session, *a, **k):
            session.execute(sql("SELECT pg_sleep(0.05)"))
            return function(session, *a, **k)

        return read(request, with_sleep, *args, **kwargs)

    return slow


def test_behind_a_proxy_on_this_host_the_user_header_is_believed_as_served(
    web_app: WebApp,
) -> None:
    """Served as `joblife web` serves it (uvicorn, no proxy-header rewriting), a proxy on
    this host naming the user gets their pages, whatever X-Forwarded-For it adds; a client
    naming a trusted address in X-Forwarded-For does not become the proxy."""
    import requests

    from tests.support.web import serve

    def app_trusting(proxies: list[str]) -> WebApp:
        settings = web_app.settings.model_copy(
            update={"web_trusted_user_header": "X-Forwarded-User", "web_trusted_proxies": proxies}
        )
        return WebApp(create_app(settings, web_app.app.state.engine, web_app.users), settings,
                      web_app.users)  # fmt: skip

    for proxies, forwarded_for, expected in (
        (["127.0.0.1"], "203.0.113.9", 200),  # the proxy on this host, a user elsewhere
        (["10.0.0.1"], "10.0.0.1", 303),  # a client claiming to be the proxy: to the login
    ):
        with serve(app_trusting(proxies)) as base:
            page = requests.get(
                f"{base}/",
                headers={"X-Forwarded-User": VIEWER, "X-Forwarded-For": forwarded_for},
                allow_redirects=False,
                timeout=10,
            )
        assert page.status_code == expected, (proxies, page.status_code)
        if expected == 200:
            assert f"{VIEWER} <small>(viewer)" in page.text


def test_the_login_page_keeps_every_filter_of_the_page_asked_for(web_client: TestClient) -> None:
    response = web_client.get("/jobs?status=done&type=example", follow_redirects=False)
    page = web_client.get(response.headers["location"])
    assert 'name="next" value="/jobs?status=done&amp;type=example"' in page.text


def test_job_ids_beyond_a_bigint_name_no_job(web_client: TestClient) -> None:
    token = login(web_client, OPERATOR)
    single = web_client.post(
        "/jobs/99999999999999999999999/action",
        data={"action": "retry", "csrf_token": token},
        follow_redirects=False,
    )
    assert single.status_code == 404
    bulk = web_client.post(
        "/jobs/actions",
        data={
            "action": "retry",
            "confirmed": "yes",
            "ids": "9999999999999999999",
            "csrf_token": token,
        },
        follow_redirects=False,
    )
    assert bulk.status_code == 303  # back to the list, with the refusal said
    assert "not a job id" in web_client.get(bulk.headers["location"]).text


def test_a_failed_computation_is_not_kept_and_its_key_can_be_computed_again() -> None:
    cache = SharedCache(ttl_seconds=60)

    def fails() -> int:
        raise RuntimeError("statement timeout")

    with pytest.raises(RuntimeError):
        cache.get("page", fails)
    assert cache.get("page", lambda: 7) == 7
    assert cache._computing == {}


# -- the request body cap -------------------------------------------------------------------


def _too_large(response: Any) -> None:
    """``response`` (the test client's or requests') is the 413 error page, with the
    usual security headers."""
    assert response.status_code == 413
    assert "Request too large" in response.text
    assert f"larger than {MAX_BODY_BYTES // 1024} KiB: nothing was done" in response.text
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


def test_a_body_declared_larger_than_the_cap_is_refused_before_the_app_reads_it(
    web_client: TestClient, failed_jobs: list[int], engine: Engine
) -> None:
    token = csrf_from(web_client.get("/login").text)
    fields = {"username": VIEWER, "csrf_token": token}
    # A form of exactly the cap is read (a wrong password); one byte more is not.
    base = len(urlencode({**fields, "password": ""}))
    at_cap = web_client.post("/login", data={**fields, "password": "x" * (MAX_BODY_BYTES - base)})
    assert at_cap.status_code == 401
    over = {**fields, "password": PASSWORD + "x" * (MAX_BODY_BYTES - base)}
    _too_large(web_client.post("/login", data=over, follow_redirects=False))
    assert web_client.get("/", follow_redirects=False).status_code == 303  # not logged in
    # An operator's action, and a logout whose token is in the header: the endpoint never
    # runs (nothing retried, the session still open).
    token = login(web_client, OPERATOR)
    padding = "x" * MAX_BODY_BYTES
    action = {"action": "retry", "confirmed": "yes", "ids": ",".join(map(str, failed_jobs))}
    action.update(csrf_token=token, message=padding)
    _too_large(web_client.post("/jobs/actions", data=action))
    assert set(_statuses(engine, failed_jobs).values()) == {JobStatus.EXTERNAL_ERROR}
    logout = web_client.post(
        "/logout", data={"pad": padding}, headers={"X-CSRF-Token": token}, follow_redirects=False
    )
    _too_large(logout)
    assert web_client.get("/", follow_redirects=False).status_code == 200


def test_a_chunked_body_is_refused_once_it_passes_the_cap(
    web_app: WebApp, failed_jobs: list[int], engine: Engine
) -> None:
    """Served by uvicorn, a body without Content-Length (chunked, as a generator is sent)
    is read until it passes the cap, then refused with the error page; nothing is done."""
    import requests

    from tests.support.web import login_over_http, serve

    def chunks(form: dict[str, str], pieces: int) -> Iterator[bytes]:
        yield urlencode(form).encode() + b"&message="
        for _ in range(pieces):
            yield b"x" * (64 * 1024)

    with serve(web_app) as base:
        browser, landed = login_over_http(base, OPERATOR, PASSWORD)
        form = {
            "csrf_token": csrf_from(landed),
            "action": "retry",
            "confirmed": "yes",
            "ids": ",".join(map(str, failed_jobs)),
        }
        headers = {"Content-Type": "application/x-www-form-urlencoded"}

        def post(pieces: int) -> requests.Response:
            response = browser.post(
                f"{base}/jobs/actions",
                data=chunks(form, pieces),
                headers=headers,
                allow_redirects=False,
                timeout=10,
            )
            assert response.request.headers["Transfer-Encoding"] == "chunked"
            return response

        _too_large(post(5))
        assert set(_statuses(engine, failed_jobs).values()) == {JobStatus.EXTERNAL_ERROR}
        # Under the cap, the same chunked form is read and acted on.
        assert post(1).status_code == 303
    assert set(_statuses(engine, failed_jobs).values()) == {JobStatus.READY}


def test_the_largest_legitimate_form_fits_under_the_cap() -> None:
    """A bulk action's confirmation of :data:`BULK_CAP` jobs whose ids have every digit a
    bigint has, with the longest filter values (4-byte characters) and a long message."""
    from joblife.cli.parsing import JOB_ID_MAX
    from joblife.web.actions import BULK_CAP
    from joblife.web.job_reads import MAX_TEXT

    wide = "\U0001f600"  # 12 bytes once percent-encoded
    form = {
        "csrf_token": "t" * 43,
        "action": "acknowledge",
        "confirmed": "yes",
        "ids": ",".join([str(JOB_ID_MAX)] * BULK_CAP),
        "f_type": "t" * 63,
        "f_status": ",".join(s.label for s in JobStatus),
        "f_priority": "reprocessing",
        "f_changed_from": "2026-11-01T08:00:00+01:00",
        "f_changed_to": "2026-11-02T08:00:00+01:00",
        "f_product": wide * MAX_TEXT,
        "f_error": wide * MAX_TEXT,
        "f_sort": "changed_asc",
        "message": wide * 1024,  # the history keeps 4 KiB of it
    }
    assert len(urlencode(form)) < MAX_BODY_BYTES
