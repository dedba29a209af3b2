"""Prometheus metrics during a real ``joblife run`` (issue 8, "a test scrapes the metrics
endpoint during a run and finds the counts matching the database"): the endpoint of
``joblife run`` itself (``metrics_port``) and ``joblife metrics serve`` (a separate process,
as a sidecar would run it) are scraped while the orchestrator works through test jobs with
the local executor, and after.

A scrape taken between two identical readings of the database (job counts by type and
status, and the number of history rows: every status change writes one) saw that same
database: its figures must be those readings exactly.
"""

from __future__ import annotations

import re
import signal
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from joblife.model import JobStatus
from joblife.ops.metrics import start_metrics_server
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from tests.support.lifecycle import wait_for
from tests.test_lifecycle_end_to_end import (
    Processes,
    joblife_env,
    stop_gracefully,
    write_products,
)
from tests.test_lifecycle_end_to_end import processes as processes  # the fixture

JOBS = 12
S = JobStatus
IN_FLIGHT = ("queued", "started", "pre_processing", "processing", "post_processing")
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(url: str) -> Samples:
    """Sample name -> {sorted labels: value}."""
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read().decode()
    samples: Samples = defaultdict(dict)
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def by_label(samples: dict[tuple[tuple[str, str], ...], float], **fixed: str) -> float:
    return sum(v for labels, v in samples.items() if fixed.items() <= dict(labels).items())


def jobs_gauge(metrics: Samples) -> dict[tuple[str, str], int]:
    """``joblife_jobs`` as (job type, status) -> count."""
    return {
        (dict(k)["job_type"], dict(k)["status"]): int(v) for k, v in metrics["joblife_jobs"].items()
    }


def transitions_counter(metrics: Samples) -> dict[tuple[str, str], int]:
    """``joblife_status_transitions_total`` as (from, to) -> count."""
    return {
        (dict(k)["from"], dict(k)["to"]): int(v)
        for k, v in metrics["joblife_status_transitions_total"].items()
    }


def db_jobs(engine: Engine) -> dict[tuple[str, str], int]:
    """SELECT count(*) of the jobs GROUP BY job type and status."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT j.job_type, s.name, count(*) AS n FROM jobs j "
                "JOIN job_statuses s ON s.id = j.status GROUP BY 1, 2"
            )
        ).all()
    return {(r.job_type, r.name): r.n for r in rows}


def db_transitions(engine: Engine) -> dict[tuple[str, str], int]:
    """SELECT count(*) of the history GROUP BY previous and new status."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT coalesce(p.name, 'none') AS from_name, s.name AS to_name, count(*) AS n "
                "FROM job_status_changes c JOIN job_statuses s ON s.id = c.status "
                "LEFT JOIN job_statuses p ON p.id = c.previous_status GROUP BY 1, 2"
            )
        ).all()
    return {(r.from_name, r.to_name): r.n for r in rows}


