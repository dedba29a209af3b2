"""Prometheus metrics: read from the job database on each scrape, plus this process's own
counters. Served by ``joblife metrics serve`` and, on ``metrics_port``, by ``joblife run``
(:func:`start_metrics_server`).

From the database (every replica reports the same figures: aggregate with ``max``, not
``sum``):

- ``joblife_jobs{job_type,status}`` and ``joblife_jobs_oldest_age_seconds{job_type,status}``
  (one aggregate over ``jobs``);
- ``joblife_executor_in_flight{flavor}``: jobs queued ... post_processing per worker flavor;
- ``joblife_outbox_backlog`` / ``joblife_outbox_oldest_age_seconds``: unpublished messages;
- ``joblife_status_transitions_total{from,to}``: every status change in the history (the
  first scrape counts the whole history once; later scrapes read only the new rows);
- histograms fed by the new history rows: ``joblife_step_duration_seconds{job_type,step}``
  (the worker's step durations), ``joblife_dispatch_latency_seconds{job_type}`` (queued →
  started), ``joblife_timeliness_seconds{job_type}`` (input → output publication, at done);
- ``joblife_database_up``, ``joblife_scrape_seconds``.

Of this process: ``joblife_loop_errors_total{service}`` and ``joblife_loop_cycles_total
{service}`` (:func:`record_cycle`), ``joblife_rejected_products_total{job_type,reason}``
(discovered products this process's creation refused for the first time: see
:func:`record_rejected_product`), ``joblife_job_type_load_errors{job_type}`` (1 for each job
type of the configuration that cannot load: :class:`JobTypeLoadErrors`),
``joblife_job_type_unavailable{job_type,nomad_job}`` (1 while this process's executor pauses
dispatch of the job type, 0 once it resumed: :func:`record_job_type_availability`), the
standard ``process_*`` and ``python_*`` metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import BigInteger

from joblife.config import Settings
from joblife.model.status import IN_FLIGHT_STATUSES, JobStatus

log = logging.getLogger("joblife.metrics")

DEFAULT_PORT = 9464
#: History ids re-read on each scrape, for transactions that commit out of id order.
HISTORY_WINDOW = 10_000
#: New history rows read per scrape at most (the rest on the next scrapes).
HISTORY_BATCH = 100_000
STATEMENT_TIMEOUT_MS = 10_000

# -- this process's counters -------------------------------------------------------------
PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)
LOOP_CYCLES = Counter(
    "joblife_loop_cycles",
    "Service cycles run by this process.",
    ["service"],
    registry=PROCESS_REGISTRY,
)
LOOP_ERRORS = Counter(
    "joblife_loop_errors",
    "Service cycles of this process that failed (the loop went on).",
    ["service"],
    registry=PROCESS_REGISTRY,
)


REJECTED_PRODUCTS = Counter(
    "joblife_rejected_products",
    "Discovered products refused by creation (first rejection, by this process), by job "
    "type and reason: unsafe_key (recorded as a cancelled job), nul, not_utf8.",
    ["job_type", "reason"],
    registry=PROCESS_REGISTRY,
)


JOB_TYPE_UNAVAILABLE = Gauge(
    "joblife_job_type_unavailable",
    "1 while this process's executor pauses dispatch of a job type (its Nomad parameterized "
    "job missing, stopped, not parameterized, or refusing dispatches), 0 once it resumed.",
    ["job_type", "nomad_job"],
    registry=PROCESS_REGISTRY,
)


def record_job_type_availability(job_type: str, nomad_job: str, available: bool) -> None:
    """Set whether dispatch of ``job_type`` (to the Nomad job ``nomad_job``) is paused in
    this process (see :class:`joblife.executors.base.JobTypeUnavailable`)."""
    JOB_TYPE_UNAVAILABLE.labels(job_type, nomad_job).set(0.0 if available else 1.0)


def record_rejected_product(job_type: str, reason: str) -> None:
    """Count one product of ``job_type`` refused for the first time, ``reason`` being its
    class (a few fixed words, never the product's name)."""
    REJECTED_PRODUCTS.labels(job_type, reason).inc()


def record_cycle(service: str, failed: bool = False) -> None:
    """Count one cycle of ``service`` in this process, and its failure if ``failed``."""
    LOOP_CYCLES.labels(service).inc()
    if failed:
        LOOP_ERRORS.labels(service).inc()


# -- from the database ---------------------------------------------------------------------
_IN_FLIGHT = ", ".join(str(int(s)) for s in sorted(IN_FLIGHT_STATUSES))
# The maintained counts (revision 0014), not a scan of jobs: a scrape costs the same at
# ten million jobs as at ten; the oldest change is one index probe per (type, status).
_JOBS = text(
    "SELECT job_type, status_id AS status, jobs, oldest_status_change AS oldest, "
    "now() AS now FROM job_status_summary"
)
_FLAVORS = text(
    f"SELECT worker_flavor, count(*) AS jobs FROM jobs WHERE status IN ({_IN_FLIGHT}) "
    "GROUP BY worker_flavor"
)
_OUTBOX = text(
    "SELECT count(*) AS backlog, extract(epoch FROM now() - min(created_at)) AS oldest "
    "FROM publications WHERE published_at IS NULL"
)
_BASELINE = text(
    "SELECT previous_status, status, count(*) AS n FROM job_status_changes "
    "WHERE id <= :upto GROUP BY previous_status, status"
)
_MAX_ID = text("SELECT coalesce(max(id), 0) FROM job_status_changes")
_IDS_AFTER = text("SELECT id FROM job_status_changes WHERE id > :floor ORDER BY id LIMIT :limit")
_ROWS = text(
    """
    SELECT c.id, c.previous_status, c.status, j.job_type,
           CASE WHEN c.status = 9 THEN c.details->'durations' END AS durations,
           CASE WHEN c.status = 5 THEN extract(epoch FROM c.time - (
                SELECT q.time FROM job_status_changes q
                 WHERE q.job_id = c.job_id AND q.id < c.id AND q.status = 4
                 ORDER BY q.id DESC LIMIT 1)) END AS dispatch_latency,
           CASE WHEN c.status = 12 THEN extract(epoch FROM
                j.output_publication_date - j.input_publication_date) END AS timeliness
      FROM job_status_changes c LEFT JOIN jobs j ON j.id = c.job_id
     WHERE c.id = ANY (:ids)
    """
).bindparams(bindparam("ids", type_=ARRAY(BigInteger)))

_STEP_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21600, 86400)
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_TIMELINESS_BUCKETS = (60, 300, 900, 1800, 3600, 10800, 21600, 43200, 86400, 259200)


