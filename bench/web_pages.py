"""Benchmark of the dashboard's pages at 10 million jobs (issue 16 item 5's targets).

Run: ``python bench/web_pages.py --reuse joblife_bench_<id>`` on a database seeded by
``bench/scale.py --keep`` (see ``bench/README.md``); without ``--reuse`` the script seeds
its own with ``bench/scale.py``'s seeding (``--jobs``, minutes) and drops it at the end
unless ``--keep``. A reused database is upgraded to the code's revision first, as
``scale.py`` does, unless ``--no-migrate``. Not a test: it prints figures, the target and
whether each page meets it; ``docs/benchmarks.md`` records a run.

The targets: every page answers in under 300 ms of server time at p95 with the services
running; live refresh costs the database one computation per page per refresh interval,
whatever the number of open browsers.

**Scenery** (made at the start, deleted at the end: a reused database is left as it was).
The seeded jobs have no failure messages and no outbox, so the script adds jobs of the
seeded types, their input product ids starting with ``WEBBENCH-``: ``--failed`` failed
jobs (internal_error, external_error, some acknowledged) spread over the last 7 days, their
failure messages drawn from a dozen patterns with variable parts; ``--outbox`` jobs
processed or being published in the last 6 hours, each with an unpublished outbox row (a
few refused by the broker); ``--load-jobs`` ready jobs for the background load. They are
written with the status door open as the owner (whole paths of history, as the seeding
does) and deleted, with their history and outbox rows, at the end, even on failure.

**Background load** (a separate process, so that it does not share the server's
interpreter): status changes through ``set_job_status`` on the load jobs at ``--changes``
per second, one job and one commit each, every job going round ready -> queued ->
started -> pre_processing -> processing -> post_processing -> external_error (with a
message) -> ready; heartbeats (``UPDATE jobs SET heartbeat_at``, commit) of the jobs in
flight at ``--heartbeats`` per second; ``fold_job_counts()`` every ``--fold-seconds``, as
``joblife run``'s monitor does. The rates achieved are reported.

**Pages**: the app (``joblife.web.app.create_app``) served by uvicorn in a thread on a free
port, over HTTP, logged in as a viewer. The pages are found from the navigation and the
pages' own links (htmx partials, window choices, the Jobs page's "next" link, its rows'
links); the Jobs page's filters are its form's fields; the deep page is a cursor 500,000
jobs down the default order. Each page is requested ``--runs`` times after one warm-up,
the shared cache cleared before each request (every request reads the database: the cost
measured is the database's, not the cache's). Figures: the ``Server-Timing: app;dur=``
header (the app's time to the start of its response) and the client's time to the end of
the body, p50 / p95 / max; the statements one render runs and the slowest of them (from
SQLAlchemy's cursor events on the app's engine). ``--plans FILE`` writes ``EXPLAIN
(ANALYZE, BUFFERS)`` of every page's slowest statement; a page over the target gets its
printed.

The health partials (``/partials/health``) probe the services, not the database: they
are measured with their own cache (``HEALTH_SECONDS``) cleared too, so their figures are
the probes' time.

**Cache**: then, with the cache on (its time to live is ``web_refresh_seconds``, default
5 s), ``--browsers`` browsers (threads of a process of their own, each with its own login)
request the Overview's live partials (those it asks for every refresh interval) every
second for ``--poll-seconds``; the figures are the requests served, the cache's
computations (``app.state.cache.computed``) and the statements the app ran.
"""

from __future__ import annotations

import argparse
import html
import itertools
import logging
import math
import multiprocessing
import os
import queue
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import requests
import uvicorn
from benchkit import (
    add_database_url_argument,
    bench_database,
    connect,
    joblife_environment,
    print_table,
    sqlalchemy_url,
)
from scale import JOB_TYPES, Figure, load, read_seed, reused_database, seed, sizes, step
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session

TARGET_MS = 300.0
#: The input product ids of every job the script adds start with this.
MARK = "WEBBENCH-"
PASSWORD = "bench web pages"
VIEWER = "bench"
#: The deep page of the Jobs page: this many jobs down its default order.
DEEP = 500_000
#: A page failing or over this (ms) at its warm-up is requested only FEW_RUNS times.
SLOW_MS = 3_000
FEW_RUNS = 3
#: The client gives up on a request after this (s).
REQUEST_TIMEOUT = 120
#: The statement timeout of the EXPLAIN ANALYZE of a page's slowest statement (ms).
EXPLAIN_TIMEOUT_MS = 300_000
#: The pages the dashboard should have (besides those its navigation links to).
EXPECTED = ("/", "/timeliness", "/jobs", "/failures", "/publication", "/stale")

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_HREF = re.compile(r'href="([^"]+)"')
_HX_GET = re.compile(r'<[^>]*\bhx-get="([^"]+)"[^>]*>')
_HX_EVERY = re.compile(r'hx-trigger="[^"]*\bevery ([0-9.]+)(ms|s)\b')
_ANCHOR = re.compile(r"<a\b([^>]*)>(.*?)</a>", re.S)
_SERVER_TIMING = re.compile(r"app;dur=([0-9.]+)")
_JOB_LINK = re.compile(r'href="(/jobs/\d+)"')

# -- scenery --------------------------------------------------------------------------------