def scrape_between_readings(
    url: str, engine: Engine, during: Callable[[dict[tuple[str, str], int]], bool]
) -> tuple[Samples, dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """A scrape taken between two identical readings of the database for which ``during``
    (of the job counts) holds; the scrape and that reading."""

    def attempt() -> tuple[Samples, Any, Any] | None:
        before = (db_jobs(engine), db_transitions(engine))
        metrics = scrape(url)
        after = (db_jobs(engine), db_transitions(engine))
        if before != after or not during(before[0]):
            return None
        return metrics, *before

    return wait_for(attempt, timeout=60, interval=0.05, message="a scrape while jobs are in flight")


def in_flight(jobs: dict[tuple[str, str], int]) -> bool:
    return any(status in IN_FLIGHT for _, status in jobs)


def assert_matches(metrics: Samples, jobs: dict, transitions: dict) -> None:
    """The scrape's figures are the database's."""
    assert jobs_gauge(metrics) == jobs
    assert transitions_counter(metrics) == transitions
    assert by_label(metrics["joblife_executor_in_flight"]) == sum(
        n for (_, status), n in jobs.items() if status in IN_FLIGHT
    )
    assert metrics["joblife_database_up"][()] == 1.0


def served_url(log: Path) -> str | None:
    """The metrics URL a ``joblife`` process logged (or printed) it serves, once it did."""
    found = re.search(r"http://[\w.]+:\d+/metrics", log.read_text()) if log.exists() else None
    return found.group(0) if found else None


def endpoint(processes: Processes, name: str) -> str:
    return wait_for(
        lambda: served_url(processes.logs / f"{name}.log"),
        timeout=30,
        message=lambda: f"the metrics URL in {name}.log\n{processes.log_tail(name)}",
    )


#: Makes the publication service fail on every cycle: the database refuses the
#: processed → start_publication of the jobs with products to announce.
REFUSE_PUBLICATION = (
    """
    CREATE FUNCTION jltest_refuse_publication() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'test: the database refuses to start publication'; END $$
    """,
    f"""
    CREATE TRIGGER jltest_refuse_publication BEFORE UPDATE OF status ON jobs
       FOR EACH ROW WHEN (NEW.status = {int(S.START_PUBLICATION)})
   EXECUTE FUNCTION jltest_refuse_publication()
    """,
)


def test_joblife_run_serves_metrics_matching_the_database(
    db_url: str, engine: Engine, tmp_path: Path, processes: Processes
) -> None:
    """``joblife run`` with ``metrics_port``: test jobs (sleeping, so that they stay a
    while in processing) are discovered and run; jobs with products to announce cannot
    be published (the publication service fails on every cycle): its loop errors."""
    data_dir = tmp_path / "data"
    write_products(data_dir / "test-products", JOBS, sleep_seconds=1.0)
    write_products(data_dir / "test-products", 2, prefix="A", publish=True)
    with engine.begin() as conn:
        for statement in REFUSE_PUBLICATION:
            conn.execute(text(statement))
    env = joblife_env(db_url, data_dir)
    env.update(
        JOBLIFE_METRICS_PORT="0",  # any free port: the URL is read from the log
        JOBLIFE_METRICS_ADDRESS="127.0.0.1",
        JOBLIFE_PUBLICATION_SPOOL=str(tmp_path / "spool.jsonl"),
    )
    run = processes.start("run", env, "run")
    url = endpoint(processes, "run")
    assert url.startswith("http://127.0.0.1:")

    # During the run.
    metrics, jobs, transitions = scrape_between_readings(url, engine, in_flight)
    assert_matches(metrics, jobs, transitions)
    assert {job_type for job_type, _ in jobs} == {"test"}

    # At the end: the jobs to announce wait in processed, the others are done.
    end = {("test", "done"): JOBS, ("test", "processed"): 2}
    wait_for(
        lambda: db_jobs(engine) == end,
        timeout=120,
        message=lambda: f"{end} (now {db_jobs(engine)})\n{processes.log_tail('run')}",
    )
    first = scrape(url)
    assert_matches(first, end, db_transitions(engine))
    assert ("post_processing", "processed") in transitions_counter(first)
    assert ("processed", "start_publication") not in transitions_counter(first)
    errors = first["joblife_loop_errors_total"]
    assert {dict(k)["service"] for k, v in errors.items() if v} == {"publish"}
    # The failure repeats on every cycle; each failed cycle is counted.
    later = wait_for(
        lambda: (m := scrape(url))["joblife_loop_errors_total"] != errors and m,
        timeout=30,
        message="more publication cycles failing",
    )
    failed = by_label(later["joblife_loop_errors_total"], service="publish")
    assert failed > by_label(errors, service="publish") >= 1
    assert by_label(later["joblife_loop_cycles_total"], service="publish") >= failed
    assert by_label(later["joblife_loop_cycles_total"], service="create") >= 1
    assert by_label(later["joblife_loop_errors_total"], service="create") == 0
    assert "refuses to start publication" in processes.log_tail("run", lines=400)
    assert stop_gracefully(run) < 10


def test_sidecar_scrape_during_a_run_matches_the_database(
    db_url: str, engine: Engine, tmp_path: Path, processes: Processes
) -> None:
    """``joblife metrics serve`` beside a ``joblife run``: the same figures, from another
    process; after the run, the histograms of every job."""
    data_dir = tmp_path / "data"
    write_products(data_dir / "test-products", JOBS, sleep_seconds=0.6)
    env = joblife_env(db_url, data_dir)
    processes.start("serve", env, "metrics", "serve", "--port", "0", "--address", "127.0.0.1")
    url = endpoint(processes, "serve")
    run = processes.start("run", env, "run")

    metrics, jobs, transitions = scrape_between_readings(url, engine, in_flight)
    assert_matches(metrics, jobs, transitions)

    end = {("test", "done"): JOBS}
    wait_for(
        lambda: db_jobs(engine) == end,
        timeout=120,
        message=lambda: f"every job done (now {db_jobs(engine)})\n{processes.log_tail('run')}",
    )
    metrics = scrape(url)
    assert_matches(metrics, end, db_transitions(engine))
    steps = metrics["joblife_step_duration_seconds_count"]
    for step in ("pre_processing", "processing", "post_processing"):
        assert by_label(steps, job_type="test", step=step) == JOBS
    processing_sum = by_label(
        metrics["joblife_step_duration_seconds_sum"], job_type="test", step="processing"
    )
    assert processing_sum >= 0.6 * JOBS
    assert by_label(metrics["joblife_dispatch_latency_seconds_count"], job_type="test") == JOBS
    assert metrics["joblife_outbox_backlog"][()] == 0
    assert by_label(metrics["joblife_loop_cycles_total"]) == 0  # the sidecar runs no service

    assert stop_gracefully(run) < 10
    serve = processes.started[0]
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(timeout=30) == 0


def test_in_process_server_reports_the_database_down(engine: Engine, admin_engine: Any) -> None:
    """The function ``joblife run`` calls; a database that goes away is reported as down,
    the endpoint keeps answering."""
    server = start_metrics_server(engine, 0, "127.0.0.1")
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        metrics = scrape(url)
        assert metrics["joblife_database_up"][()] == 1.0
        assert "process_cpu_seconds_total" in metrics
        database = engine.url.database
        engine.dispose()
        with admin_engine.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false'))
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                {"d": database},
            )
        try:
            metrics = scrape(url)
            assert metrics["joblife_database_up"][()] == 0.0
            assert "joblife_jobs" not in metrics
        finally:
            with admin_engine.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true'))
    finally:
        server.stop()
