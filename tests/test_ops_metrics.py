"""Prometheus metrics during a real ``joblife run``: ``joblife metrics serve`` (a separate
process, as a sidecar would run it) is scraped while the orchestrator works through test
jobs with the local executor, and after; the figures match the database."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from joblife.db.status import set_job_status
from joblife.jobtypes.test_job import TestJob
from joblife.lifecycle.common import utc_now
from joblife.model import JobStatus
from joblife.ops.metrics import start_metrics_server
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from tests.support.lifecycle import kill_leftovers, wait_for

REPO = Path(__file__).resolve().parent.parent
JOBLIFE = [sys.executable, "-m", "joblife.cli.main"]
JOBS = 12
S = JobStatus


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> {sorted labels: value}."""
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def by_label(samples: dict[tuple[tuple[str, str], ...], float], **fixed: str) -> float:
    return sum(v for labels, v in samples.items() if fixed.items() <= dict(labels).items())


def environment(db_url: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBLIFE_")}
    for name in ("JOBLIFE_JOB_TYPE_MODULES", "JOBLIFE_MIGRATION_LOCATIONS"):
        env[name] = os.environ[name]
    env.update(
        JOBLIFE_DATABASE_URL=db_url,
        JOBLIFE_DATA_DIR=str(data_dir),
        JOBLIFE_LOOP_INTERVAL="0.2",
        JOBLIFE_LOCAL_DEFAULT_SLOTS="3",
        JOBLIFE_HEARTBEAT_INTERVAL_SECONDS="0.5",
        JOBLIFE_CONFIG=str(data_dir / "no-config.toml"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    return env


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    kill_leftovers([tmp_path / "data" / "local-executor"])


def db_transitions(engine: Engine) -> dict[tuple[str, str], int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT coalesce(p.name, 'none') AS from_name, s.name AS to_name, count(*) AS n "
                "FROM job_status_changes c JOIN job_statuses s ON s.id = c.status "
                "LEFT JOIN job_statuses p ON p.id = c.previous_status GROUP BY 1, 2"
            )
        ).all()
    return {(r.from_name, r.to_name): r.n for r in rows}


def db_statuses(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT s.name, count(*) FROM jobs j JOIN job_statuses s ON s.id = j.status "
                "GROUP BY 1"
            )
        ).all()
    return dict(rows)  # type: ignore[arg-type]


def test_scrape_during_a_run_matches_the_database(
    db_url: str, engine: Engine, session: Session, tmp_path: Path, processes: list
) -> None:
    base = utc_now() - timedelta(hours=1)
    jobs = [
        TestJob(
            input_product_id=f"M{i:03d}",
            input_publication_date=base,
            sleep_seconds=0.6,
        )
        for i in range(JOBS)
    ]
    session.add_all(jobs)
    session.commit()
    set_job_status(session, [j.id for j in jobs], S.READY)
    session.commit()
    env = environment(db_url, tmp_path / "data")

    serve = subprocess.Popen(
        [*JOBLIFE, "metrics", "serve", "--port", "0", "--address", "127.0.0.1"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    processes.append(serve)
    first = serve.stdout.readline()  # type: ignore[union-attr]
    match = re.search(r"http://\S+/metrics", first)
    assert match, first
    url = match.group(0)
    run = subprocess.Popen(
        [*JOBLIFE, "run"],
        env=env,
        cwd=REPO,
        stdout=(tmp_path / "run.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    processes.append(run)

    # During the run: a scrape is one consistent reading of the database.
    def in_flight() -> dict | None:
        metrics = scrape(url)
        running = by_label(metrics["joblife_executor_in_flight"])
        return metrics if running else None

    metrics = wait_for(in_flight, timeout=60, interval=0.1, message="jobs in flight")
    assert by_label(metrics["joblife_jobs"]) == JOBS
    in_flight_statuses = ("queued", "started", "pre_processing", "processing", "post_processing")
    assert by_label(metrics["joblife_executor_in_flight"], flavor="extra_small") == sum(
        by_label(metrics["joblife_jobs"], status=s) for s in in_flight_statuses
    )
    assert metrics["joblife_database_up"][()] == 1.0

    # After the run: every count is the database's.
    wait_for(
        lambda: db_statuses(engine) == {"done": JOBS},
        timeout=120,
        message=lambda: f"every job done (now {db_statuses(engine)})",
    )
    metrics = scrape(url)
    assert {dict(k)["status"]: v for k, v in metrics["joblife_jobs"].items()} == {"done": JOBS}
    transitions = {
        (dict(k)["from"], dict(k)["to"]): int(v)
        for k, v in metrics["joblife_status_transitions_total"].items()
    }
    assert transitions == db_transitions(engine)
    assert by_label(metrics["joblife_executor_in_flight"]) == 0
    steps = metrics["joblife_step_duration_seconds_count"]
    for step in ("pre_processing", "processing", "post_processing"):
        assert by_label(steps, job_type="test", step=step) == JOBS
    processing_sum = by_label(
        metrics["joblife_step_duration_seconds_sum"], job_type="test", step="processing"
    )
    assert processing_sum >= 0.6 * JOBS
    assert by_label(metrics["joblife_dispatch_latency_seconds_count"], job_type="test") == JOBS
    assert metrics["joblife_outbox_backlog"][()] == 0

    for process in (run, serve):
        process.send_signal(signal.SIGTERM)
    assert run.wait(timeout=30) == 0
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
