"""The browser test tooling works: Chromium runs a page's script, the vendored htmx and
Chart.js load and work from a local server, and the page asks nothing of the internet."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import joblife
import pytest

from tests.support.browser import RequestLog, leaves_machine, save_screenshot

if TYPE_CHECKING:
    from playwright.sync_api import Page

VENDOR = Path(joblife.__file__).resolve().parent / "web" / "static" / "vendor"
VENDORED = ("htmx.min.js", "chart.umd.min.js")

INDEX = """<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>joblife browser smoke</title>
<script src="/vendor/htmx.min.js"></script>
<script src="/vendor/chart.umd.min.js"></script>
</head>
<body>
<button id="press" type="button">Press</button>
<p id="pressed">not pressed</p>
<button id="load" type="button" hx-get="/fragment.html" hx-target="#fragment">Load</button>
<div id="fragment"></div>
<div style="width: 400px; height: 200px"><canvas id="chart"></canvas></div>
<script>
document.getElementById("press").addEventListener("click", () => {
  document.getElementById("pressed").textContent = "pressed";
});
new Chart(document.getElementById("chart"), {
  type: "bar",
  data: {labels: ["done", "failed"], datasets: [{label: "jobs", data: [3, 1]}]},
  options: {animation: false},
});
</script>
</body>
</html>
"""
FRAGMENT = '<span id="swapped">fragment from the server</span>'


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a local HTTP server serving the smoke page and the vendored files."""
    root = tmp_path_factory.mktemp("browser-smoke")
    (root / "vendor").mkdir()
    for name in VENDORED:
        shutil.copy(VENDOR / name, root / "vendor" / name)
    (root / "index.html").write_text(INDEX, encoding="utf-8")
    (root / "fragment.html").write_text(FRAGMENT, encoding="utf-8")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, name="browser-smoke-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_page_script_vendored_libraries_and_no_external_request(
    page: Page, site: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect  # the page fixture has checked it is installed

    requests = RequestLog(page)
    page.goto(f"{site}/index.html")

    expect(page.locator("#pressed")).to_have_text("not pressed")
    page.locator("#press").click()
    expect(page.locator("#pressed")).to_have_text("pressed")

    assert page.evaluate("typeof window.htmx") == "object"
    assert page.evaluate("typeof window.Chart") == "function"
    assert page.evaluate("htmx.version").startswith("2.")
    assert page.evaluate("Chart.version").startswith("4.")

    # htmx works: the click fetches the fragment from the server and swaps it in.
    page.locator("#load").click()
    expect(page.locator("#fragment #swapped")).to_have_text("fragment from the server")
    # Chart.js works: the chart exists on the canvas with the page's data.
    assert page.evaluate("Chart.getChart('chart').data.datasets[0].data") == [3, 1]

    shot = save_screenshot(page, tmp_path / "shots" / "smoke.png")
    assert shot.read_bytes().startswith(b"\x89PNG")

    assert f"{site}/vendor/htmx.min.js" in requests.urls
    assert f"{site}/vendor/chart.umd.min.js" in requests.urls
    assert f"{site}/fragment.html" in requests.urls
    assert requests.off_host() == []


def test_request_log_reports_a_request_to_another_host(page: Page, site: str) -> None:
    """The check above can fail: a request to another host is recorded as leaving."""
    external = "http://192.0.2.1/never.js"  # TEST-NET-1: documentation only, never routed
    page.route(external, lambda route: route.abort())  # never even try to connect
    requests = RequestLog(page)
    page.goto(f"{site}/index.html")
    page.evaluate("url => fetch(url).catch(() => null)", external)
    assert requests.off_host() == [external]


@pytest.mark.parametrize(
    ("url", "leaves"),
    [
        ("http://127.0.0.1:8000/x", False),
        ("http://localhost/x", False),
        ("http://[::1]:9/x", False),
        ("data:text/plain,hi", False),
        ("https://cdn.jsdelivr.net/npm/htmx.org", True),
        ("http://10.0.0.5/x", True),
    ],
)
def test_leaves_machine(url: str, leaves: bool) -> None:
    assert leaves_machine(url) is leaves
