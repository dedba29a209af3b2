"""Benchmark of the Nomad executor against the API double on loopback (issue 4's targets).

Run: ``python bench/nomad_executor.py`` (``--help`` for the options; not ``bench/nomad.py``:
a script of that name would shadow python-nomad's ``nomad`` package). Not a test: it prints
figures, the targets and whether each is met; ``docs/benchmarks.md`` records a run. The
double (``python -m tests.nomad_double``) runs in a process of its own, without a
task-running client, so the figures measure joblife's side (python-nomad, one kept-alive
session, the database) plus the double's Python HTTP server. The script creates its own
database on the server of ``--database-url`` / ``JOBLIFE_BENCH_DATABASE_URL`` (an admin
URL), migrates it and drops it at the end.

1. **Dispatch rate**: ``--jobs`` (default 10,000) ``test`` jobs are inserted and moved to
   ``queued`` (attempt 1), then dispatched by ``NomadExecutor.dispatch`` calls in a row
   (``nomad_dispatch_rate`` 0: no pacing), each ``POST /v1/job/joblife-test/dispatch
   ?idempotency_token=<job>-1``, and the references recorded on the jobs; then 500 more
   through a client without connection reuse (a new session per request) for comparison.
2. **Reconciliation**: ``--ended`` (default 100) of those children are given an ended
   allocation (exit codes 0/2/137). Then one **monitor pass** over the ``--jobs``
   in-flight jobs, timed: ``Monitor.run_cycle`` (every step, database included) from the
   cycle that starts a pass to the one that ends it (one batch of ``--batch-size``, default
   500, per cycle), with the requests it made and the time spent in
   ``NomadExecutor.status``. For comparison, the call pattern of the monitor before it
   asked once per pass: one ``NomadExecutor.status`` per batch of ``--batch-size``
   references, over all of them.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
from benchkit import (
    add_database_url_argument,
    bench_database,
    no_op_test_jobs,
    print_table,
    sqlalchemy_url,
)
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from joblife.config import Settings  # noqa: E402
from joblife.db.engine import create_joblife_engine  # noqa: E402
from joblife.db.migrate import upgrade  # noqa: E402
from joblife.db.status import set_job_status  # noqa: E402
from joblife.executors.base import ExecutionRequest  # noqa: E402
from joblife.executors.nomad import NomadExecutor  # noqa: E402
from joblife.jobtypes.test_job import TestJob  # noqa: E402
from joblife.lifecycle.common import ServiceContext  # noqa: E402
from joblife.lifecycle.creation import insert_jobs  # noqa: E402
from joblife.lifecycle.dispatch import record_references  # noqa: E402
from joblife.lifecycle.monitor import Monitor  # noqa: E402
from joblife.model import JobStatus, load_job_types  # noqa: E402
from joblife.nomad.client import nomad_client  # noqa: E402
from joblife.nomad.deploy import deploy_specs  # noqa: E402
from joblife.nomad.specs import render_specs  # noqa: E402

S = JobStatus
PARENT = "joblife-test"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--ended", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=500, help="the monitor's batch_size")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    add_database_url_argument(parser)
    args = parser.parse_args()
    logging.getLogger("joblife").setLevel(logging.ERROR)  # the monitor's lines on the failures
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    double = subprocess.Popen(
        [sys.executable, "-m", "tests.nomad_double"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        address = double.stdout.readline().strip()  # type: ignore[union-attr]
        with (
            bench_database(make_url(args.database_url), args.keep) as url,
            tempfile.TemporaryDirectory(prefix="joblife-bench-") as data_dir,
        ):
            for name in [n for n in os.environ if n.startswith("JOBLIFE_")]:
                del os.environ[name]
            os.environ["JOBLIFE_CONFIG"] = str(Path(data_dir) / "absent-config.toml")
            settings = Settings(
                database_url=sqlalchemy_url(url),
                data_dir=Path(data_dir),
                nomad_addr=address,
                attempt_secret_key=secrets.token_hex(32),  # required with Nomad
                nomad_dispatch_rate=0,
                batch_size=args.batch_size,
            )
            run(settings, args.jobs, args.ended)
    finally:
        double.terminate()
        double.wait(timeout=10)


def run(settings: Settings, jobs: int, ended: int) -> None:
    address = str(settings.nomad_addr)
    engine = create_joblife_engine(settings=settings)
    try:
        upgrade(engine, settings=settings)
        specs = [
            s for s in render_specs(settings, load_job_types(settings)) if s.kind == "processing"
        ]
        deploy_specs(nomad_client(settings), specs)
        executor = NomadExecutor.from_settings(settings)
        ids = queued_jobs(engine, jobs)

        # 1. dispatch rate ---------------------------------------------------------------------
        latencies = []
        references: dict[int, tuple[int, str]] = {}
        began = time.perf_counter()
        for job_id in ids:
            start = time.perf_counter()
            request = ExecutionRequest(job_id, 1, "test", "extra_small", PARENT)
            references[job_id] = (1, executor.dispatch(request, f"{job_id}-1"))
            latencies.append(time.perf_counter() - start)
        rate = jobs / (time.perf_counter() - began)
        p50 = statistics.median(latencies) * 1000
        p99 = statistics.quantiles(latencies, n=100)[98] * 1000
        with Session(engine) as session:
            record_references(session, references)
            session.commit()
        fresh = fresh_connection_dispatches(settings, max(ids) + 1, 500)
        fresh_rate = len(fresh) / sum(fresh)

        # 2. reconciliation --------------------------------------------------------------------
        children = [reference for _, reference in references.values()]
        step = max(1, jobs // ended)
        finished = children[::step][:ended]
        for code, group in zip(
            (0, 2, 137), (finished[0::3], finished[1::3], finished[2::3]), strict=True
        ):
            requests.post(
                f"{address}/_double/finish", json={"JobIDs": group, "ExitCode": code}, timeout=60
            )

        before = double_requests(address)
        start = time.perf_counter()
        for index in range(0, len(children), settings.batch_size):
            executor.status(children[index : index + settings.batch_size])
        per_batch = time.perf_counter() - start
        per_batch_requests = request_delta(before, double_requests(address))

        timed = TimedStatus(executor)
        monitor = Monitor(ServiceContext(engine, settings), timed)  # type: ignore[arg-type]
        before = double_requests(address)
        start = time.perf_counter()
        cycles, failed = 0, 0
        while True:
            report = monitor.run_cycle()
            cycles += 1
            failed += report.ended
            if not monitor.pass_in_progress:
                break
        full_pass = time.perf_counter() - start
        made = request_delta(before, double_requests(address))
        if failed != len(finished):
            raise RuntimeError(f"the monitor pass failed {failed} jobs, {len(finished)} ended")
    finally:
        engine.dispose()

    print(f"double at {address}; {jobs} in-flight jobs, {len(children) + 500} children of")
    print(f"{PARENT} ({len(finished)} ended); monitor batch_size {settings.batch_size}")
    print(f"requests of the monitor pass: {made}")
    print(f"requests of status() per batch: {per_batch_requests}")
    print_table(
        [
            (
                "dispatches/s, python-nomad, kept-alive session",
                f"{rate:.0f}/s (p50 {p50:.2f} ms, p99 {p99:.2f} ms)",
                ">= 300/s",
                "met" if rate >= 300 else "NOT met",
            ),
            ("dispatches/s, new connection per request", f"{fresh_rate:.0f}/s", "-", "-"),
            (
                f"monitor pass over {jobs} in-flight jobs ({cycles} cycles)",
                f"{full_pass:.2f} s ({timed.seconds:.2f} s in status()), "
                f"{sum(made.values())} requests",
                "< 2 s",
                "met" if full_pass < 2 else "NOT met",
            ),
            (
                f"status() per batch of {settings.batch_size} (the monitor before)",
                f"{per_batch:.2f} s, {sum(per_batch_requests.values())} requests",
                "-",
                "-",
            ),
        ]
    )


def queued_jobs(engine: Any, count: int) -> list[int]:
    """``count`` test jobs moved to queued at attempt 1, as the dispatch service leaves
    them just before calling the executor; their ids."""
    jobs = no_op_test_jobs("N", count, datetime.now(UTC) - timedelta(hours=1))
    with Session(engine) as session:
        insert_jobs(session, TestJob, jobs, S.INITIALIZED)
        ids = list(session.scalars(text("SELECT id FROM jobs ORDER BY id")))
        set_job_status(session, ids, S.READY, expected=S.INITIALIZED)
        set_job_status(session, ids, S.QUEUED, expected=S.READY, message="dispatch requested")
        session.execute(text("UPDATE jobs SET attempt = 1"))
        session.commit()
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    return ids


def fresh_connection_dispatches(settings: Settings, first_id: int, count: int) -> list[float]:
    """Latencies of ``count`` dispatches, each through a new client (a new connection)."""
    latencies = []
    for job_id in range(first_id, first_id + count):
        client = nomad_client(settings)
        start = time.perf_counter()
        client.job.request(
            PARENT,
            "dispatch",
            method="post",
            params={"idempotency_token": f"{job_id}-1"},
            json={"Meta": {"job_id": str(job_id), "attempt": "1"}},
        )
        latencies.append(time.perf_counter() - start)
    return latencies


class TimedStatus:
    """The executor, with the time spent in :meth:`status` added up."""

    def __init__(self, executor: NomadExecutor) -> None:
        self._executor = executor
        self.name = executor.name
        self.seconds = 0.0

    def status(self, references: Any) -> Any:
        start = time.perf_counter()
        try:
            return self._executor.status(references)
        finally:
            self.seconds += time.perf_counter() - start

    def __getattr__(self, name: str) -> Any:
        return getattr(self._executor, name)


def double_requests(address: str) -> dict[str, int]:
    return requests.get(f"{address}/_double/requests", timeout=10).json()


def request_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    made = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    made.pop("GET /_double/requests", None)
    return made


if __name__ == "__main__":
    main()
