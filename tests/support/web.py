"""Fixtures of the dashboard's tests: users, the app on the test database, a logged-in HTTP
client, and ``joblife web`` served for real (uvicorn on a free port) for the browser.

Users: ``olga`` (operator) and ``victor`` (viewer), password :data:`PASSWORD`.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import uvicorn
from joblife.config import Settings, get_settings
from joblife.db.engine import create_joblife_engine
from joblife.web.users import Role, UserStore
from starlette.applications import Starlette
from starlette.testclient import TestClient

PASSWORD = "correct horse battery"
OPERATOR = "olga"
VIEWER = "victor"
_CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class WebApp:
    """The dashboard under test."""

    app: Starlette
    settings: Settings
    users: UserStore


@pytest.fixture
def web_users(tmp_path: Path) -> UserStore:
    """A users file with an operator and a viewer."""
    store = UserStore(tmp_path / "web-users")
    store.set(OPERATOR, Role.OPERATOR, PASSWORD)
    store.set(VIEWER, Role.VIEWER, PASSWORD)
    return store


@pytest.fixture
def web_app(joblife_env: str, web_users: UserStore, tmp_path: Path) -> Iterator[WebApp]:
    """The dashboard on the test database (settings from the test environment)."""
    get_settings.cache_clear()
    settings = get_settings().model_copy(
        update={"web_users_file": web_users.path, "data_dir": tmp_path / "data"}
    )
    from joblife.web.app import create_app  # the plugin loads before the app is needed

    engine = create_joblife_engine(settings=settings)
    yield WebApp(create_app(settings, engine, web_users), settings, web_users)
    engine.dispose()


def csrf_from(html: str) -> str:
    """The CSRF token a page carries in its forms."""
    match = _CSRF_INPUT.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def login(client: TestClient, name: str, password: str = PASSWORD) -> str:
    """Log ``client`` in as ``name``; the session's CSRF token."""
    token = csrf_from(client.get("/login").text)
    response = client.post(
        "/login",
        data={"username": name, "password": password, "csrf_token": token, "next": "/"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return csrf_from(client.get("/").text)


@pytest.fixture
def web_client(web_app: WebApp) -> Iterator[TestClient]:
    """An anonymous HTTP client of the dashboard."""
    with TestClient(web_app.app) as client:
        yield client


@contextmanager
def serve(web: WebApp) -> Iterator[str]:
    """Serve ``web`` with uvicorn in a thread, as ``joblife web`` serves it, on a port the
    system picks (read back once bound); its URL."""
    from joblife.web.app import SERVER_OPTIONS

    server = uvicorn.Server(uvicorn.Config(web.app, host="127.0.0.1", port=0, **SERVER_OPTIONS))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    # uvicorn sets no event of its own: its `started` flag, bounded by the thread and time.
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the dashboard did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def live_web(web_app: WebApp) -> Iterator[str]:
    """The dashboard on the test database, served (see :func:`serve`); its URL."""
    with serve(web_app) as url:
        yield url


def wait_until_serving(process: subprocess.Popen, base: str) -> requests.Response:
    """``/healthz`` of a ``joblife web`` (or ``demo --web``) started as ``process``, once it
    answers (its "listening" line comes before uvicorn binds); fails if the process ends."""
    from tests.support.lifecycle import wait_for

    def answers() -> requests.Response | None:
        assert process.poll() is None, "the dashboard's process exited"
        try:
            return requests.get(f"{base}/healthz", timeout=5)
        except requests.ConnectionError:
            return None

    return wait_for(answers, timeout=60, message="the dashboard to answer")


def login_over_http(base: str, name: str, password: str) -> tuple[requests.Session, str]:
    """Log in to a served dashboard as a browser would; the session and the page landed on."""
    session = requests.Session()
    token = csrf_from(session.get(f"{base}/login", timeout=10).text)
    landed = session.post(
        f"{base}/login",
        data={"username": name, "password": password, "csrf_token": token},
        timeout=10,
    )
    assert landed.status_code == 200, landed.text
    return session, landed.text