#: Failure messages: a dozen patterns (joblife.web.overview_reads.message_pattern groups
#: them), each with variable parts; odd ones are external errors, even ones internal.
_MESSAGES: tuple[str, ...] = (
    "download of s3://bench/in/{type}/P{n}.h5 failed: connection reset by peer",
    "science step exited with code {code}",
    "no heartbeat for {secs} s: worker lost",
    "HDF5: unable to open file /data/input/{uuid}.h5 (truncated file: eof = {n})",
    "dependency T{tile} not published after {secs} s",
    "upload to s3://bench/out/P{n}.nc failed: SlowDown (503)",
    "ValueError: negative radiance at pixel ({x}, {y}) in band {band}",
    "MemoryError: cannot allocate {mib} MiB",
    "Nomad allocation {hex8}-{hex4} failed: OOM killed",
    "checksum mismatch for P{n}: expected {hex32}, got {hex32b}",
    "calibration file CAL_B{band}_{day} missing",
    "timeout after {secs} s reading s3://bench/aux/{type}/grid_{n}.bin",
)
_OUTBOX_ERRORS = (
    "message returned unroutable (routing key products.{type})",
    "NOT_FOUND - no exchange 'products' in vhost '/'",
)
#: The history path of a scenery job after its 'created' row, by its status.
_PATHS = {
    3: (3,),
    9: (3, 4, 5, 9),
    10: (3, 4, 5, 9, 10),
    13: (3, 4, 5, 13),
    14: (3, 4, 5, 14),
    15: (3, 4, 5, 14, 15),
}


def _message(rng: random.Random, index: int, job_type: str) -> str:
    return _MESSAGES[index].format(
        type=job_type,
        n=rng.randrange(10**7),
        code=rng.choice((1, 2, 137, 139, 255)),
        secs=rng.randrange(60, 7200),
        uuid=uuid.UUID(int=rng.getrandbits(128)),
        tile=rng.randrange(997),
        x=rng.randrange(5000),
        y=rng.randrange(5000),
        band=rng.randrange(1, 17),
        mib=rng.randrange(512, 65536),
        hex8=f"{rng.getrandbits(32):08x}",
        hex4=f"{rng.getrandbits(16):04x}",
        hex32=f"{rng.getrandbits(128):032x}",
        hex32b=f"{rng.getrandbits(128):032x}",
        day=f"2026{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}",
    )


@dataclass
class NewJob:
    """A scenery job: its status, times and failure message (None: no failure)."""

    product: str
    job_type: str
    status: int
    created: datetime
    changed: datetime
    message: str | None = None
    outbox_error: str | None = None


def scenery_jobs(failed: int, outbox: int, load_jobs: int, now: datetime) -> list[NewJob]:
    """The jobs the script adds (see the module docstring), reproducibly."""
    rng = random.Random(16)
    jobs: list[NewJob] = []
    for i in range(failed):
        job_type = JOB_TYPES[i % len(JOB_TYPES)]
        pattern = rng.randrange(len(_MESSAGES))
        status = 14 if pattern % 2 else 13
        if rng.random() < 0.2:
            status = 15  # acknowledged (its failure row is an external_error)
        changed = now - timedelta(seconds=60 + rng.random() * (7 * 86400 - 120))
        created = changed - timedelta(minutes=10 + rng.randrange(110))
        message = _message(rng, pattern, job_type)
        jobs.append(NewJob(f"{MARK}F{i}", job_type, status, created, changed, message))
    for i in range(outbox):
        job_type = JOB_TYPES[i % len(JOB_TYPES)]
        changed = now - timedelta(seconds=30 + rng.random() * 6 * 3600)
        created = changed - timedelta(minutes=10 + rng.randrange(110))
        error = None
        if rng.random() < 0.03:
            error = rng.choice(_OUTBOX_ERRORS).format(type=job_type)
        status = 10 if rng.random() < 0.7 else 9
        jobs.append(NewJob(f"{MARK}P{i}", job_type, status, created, changed, None, error))
    for i in range(load_jobs):
        job_type = JOB_TYPES[i % len(JOB_TYPES)]
        jobs.append(NewJob(f"{MARK}L{i}", job_type, 3, now - timedelta(minutes=2), now))
    return jobs


_INSERT_JOBS = """
INSERT INTO jobs (job_type, input_product_id, tile_id, input_path, input_publication_date,
                  status_changed_at, created_at, worker_flavor, max_attempts)
SELECT t.job_type, t.product, 'T' || lpad((abs(hashtext(t.product)) %% 997)::text, 3, '0'),
       's3://bench/in/' || t.product, t.created - interval '5 minutes',
       t.created, t.created, 'small', 3
  FROM unnest(%s::text[], %s::text[], %s::timestamptz[]) AS t(job_type, product, created)
RETURNING id, input_product_id
"""
_MOVE_JOBS = """
UPDATE jobs j SET status = t.status, status_changed_at = t.changed, attempt = 1,
                  output_path = CASE WHEN t.status IN (9, 10)
                                     THEN 's3://bench/out/' || j.input_product_id END
  FROM unnest(%s::bigint[], %s::smallint[], %s::timestamptz[]) AS t(id, status, changed)
 WHERE j.id = t.id
"""
_INSERT_HISTORY = """
INSERT INTO job_status_changes (job_id, previous_status, status, time, message)
SELECT * FROM unnest(%s::bigint[], %s::smallint[], %s::smallint[], %s::timestamptz[],
                     %s::text[])
"""
_INSERT_OUTBOX = """
INSERT INTO publications (job_id, attempt, product, message_id, routing_key, body, created_at,
                          error, error_at)
SELECT t.id, 1, 'P-' || t.id, 'webbench-' || t.id, 'products.' || j.job_type,
       jsonb_build_object('job_id', t.id), t.changed, t.error,
       CASE WHEN t.error IS NOT NULL THEN t.changed + interval '2 seconds' END
  FROM unnest(%s::bigint[], %s::timestamptz[], %s::text[]) AS t(id, changed, error)
  JOIN jobs j ON j.id = t.id
"""


def remove_scenery(url: URL, after_id: int) -> int:
    """Delete the jobs the script added (ids above ``after_id``, product ``MARK...``) with
    their history and outbox rows, fold the counts; how many were deleted."""
    conn = connect(url, autocommit=True)
    try:
        cur = conn.cursor()
        cur.execute(
            "DELETE FROM jobs WHERE id > %s AND input_product_id LIKE %s",
            (after_id, MARK + "%"),
        )
        deleted = cur.rowcount
        cur.execute("SELECT fold_job_counts()")
        return deleted
    finally:
        conn.close()