def _status(value: int | None) -> str:
    return "none" if value is None else JobStatus(value).label


@dataclass
class _HistoryFollower:
    """Feeds the transition counter and the histograms from the history rows not seen yet.

    It keeps a floor (every id below it was counted) and the ids counted above it; each
    scrape lists the ids above the floor (an index range scan of at most
    ``HISTORY_WINDOW`` + new rows) and reads only the new ones."""

    transitions: Counter
    steps: Histogram
    dispatch: Histogram
    timeliness: Histogram
    floor: int | None = None
    seen: set[int] | None = None

    def poll(self, conn: Connection) -> None:
        if self.floor is None:
            self._baseline(conn)
        assert self.floor is not None and self.seen is not None
        ids = list(
            conn.execute(
                _IDS_AFTER, {"floor": self.floor, "limit": HISTORY_WINDOW + HISTORY_BATCH}
            ).scalars()
        )
        new = [i for i in ids if i not in self.seen]
        if new:
            for row in conn.execute(_ROWS, {"ids": new}):
                self._observe(row)
            self.seen.update(new)
        if ids:
            self.floor = max(self.floor, ids[-1] - HISTORY_WINDOW)
            self.seen = {i for i in self.seen if i > self.floor}

    def _baseline(self, conn: Connection) -> None:
        """Count the whole history once (histograms start from now)."""
        upto = conn.execute(_MAX_ID).scalar_one()
        for row in conn.execute(_BASELINE, {"upto": upto}):
            self.transitions.labels(_status(row.previous_status), _status(row.status)).inc(row.n)
        self.floor = max(0, upto - HISTORY_WINDOW)
        self.seen = set(
            conn.execute(
                text("SELECT id FROM job_status_changes WHERE id > :floor AND id <= :upto"),
                {"floor": self.floor, "upto": upto},
            ).scalars()
        )

    def _observe(self, row: Any) -> None:
        self.transitions.labels(_status(row.previous_status), _status(row.status)).inc()
        job_type = row.job_type or "unknown"
        for step, seconds in (row.durations or {}).items():
            if isinstance(seconds, int | float):
                self.steps.labels(job_type, step).observe(seconds)
        if row.dispatch_latency is not None:
            self.dispatch.labels(job_type).observe(float(row.dispatch_latency))
        if row.timeliness is not None:
            self.timeliness.labels(job_type).observe(float(row.timeliness))


