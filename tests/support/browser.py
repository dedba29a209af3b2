"""Pytest fixtures for the dashboard's browser tests (registered in conftest.py).

:func:`browser` (session): headless Chromium driven by Playwright's sync API. The browser
is the system's (Debian's ``chromium``, installed by ``scripts/system-packages.sh``), found
through ``JOBLIFE_TEST_CHROMIUM``, ``PLAYWRIGHT_CHROMIUM`` or the ``PATH``; Playwright never
downloads one. :func:`page` (function): a page in a fresh browser context, so cookies and
storage never leak from one test to the next.

Without Playwright or Chromium the tests skip on a developer's machine and fail in CI
(:func:`tests.support.services.unavailable`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

from tests.support.services import unavailable

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

# Belt and braces: nothing here runs `playwright install`, and nothing may fetch a browser.
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

#: Environment variables naming the Chromium executable, first match wins.
CHROMIUM_ENV = ("JOBLIFE_TEST_CHROMIUM", "PLAYWRIGHT_CHROMIUM")
#: Executable names looked up on the PATH when no variable is set.
CHROMIUM_NAMES = ("chromium", "chromium-browser")
#: The sandbox cannot run as root (tests run as root here and in CI); the rest keeps the
#: browser from talking to the network on its own (updates, sync, field trials...).
LAUNCH_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
#: Default timeout of every action, navigation and ``expect`` assertion (milliseconds).
DEFAULT_TIMEOUT_MS = 15_000
#: A fixed viewport, so that screenshots of a page are comparable between runs.
VIEWPORT = {"width": 1280, "height": 800}
#: Hosts a test page may request; anything else would leave the machine.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: URL schemes that never reach the network.
LOCAL_SCHEMES = frozenset({"data", "blob", "about"})


def find_chromium() -> str | None:
    """The Chromium executable to drive: from the environment, else the first on the PATH.

    A variable that names a missing file is reported as unavailable rather than ignored, so
    a typo never silently runs another browser.
    """
    for variable in CHROMIUM_ENV:
        value = os.environ.get(variable)
        if value:
            if not os.access(value, os.X_OK):
                unavailable(f"{variable}={value} is not an executable file")
            return value
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Chromium for the whole session (launched on first use, closed at the end)."""
    try:
        from playwright.sync_api import Error, expect, sync_playwright
    except ImportError as exc:
        unavailable(f"playwright is not installed ({exc}): pip install -e '.[test]'")
    executable = find_chromium()
    if executable is None:
        unavailable(
            "no Chromium found: install it (bash scripts/system-packages.sh, or apt-get install"
            f" chromium) or name it in {' or '.join(CHROMIUM_ENV)}"
        )
    playwright = sync_playwright().start()
    try:
        try:
            launched = playwright.chromium.launch(
                executable_path=executable, headless=True, args=list(LAUNCH_ARGS)
            )
        except Error as exc:
            unavailable(f"Chromium at {executable} did not start: {exc}")
        expect.set_options(timeout=DEFAULT_TIMEOUT_MS)
        try:
            yield launched
        finally:
            launched.close()
    finally:
        playwright.stop()


@pytest.fixture
def browser_context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh context (own cookies, storage and cache) for one test, closed after it."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    context.set_default_navigation_timeout(DEFAULT_TIMEOUT_MS)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(browser_context: BrowserContext) -> Page:
    """A new page in this test's own browser context."""
    return browser_context.new_page()


def save_screenshot(page: Page, path: str | os.PathLike[str], *, full_page: bool = True) -> Path:
    """Save a PNG screenshot of ``page`` to ``path`` (parent folders created); return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target), full_page=full_page)
    return target


def leaves_machine(url: str) -> bool:
    """Whether a request to ``url`` would go to another host than this one."""
    parts = urlsplit(url)
    if parts.scheme in LOCAL_SCHEMES:
        return False
    return parts.hostname not in LOOPBACK_HOSTS


class RequestLog:
    """Every URL requested through a page or a context, from the moment it is created.

    Usage: ``log = RequestLog(page)``, load and click, then ``assert not log.off_host()``.
    """

    def __init__(self, target: Page | BrowserContext) -> None:
        self.urls: list[str] = []
        target.on("request", lambda request: self.urls.append(request.url))

    def off_host(self) -> list[str]:
        """The requested URLs that would leave this machine (empty for an air-gapped page)."""
        return [url for url in self.urls if leaves_machine(url)]