def add_scenery(url: URL, jobs: Sequence[NewJob]) -> dict[str, int]:
    """Insert ``jobs`` in one transaction; the ids of the products."""
    conn = connect(url)
    try:
        cur = conn.cursor()
        cur.execute(
            _INSERT_JOBS,
            ([j.job_type for j in jobs], [j.product for j in jobs], [j.created for j in jobs]),
        )
        ids = {product: job_id for job_id, product in cur.fetchall()}
        # Past the status door, as the owner, like the seeding: whole histories, past times.
        cur.execute("SELECT set_config('joblife.status_door', 'open', true)")
        cur.execute(
            _MOVE_JOBS,
            ([ids[j.product] for j in jobs], [j.status for j in jobs], [j.changed for j in jobs]),
        )
        rows: list[tuple[int, int, int, datetime, str | None]] = []
        for job in jobs:
            path = _PATHS[job.status]
            previous = 1
            for k, status in enumerate(path, start=1):
                moment = job.created + (job.changed - job.created) * (k / len(path))
                message = job.message if status in (13, 14) else None
                rows.append((ids[job.product], previous, status, moment, message))
                previous = status
        cur.execute(_INSERT_HISTORY, [list(column) for column in zip(*rows, strict=True)])
        outbox = [j for j in jobs if j.status in (9, 10)]
        cur.execute(
            _INSERT_OUTBOX,
            (
                [ids[j.product] for j in outbox],
                [j.changed for j in outbox],
                [j.outbox_error for j in outbox],
            ),
        )
        cur.execute("SELECT set_config('joblife.status_door', '', true)")
        conn.commit()
        cur.execute("ANALYZE publications")
        conn.commit()
        return ids
    finally:
        conn.close()


# -- background load ------------------------------------------------------------------------

#: The round every load job goes (status ids): the in-flight part has heartbeats.
CYCLE = (3, 4, 5, 6, 7, 8, 14)
_IN_FLIGHT = frozenset({4, 5, 6, 7, 8})


def _paced(rate: float, stop: Any, action: Callable[[], None]) -> tuple[int, float, int]:
    """``action()`` ``rate`` times a second until ``stop`` is set (never in bursts to
    catch up more than a second); (calls, seconds, errors)."""
    interval = 1.0 / rate
    began = due = time.perf_counter()
    calls = errors = 0
    while not stop.is_set():
        try:
            action()
        except Exception:  # counted and reported; the load goes on
            errors += 1
        calls += 1
        due += interval
        delay = due - time.perf_counter()
        if delay > 0:
            stop.wait(delay)
        elif delay < -1.0:
            due = time.perf_counter()
    return calls, time.perf_counter() - began, errors