class DatabaseCollector(Collector):
    """Reads the job database on each scrape (a few aggregates and the new history rows,
    with a statement timeout); if the database cannot be read, reports
    ``joblife_database_up 0`` and the metrics kept from the history so far."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._private = CollectorRegistry(auto_describe=True)
        self._follower = _HistoryFollower(
            transitions=Counter(
                "joblife_status_transitions",
                "Status changes in the job history, by previous and new status.",
                ["from", "to"],
                registry=self._private,
            ),
            steps=Histogram(
                "joblife_step_duration_seconds",
                "Duration of the worker's steps, from the durations recorded at processed.",
                ["job_type", "step"],
                buckets=_STEP_BUCKETS,
                registry=self._private,
            ),
            dispatch=Histogram(
                "joblife_dispatch_latency_seconds",
                "From queued (dispatch requested) to started (a worker took the attempt).",
                ["job_type"],
                buckets=_LATENCY_BUCKETS,
                registry=self._private,
            ),
            timeliness=Histogram(
                "joblife_timeliness_seconds",
                "From the input product's publication to the output's, for jobs done.",
                ["job_type"],
                buckets=_TIMELINESS_BUCKETS,
                registry=self._private,
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return []  # collected on demand only: no database read at registration

    def collect(self) -> Iterator[Metric]:
        start = time.perf_counter()
        with self._lock:
            try:
                current = self._read()
                up = 1.0
            except Exception as exc:
                log.warning("metrics: cannot read the job database: %s", exc)
                current, up = [], 0.0
            yield from current
            yield from self._private.collect()
        yield GaugeMetricFamily(
            "joblife_database_up", "1 if the last scrape could read the job database.", up
        )
        yield GaugeMetricFamily(
            "joblife_scrape_seconds",
            "Time the last scrape spent reading the database.",
            round(time.perf_counter() - start, 6),
        )

    def _read(self) -> list[Metric]:
        jobs = GaugeMetricFamily(
            "joblife_jobs", "Jobs by type and current status.", labels=["job_type", "status"]
        )
        oldest = GaugeMetricFamily(
            "joblife_jobs_oldest_age_seconds",
            "Time in status of the job longest in it, by type and status.",
            labels=["job_type", "status"],
        )
        flavors = GaugeMetricFamily(
            "joblife_executor_in_flight",
            "Jobs queued ... post_processing, by worker flavor.",
            labels=["flavor"],
        )
        with self.engine.begin() as conn:
            conn.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
            for row in conn.execute(_JOBS):
                labels = [row.job_type, _status(row.status)]
                jobs.add_metric(labels, row.jobs)
                age = (row.now - row.oldest).total_seconds() if row.oldest else 0.0
                oldest.add_metric(labels, max(0.0, age))
            for row in conn.execute(_FLAVORS):
                flavors.add_metric([row.worker_flavor], row.jobs)
            outbox = conn.execute(_OUTBOX).one()
            self._follower.poll(conn)
        return [
            jobs,
            oldest,
            flavors,
            GaugeMetricFamily(
                "joblife_outbox_backlog", "Publication messages not yet confirmed.", outbox.backlog
            ),
            GaugeMetricFamily(
                "joblife_outbox_oldest_age_seconds",
                "Age of the oldest unpublished message (0 if none).",
                float(outbox.oldest or 0.0),
            ),
        ]


class JobTypeLoadErrors(Collector):
    """``joblife_job_type_load_errors{job_type}``: 1 for each job type (entry point or
    ``job_type_modules`` entry) of this process's configuration that cannot load; the
    others run (see :func:`joblife.model.registry.job_type_load_errors`)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        from joblife.model.registry import job_type_load_errors

        gauge = GaugeMetricFamily(
            "joblife_job_type_load_errors",
            "1 for a job type that cannot load (its import or validation failed).",
            labels=["job_type"],
        )
        try:
            broken = job_type_load_errors(self.settings)
        except Exception as exc:  # a scrape never fails on it
            log.warning("metrics: cannot list the job types: %s", exc)
            broken = {}
        for name in sorted(broken):
            gauge.add_metric([name], 1.0)
        yield gauge


class _ProcessCounters(Collector):
    """This process's counters (:data:`PROCESS_REGISTRY`) in a server's registry."""

    def collect(self) -> Iterator[Metric]:
        yield from PROCESS_REGISTRY.collect()


def build_registry(engine: Engine) -> CollectorRegistry:
    """A registry with the database metrics, this process's counters and the standard
    process / Python metrics."""
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(engine))
    registry.register(_ProcessCounters())
    registry.register(JobTypeLoadErrors())
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


@dataclass
class MetricsServer:
    """A running metrics endpoint (``http://<address>:<port>/metrics``)."""

    address: str
    port: int
    _server: Any
    _thread: threading.Thread

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(engine: Engine, port: int, address: str = "127.0.0.1") -> MetricsServer:
    """Serve the metrics of the job database behind ``engine`` on ``address:port`` (0: a
    free port, see :attr:`MetricsServer.port`) from a daemon thread; returns at once."""
    server, thread = start_http_server(port, address, registry=build_registry(engine))
    actual = server.server_address[1]
    log.info("metrics served on http://%s:%s/metrics", address, actual)
    return MetricsServer(address, actual, server, thread)