def run_load(ids: list[int], rates: dict[str, float], stop: Any, results: Any) -> None:
    """The background load (in its own process; settings from the environment): see the
    module docstring. Puts its figures in ``results``."""
    from joblife.config import get_settings
    from joblife.db.counts import fold_job_counts
    from joblife.db.engine import create_joblife_engine
    from joblife.db.status import set_job_status
    from joblife.model import JobStatus

    engine = create_joblife_engine(settings=get_settings())
    states = [0] * len(ids)  # index in CYCLE
    change_ms: list[float] = []
    figures: dict[str, Any] = {}

    def changes(part: int, parts: int) -> None:
        # The jobs i with i % parts == part: no two threads change the same job.
        position = itertools.cycle(range(part, len(ids), parts))
        with Session(engine) as session:

            def change() -> None:
                i = next(position)
                old, new = CYCLE[states[i]], CYCLE[(states[i] + 1) % len(CYCLE)]
                message = (
                    f"bench load: transfer timed out after {i % 97 + 3} s" if new == 14 else None
                )
                began = time.perf_counter()
                try:
                    set_job_status(session, ids[i], JobStatus(new), JobStatus(old), message)
                    session.commit()
                except Exception:
                    session.rollback()
                    raise
                change_ms.append((time.perf_counter() - began) * 1000)
                states[i] = (states[i] + 1) % len(CYCLE)

            figures[f"changes {part}"] = _paced(rates["changes"] / parts, stop, change)

    def heartbeats() -> None:
        position = iter(range(10**12))
        with engine.connect() as conn:

            def beat() -> None:
                for _ in range(len(ids)):  # the next job in flight
                    i = next(position) % len(ids)
                    if CYCLE[states[i]] in _IN_FLIGHT:
                        break
                conn.execute(
                    text("UPDATE jobs SET heartbeat_at = now() WHERE id = :id"), {"id": ids[i]}
                )
                conn.commit()

            figures["heartbeats"] = _paced(rates["heartbeats"], stop, beat)

    def folds() -> None:
        durations: list[float] = []
        while not stop.wait(rates["fold_seconds"]):
            with Session(engine) as session:
                began = time.perf_counter()
                fold_job_counts(session)
                session.commit()
                durations.append((time.perf_counter() - began) * 1000)
        figures["folds"] = durations

    parts = int(rates["change_threads"])
    threads = [threading.Thread(target=changes, args=(k, parts)) for k in range(parts)]
    threads += [threading.Thread(target=f) for f in (heartbeats, folds)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.dispose()
    by_thread = [figures.pop(f"changes {k}") for k in range(parts)]
    figures["changes"] = (
        sum(calls for calls, _, _ in by_thread),
        max(seconds for _, seconds, _ in by_thread),
        sum(errors for _, _, errors in by_thread),
    )
    figures["change_ms"] = change_ms
    results.put(figures)


class BackgroundLoad:
    """:func:`run_load` in a process: started on entry, stopped on exit; its figures."""

    def __init__(self, ids: list[int], rates: dict[str, float]) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._results = context.Queue()
        self._process = context.Process(
            target=run_load, args=(ids, rates, self._stop, self._results), daemon=True
        )
        self.rates = rates
        self.figures: dict[str, Any] = {}

    def __enter__(self) -> BackgroundLoad:
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        try:
            self.figures = self._results.get(timeout=60)
        except queue.Empty:
            self.figures = {}
        self._process.join(timeout=30)

    def rows(self) -> list[tuple[str, str, str, str]]:
        """The load's figures as table rows."""
        if not self.figures:
            return [("background load", "no figures (the load process failed)", "", "FAIL")]
        rows = []
        for name, unit in (("changes", "status changes"), ("heartbeats", "heartbeats")):
            calls, seconds, errors = self.figures[name]
            rows.append(
                (
                    f"background {unit}",
                    f"{calls / seconds:,.0f}/s over {seconds:.0f} s ({errors} errors)",
                    f"{self.rates[name]:g}/s",
                    "",
                )
            )
        change = Figure("", samples_ms=self.figures["change_ms"])
        rows.append(
            (
                "background status change + commit",
                f"p50 {change.quantile(0.5):.2f} / p95 {change.quantile(0.95):.2f} ms",
                "",
                "",
            )
        )
        folds = self.figures["folds"]
        if folds:
            rows.append(
                (
                    f"background fold_job_counts() every {self.rates['fold_seconds']:g} s",
                    f"{len(folds)} folds, median {statistics.median(folds):.1f} ms",
                    "",
                    "",
                )
            )
        return rows


# -- the app --------------------------------------------------------------------------------


@dataclass
class Statement:
    """A statement the app ran: its text, parameters and time (None: it failed)."""

    sql: str
    params: Any
    began: float
    ms: float | None = None

    @property
    def cost(self) -> float:
        """Its time; a failed one (a statement timeout) counts as the slowest."""
        return math.inf if self.ms is None else self.ms


class Statements:
    """The statements an engine runs: how many, their time summed, and while
    ``capturing`` each of them."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        #: The statements' time, summed (ms).
        self.total_ms = 0.0
        self.capturing = False
        self.captured: list[Statement] = []
        self._lock = threading.Lock()
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, cursor: Any, sql: str, params: Any, *_: Any) -> None:
        # One statement at a time per connection; one that fails has no "after".
        record = conn.info["bench_statement"] = Statement(sql, params, time.perf_counter())
        with self._lock:
            self.count += 1
            if self.capturing:
                self.captured.append(record)

    def _after(self, conn: Any, *_: Any) -> None:
        record = conn.info.pop("bench_statement")
        record.ms = (time.perf_counter() - record.began) * 1000
        with self._lock:
            self.total_ms += record.ms


class AppErrors(logging.Handler):
    """The exceptions the app raised (uvicorn logs them), kept as one line each rather
    than printed with their tracebacks (and a statement of 160 branches)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        cause = getattr(error, "orig", None) or error
        text_ = f"{type(cause).__name__}: {cause}" if cause else record.getMessage()
        self.lines.append(text_.strip().splitlines()[0][:160])

    def take(self) -> list[str]:
        """The lines kept since the last call."""
        lines, self.lines = self.lines, []
        return lines


@contextmanager
def served(app: Any, errors: AppErrors) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on a free port, as ``joblife web`` serves it;
    its base URL. The app's exceptions go to ``errors``."""
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(errors)
    logger.propagate = False
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError("the dashboard did not start")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Answer:
    """One response: status, server time (Server-Timing), client time, body."""

    status: int
    server_ms: float | None
    client_ms: float
    body: str


class Browser:
    """A logged-in HTTP client of the dashboard (its own session cookie)."""

    def __init__(self, base: str, name: str = VIEWER, password: str = PASSWORD) -> None:
        self.base = base
        self.http = requests.Session()
        token = _CSRF.search(self.http.get(f"{base}/login").text)
        if token is None:
            raise RuntimeError("no CSRF token on the login page")
        form = {"username": name, "password": password, "csrf_token": token.group(1), "next": "/"}
        response = self.http.post(f"{base}/login", data=form, allow_redirects=False)
        if response.status_code != 303:
            raise RuntimeError(f"login failed: {response.status_code} {response.text[:200]}")

    def get(self, path: str, partial: bool = False) -> Answer:
        """GET ``path`` (as htmx does when ``partial``), body read."""
        headers = {"HX-Request": "true"} if partial else {}
        for attempt in (1, 2):
            began = time.perf_counter()
            try:
                response = self.http.get(
                    self.base + path,
                    headers=headers,
                    allow_redirects=False,
                    timeout=REQUEST_TIMEOUT,
                )
                body = response.text
                break
            except requests.ConnectionError as error:
                # Once more on a new connection: after a 500 the server closes the one kept
                # alive, which the client may find reset only when it sends on it.
                if attempt == 2:
                    return Answer(0, None, (time.perf_counter() - began) * 1000, repr(error))
        client_ms = (time.perf_counter() - began) * 1000
        timing = _SERVER_TIMING.search(response.headers.get("server-timing", ""))
        server_ms = float(timing.group(1)) if timing else None
        return Answer(response.status_code, server_ms, client_ms, body)


# -- the pages ------------------------------------------------------------------------------


@dataclass
class Page:
    """A page to measure: label, path, whether htmx asks for it."""

    label: str
    path: str | None  # None: not found in the app (yet)
    partial: bool = False
    note: str = ""
    #: The page an htmx partial is part of, and how often the page asks for it (s).
    parent: str | None = None
    every: float | None = None


def _links(body: str) -> list[str]:
    return [html.unescape(h) for h in _HREF.findall(body)]


def _next_link(body: str) -> str | None:
    """The href of the page's "next page" link: rel="next", else an anchor reading "Next",
    else a link carrying a cursor (``after=``)."""
    anchors = [
        (attrs, re.sub(r"<[^>]+>", "", inner).strip()) for attrs, inner in _ANCHOR.findall(body)
    ]
    for attrs, inner in anchors:
        href = _HREF.search(attrs)
        if href and ('rel="next"' in attrs or inner.lower().startswith("next")):
            return html.unescape(href.group(1))
    return next((h for h in _links(body) if "after=" in h), None)


def _select_options(body: str, name: str) -> list[str]:
    """The non-empty option values of the page's ``<select name=...>``."""
    select = re.search(rf'<select name="{name}"[^>]*>(.*?)</select>', body, re.S)
    values = re.findall(r'<option value="([^"]*)"', select.group(1)) if select else []
    return [html.unescape(v) for v in values if v]


def _window_links(body: str, path: str) -> dict[str, str]:
    """The page's windows, by name: its links to itself with a ``window`` parameter
    (relative ``?window=7d`` links included) or its form's window choices."""
    found: dict[str, str] = {}
    for href in _links(body):
        split = urlsplit(href)
        if split.path in ("", path) and not split.netloc:
            window = parse_qs(split.query).get("window")
            if window:
                found.setdefault(window[0], f"{path}?{split.query}")
    for window in _select_options(body, "window"):
        found.setdefault(window, f"{path}?{urlencode({'window': window})}")
    return found


def _nav(body: str) -> list[str]:
    """The top-level pages the navigation links to."""
    nav = re.search(r"<nav\b.*?</nav>", body, re.S)
    paths = [h for h in _links(nav.group(0) if nav else body) if h.startswith("/")]
    return [p for p in dict.fromkeys(paths) if not p.startswith(("/static", "/login", "/logout"))]


def _jobs_url(**query: str) -> str:
    return "/jobs?" + urlencode(query)


def deep_cursor(engine: Engine, offset: int) -> str:
    """A cursor of the Jobs page (default order) ``offset`` jobs down: made with the page's
    own encoding, from the job at that place (the plain query: slow, once)."""
    from joblife.web.job_reads import DEFAULT_SORT, _encode_cursor, decode_cursor

    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT id, status_changed_at FROM jobs "
                "ORDER BY status_changed_at DESC, id DESC OFFSET :n LIMIT 1"
            ),
            {"n": offset},
        ).one()
    cursor = _encode_cursor(DEFAULT_SORT, row._mapping)
    decode_cursor(cursor, DEFAULT_SORT)  # a cursor the page takes
    return cursor


def discover(browser: Browser, engine: Engine, deep: int) -> list[Page]:
    """The pages to measure, from the app's own links (see the module docstring)."""
    pages: list[Page] = []
    home = browser.get("/")
    nav = _nav(home.body) if home.status == 200 else []
    print(f"navigation: {' '.join(nav)}")
    failures_body = ""
    for path in dict.fromkeys([*nav, *EXPECTED]):
        if path == "/jobs":
            continue
        answer = browser.get(path)
        if answer.status != 200:
            pages.append(Page(path, None, note=f"HTTP {answer.status}"))
            continue
        windows = _window_links(answer.body, path)
        if windows:  # the bare page is one of them (its default window)
            pages += [Page(f"{path} window={w}", href) for w, href in windows.items()]
        else:
            pages.append(Page(path, path))
        for tag in _HX_GET.finditer(answer.body):
            partial = html.unescape(tag.group(1))
            every = _HX_EVERY.search(tag.group(0))
            seconds = None
            if every:
                seconds = float(every.group(1)) / (1000 if every.group(2) == "ms" else 1)
            if partial != path and all(p.path != partial for p in pages):
                pages.append(Page(f"{path} partial {partial}", partial, True, "", path, seconds))
        types = _select_options(answer.body, "type")
        if windows and types:  # the form's type filter too
            query = urlencode(
                {
                    "window": "7d" if "7d" in windows else next(iter(windows)),
                    "type": types[min(3, len(types) - 1)],
                }
            )
            pages.append(Page(f"{path} {query}", f"{path}?{query}"))
        if path == "/failures":
            failures_body = browser.get(windows.get("7d", path)).body
    jobs = browser.get("/jobs")
    if jobs.status == 404:
        pages.append(Page("/jobs", None, note="HTTP 404"))
        return pages
    if jobs.status == 200:
        fields = ("type", "status", "product", "error")
        missing = [n for n in fields if f'name="{n}"' not in jobs.body]
        if missing:
            print(f"warning: the Jobs page's form has no field {', '.join(missing)}")
    pages.append(Page("/jobs page 1", "/jobs"))
    following = _next_link(jobs.body)
    pages.append(Page("/jobs page 2 (Next link)", following, note=f"no Next link ({jobs.status})"))
    if following:
        deeper = following
        for _ in range(20):  # 20 pages down by the links
            deeper = _next_link(browser.get(deeper).body) or deeper
        pages.append(Page("/jobs page 22 (Next links)", deeper))
    with step(f"the Jobs page's cursor {deep:,} jobs down"):
        cursor = deep_cursor(engine, deep)
    if following:
        query = re.sub(r"after=[^&]*", f"after={cursor}", urlsplit(following).query)
    else:  # the cursor's parameter (joblife.web.job_reads.JobPage.next_cursor)
        query = urlencode({"after": cursor})
    pages.append(Page(f"/jobs {deep:,} down (cursor)", f"/jobs?{query}"))
    for label, query_ in (
        ("status=ready", {"status": "ready"}),
        ("status=internal_error,external_error", {"status": "internal_error,external_error"}),
        ("type=bench_3&status=done", {"type": "bench_3", "status": "done"}),
        ("product=P12345* (prefix)", {"product": "P12345*"}),
        ("product=P1234567 (equal)", {"product": "P1234567"}),
        ("error=connection reset", {"error": "connection reset"}),
        ("error=no such failure (no match)", {"error": "no such failure"}),
    ):
        pages.append(Page(f"/jobs {label}", _jobs_url(**query_)))
    group = re.search(r'<a href="([^"]+)" data-testid="failure-group-jobs"', failures_body)
    pages.append(
        Page(
            "/jobs from a 7d failure group's link",
            html.unescape(group.group(1)) if group else None,
            note="no failure group link",
        )
    )
    # A job of each kind: the first row of a list; from the database if the list fails.
    for label, query_, where in (
        ("old", {"sort": "id_asc"}, "true ORDER BY id LIMIT 1"),
        ("recent done", {"status": "done"}, "status = 12 ORDER BY status_changed_at DESC LIMIT 1"),
        (
            "recent failed",
            {"status": "external_error"},
            f"input_product_id LIKE '{MARK}F%' LIMIT 1",
        ),
    ):
        answer = browser.get(_jobs_url(**query_))
        links = _JOB_LINK.findall(answer.body) if answer.status == 200 else []
        if links:
            pages.append(Page(f"/jobs/<id> {label} (first of {_jobs_url(**query_)})", links[0]))
            continue
        with engine.connect() as conn:
            job_id = conn.execute(text(f"SELECT id FROM jobs WHERE {where}")).scalar_one()
        pages.append(Page(f"/jobs/<id> {label} (from the database)", f"/jobs/{job_id}"))
    return pages


@dataclass
class PageFigure:
    """A page's figures."""

    page: Page
    #: Server-Timing of the requests answered with one (ms).
    server: list[float] = field(default_factory=list)
    client: list[float] = field(default_factory=list)
    #: The time of the statements each request ran, summed (ms, psycopg2's side).
    sql: list[float] = field(default_factory=list)
    #: The HTTP status of each request (0: no answer, the app hung up).
    statuses: list[int] = field(default_factory=list)
    #: The statements of one more request.
    captured: list[Statement] = field(default_factory=list)
    #: The exceptions the app raised while answering (one line each, distinct).
    errors: list[str] = field(default_factory=list)

    @property
    def slowest(self) -> Statement | None:
        """The slowest statement of the captured request (``SET`` statements aside)."""
        queries = [c for c in self.captured if not c.sql.lstrip().upper().startswith("SET ")]
        return max(queries, key=lambda c: c.cost) if queries else None

    @property
    def failing(self) -> bool:
        """Whether the page misses the target (or fails)."""
        return self.page.path is not None and (
            set(self.statuses) != {200} or _q(self.server, 0.95) >= TARGET_MS
        )

    def row(self) -> tuple[str, str, str, str]:
        page = self.page
        target = f"p95 < {TARGET_MS:g} ms"
        if page.path is None:
            return (page.label, f"not measured: {page.note}", target, "MISSING")
        parts = []
        if set(self.statuses) != {200}:
            failed = [s for s in self.statuses if s != 200]
            parts.append(f"{len(failed)} of {len(self.statuses)} HTTP {sorted(set(failed))}")
            parts += self.errors
        if self.server:
            parts.append(
                f"server {_q(self.server, 0.5):.1f} / {_q(self.server, 0.95):.1f} / "
                f"{max(self.server):.1f}"
            )
        parts.append(f"client {_q(self.client, 0.5):.1f} / {_q(self.client, 0.95):.1f}")
        parts.append(
            f"SQL {_q(self.sql, 0.5):.1f} / {_q(self.sql, 0.95):.1f} in {len(self.captured)} stmts"
        )
        slowest = self.slowest
        if slowest is not None:
            parts[-1] += f", slowest {'failed' if slowest.ms is None else f'{slowest.ms:.1f}'}"
        return (page.label, "; ".join(parts), target, "FAIL" if self.failing else "PASS")


def _q(values: list[float], q: float) -> float:
    return Figure("", samples_ms=values).quantile(q) if values else math.nan


def clear(app: Any) -> None:
    """Empty the app's caches: the pages' and the health checks' (made on first use)."""
    app.state.cache.clear()
    health = getattr(app.state, "health_cache", None)
    if health is not None:
        health.clear()


def measure(
    app: Any, browser: Browser, statements: Statements, errors: AppErrors, page: Page, runs: int
) -> PageFigure:
    """``runs`` requests of ``page`` after a warm-up (:data:`FEW_RUNS` if the warm-up
    failed or took over :data:`SLOW_MS`), the cache cleared before each; then one more
    whose statements are captured."""
    figure = PageFigure(page)
    if page.path is None:
        return figure
    clear(app)
    errors.take()
    warm = browser.get(page.path, page.partial)
    if warm.status != 200 or warm.client_ms > SLOW_MS:
        runs = min(runs, FEW_RUNS)
    for _ in range(runs):
        clear(app)
        sql_ms = statements.total_ms
        answer = browser.get(page.path, page.partial)
        figure.sql.append(statements.total_ms - sql_ms)
        figure.statuses.append(answer.status)
        if answer.server_ms is not None:
            figure.server.append(answer.server_ms)
        figure.client.append(answer.client_ms)
    clear(app)
    statements.captured.clear()
    statements.capturing = True
    try:
        browser.get(page.path, page.partial)
    finally:
        statements.capturing = False
    figure.captured = list(statements.captured)
    figure.errors = list(dict.fromkeys(errors.take()))
    return figure


def explain(engine: Engine, figure: PageFigure) -> str:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of the page's slowest statement, after the ``SET
    LOCAL`` statements its transaction ran (its statement timeout raised to
    :data:`EXPLAIN_TIMEOUT_MS`), in a transaction rolled back; a plain ``EXPLAIN`` if
    even that times out."""
    slowest = figure.slowest
    assert slowest is not None
    conn = engine.raw_connection()
    try:
        cur = conn.cursor()
        for other in figure.captured:
            if other.sql.lstrip().upper().startswith("SET LOCAL"):
                cur.execute(other.sql, other.params)
        cur.execute(f"SET LOCAL statement_timeout = {EXPLAIN_TIMEOUT_MS}")
        shown = cur.mogrify(slowest.sql, slowest.params).decode()
        try:
            cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + slowest.sql, slowest.params)
            plan = "\n".join(row[0] for row in cur.fetchall())
        except Exception as error:  # the statement timeout: its plan without running it
            conn.rollback()
            cur.execute("EXPLAIN " + slowest.sql, slowest.params)
            plan = f"(EXPLAIN ANALYZE failed: {str(error).strip()})\n" + "\n".join(
                row[0] for row in cur.fetchall()
            )
        conn.rollback()
    finally:
        conn.close()
    return f"{shown}\n\n{plan}\n"


# -- the cache ------------------------------------------------------------------------------


def run_browsers(
    base: str, partials: list[str], browsers: int, seconds: float, ready: Any, go: Any, out: Any
) -> None:
    """``browsers`` logged-in clients (threads of this process, apart from the server's)
    polling ``partials`` every second for ``seconds`` once ``go`` is set; puts the
    Server-Timing of the answers and the statuses of the others in ``out``."""
    clients = [Browser(base) for _ in range(browsers)]
    served_ms: list[float] = []
    failures: list[int] = []
    lock = threading.Lock()

    def poll(client: Browser, offset: float) -> None:
        go.wait()
        time.sleep(offset)  # the browsers were not all opened in the same second
        began = time.perf_counter()
        tick = 0
        while time.perf_counter() - began < seconds:
            for path in partials:
                answer = client.get(path, partial=True)
                with lock:
                    if answer.status == 200 and answer.server_ms is not None:
                        served_ms.append(answer.server_ms)
                    else:
                        failures.append(answer.status)
            tick += 1
            time.sleep(max(0.0, began + tick - time.perf_counter()))

    rng = random.Random(5)
    threads = [threading.Thread(target=poll, args=(c, rng.random())) for c in clients]
    for thread in threads:
        thread.start()
    ready.set()
    for thread in threads:
        thread.join()
    out.put((served_ms, failures))


def cache_proof(
    app: Any, base: str, statements: Statements, partials: list[str], browsers: int, seconds: float
) -> list[tuple[str, str, str, str]]:
    """``browsers`` logged-in clients (:func:`run_browsers`, in a process of their own)
    polling ``partials`` every second for ``seconds``, with the cache on; the figures."""
    cache = app.state.cache
    # What one uncached round of the partials computes (cache keys) and runs (statements).
    probe = Browser(base)
    cache.clear()
    computed, ran = cache.computed, statements.count
    for path in partials:
        probe.get(path, partial=True)
    keys, per_round = cache.computed - computed, statements.count - ran
    context = multiprocessing.get_context("spawn")
    ready, go, out = context.Event(), context.Event(), context.Queue()
    process = context.Process(
        target=run_browsers, args=(base, partials, browsers, seconds, ready, go, out)
    )
    with step(f"log {browsers} browsers in"):
        process.start()
        if not ready.wait(timeout=300):
            raise RuntimeError("the browsers did not log in")
    cache.clear()
    computed, ran = cache.computed, statements.count
    began = time.perf_counter()
    go.set()
    served_ms, failures = out.get(timeout=seconds + 300)
    elapsed = time.perf_counter() - began
    process.join(timeout=30)
    computed, ran = cache.computed - computed, statements.count - ran
    ttl = app.state.settings.web_refresh_seconds
    # At most one computation per key per interval started: ceil(elapsed / ttl) per key.
    ideal = keys * math.ceil(elapsed / ttl)
    rounds = len(served_ms) + len(failures)
    answered = Figure("", samples_ms=served_ms or [float("nan")])
    return [
        (
            f"cache: {browsers} browsers polling {', '.join(partials)} every 1 s for {seconds:g} s",
            f"{rounds:,} requests ({len(failures)} not 200); server p50 "
            f"{answered.quantile(0.5):.1f} / p95 {answered.quantile(0.95):.1f} ms",
            "",
            "",
        ),
        (
            f"cache computations ({keys} keys, TTL {ttl:g} s, {elapsed:.1f} s)",
            f"{computed} (once per key per interval: {ideal})",
            f"<= {ideal}",
            "PASS" if computed <= ideal else "FAIL",
        ),
        (
            "statements the app ran while they polled",
            f"{ran:,} = {ran / elapsed:.1f}/s (without the cache: {per_round} per round, "
            f"{per_round * rounds / elapsed / len(partials):,.0f}/s)",
            "",
            "",
        ),
    ]


# -- the run ---------------------------------------------------------------------------------


def run(url: URL, data_dir: Path, args: argparse.Namespace) -> None:
    from joblife.config import get_settings
    from joblife.db.engine import create_joblife_engine
    from joblife.db.migrate import upgrade

    users_path = data_dir / "web-users"
    joblife_environment(
        sqlalchemy_url(url),
        data_dir,
        web_users_file=str(users_path),
        web_refresh_seconds=str(args.refresh_seconds),
    )
    settings = get_settings()
    engine = create_joblife_engine(settings=settings)
    try:
        if args.reuse and args.no_migrate:
            with engine.connect() as conn:
                revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            print(f"migration: the database at revision {revision} (--no-migrate)")
        else:
            with step("migrate"):
                upgrade(engine, settings=settings)
        with engine.connect() as conn:
            print(f"server: {conn.execute(text('SELECT version()')).scalar()}")
            shown = ", ".join(
                f"{name}={conn.execute(text(f'SHOW {name}')).scalar()}"
                for name in ("shared_buffers", "work_mem", "jit", "random_page_cost")
            )
        print(f"settings: {shown} (the server's, unchanged)")
        if args.reuse:
            seeded = read_seed(engine)
        else:
            print(f"seeding {args.jobs:,} jobs over {args.days} days:", flush=True)
            seeded = seed(url, args.jobs, args.days)
        print(
            f"seed: {seeded.jobs:,} jobs, {seeded.history:,} history rows, seeded "
            f"{seeded.seeded_at:%Y-%m-%d %H:%M} UTC"
        )
        print(sizes(engine))
        with step("remove a previous run's scenery"):
            removed = remove_scenery(url, seeded.jobs)
        if removed:
            print(f"  removed {removed:,} jobs left by an earlier run")
        try:
            jobs = scenery_jobs(args.failed, args.outbox, args.load_jobs, datetime.now(UTC))
            with step(
                f"scenery: {args.failed:,} failed, {args.outbox:,} in the outbox, "
                f"{args.load_jobs:,} for the load"
            ):
                ids = add_scenery(url, jobs)
            load_ids = [ids[j.product] for j in jobs if j.product.startswith(f"{MARK}L")]
            measure_pages(settings, engine, users_path, load_ids, seeded.jobs, args)
        finally:
            with step("delete the scenery (and the load's history), fold the counts"):
                remove_scenery(url, seeded.jobs)
            with step("VACUUM ANALYZE jobs, publications (a kept database is left as seeded)"):
                conn = connect(url, autocommit=True)
                try:
                    conn.cursor().execute("VACUUM ANALYZE jobs, publications")
                finally:
                    conn.close()
    finally:
        engine.dispose()


def measure_pages(
    settings: Any,
    engine: Engine,
    users_path: Path,
    load_ids: list[int],
    jobs: int,
    args: argparse.Namespace,
) -> None:
    """The pages' figures with the background load running, then the cache's; printed."""
    from joblife.web.app import create_app
    from joblife.web.users import Role, UserStore

    users = UserStore(users_path)
    users.set(VIEWER, Role.VIEWER, PASSWORD)
    app = create_app(settings, engine, users)
    statements = Statements(engine)
    rates = {
        "changes": args.changes,
        "heartbeats": args.heartbeats,
        "fold_seconds": args.fold_seconds,
        "change_threads": args.change_threads,
    }
    rows: list[tuple[str, str, str, str]] = []
    plans = Path(args.plans).open("w", encoding="utf-8") if args.plans else None  # noqa: SIM115
    try:
        errors = AppErrors()
        with served(app, errors) as base:
            browser = Browser(base)
            with BackgroundLoad(load_ids, rates) as background:
                time.sleep(3)  # the load under way
                print(f"pages (load average {load()}):", flush=True)
                figures: list[PageFigure] = []
                for page in discover(browser, engine, min(DEEP, jobs // 2)):
                    figure = measure(app, browser, statements, errors, page, args.runs)
                    figures.append(figure)
                    print(f"  {' | '.join(figure.row())}  {page.path or ''}", flush=True)
                for figure in figures:
                    slowest = figure.slowest
                    if slowest is None or not (figure.failing or plans is not None):
                        continue
                    plan = explain(engine, figure)
                    if plans is not None:
                        plans.write(f"===== {figure.page.label}: {figure.page.path} =====\n")
                        plans.write(plan + "\n")
                    if figure.failing:
                        took = "failed" if slowest.ms is None else f"{slowest.ms:.1f} ms"
                        print(f"\n== over the target: {figure.page.label} ({figure.page.path})")
                        print(f"its slowest statement ({took}):\n{plan}")
                # The Overview's live partials: those it asks for every refresh interval.
                partials = [
                    f.page.path
                    for f in figures
                    if f.page.parent == "/"
                    and f.page.path
                    and f.page.every == settings.web_refresh_seconds
                ]
                if not partials:
                    print("no live htmx partial on the Overview: the browsers poll / itself")
                    partials = ["/"]
                print(f"cache (load average {load()}):", flush=True)
                cache_rows = cache_proof(
                    app, base, statements, partials, args.browsers, args.poll_seconds
                )
            print()
            rows += [f.row() for f in figures]
            rows += cache_rows
            rows += background.rows()
            print(
                "pages: server p50 / p95 / max; client p50 / p95; SQL p50 / p95 (the statements"
                " of a request, summed), the statements of one render, the slowest of them (ms)"
            )
            print_table(rows, "page")
    finally:
        if plans is not None:
            plans.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_database_url_argument(parser)
    parser.add_argument("--reuse", metavar="NAME", help="a database seeded by bench/scale.py")
    parser.add_argument(
        "--no-migrate",
        action="store_true",
        help="measure the reused database at its revision (default: upgrade it first)",
    )
    parser.add_argument("--jobs", type=int, default=10_000_000, help="jobs seeded (no --reuse)")
    parser.add_argument("--days", type=int, default=730, help="days seeded over (no --reuse)")
    parser.add_argument("--keep", action="store_true", help="keep the seeded database")
    parser.add_argument("--runs", type=int, default=30, help="timed requests per page")
    parser.add_argument("--failed", type=int, default=20_000, help="failed jobs added")
    parser.add_argument("--outbox", type=int, default=12_000, help="outbox rows added")
    parser.add_argument("--load-jobs", type=int, default=3_000, help="jobs the load cycles")
    parser.add_argument("--changes", type=float, default=200, help="status changes per second")
    parser.add_argument(
        "--change-threads", type=int, default=2, help="connections making the status changes"
    )
    parser.add_argument("--heartbeats", type=float, default=100, help="heartbeats per second")
    parser.add_argument("--fold-seconds", type=float, default=5, help="counts fold interval")
    parser.add_argument("--browsers", type=int, default=50, help="browsers polling")
    parser.add_argument("--poll-seconds", type=float, default=20, help="how long they poll")
    parser.add_argument("--refresh-seconds", type=float, default=5, help="web_refresh_seconds")
    parser.add_argument("--plans", help="write EXPLAIN ANALYZE of each page's slowest statement")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    print(f"machine: {os.cpu_count()} CPUs, load average {load()}")
    admin_url = make_url(args.database_url)
    data_dir = Path(tempfile.mkdtemp(prefix="joblife-bench-web-"))
    database = (
        reused_database(admin_url, args.reuse)
        if args.reuse
        else bench_database(admin_url, args.keep)
    )
    try:
        with database as url:
            run(url, data_dir, args)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"\nload average at the end {load()}; total run time {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
