"""Benchmark of joblife's life cycle (issue 3's targets).

Run: ``python bench/lifecycle.py`` (``--help`` for the options). Not a test: it prints
figures, the targets and whether each is met; ``docs/benchmarks.md`` records a run.

The script creates its own uniquely named database on the server given by
``--database-url`` / ``JOBLIFE_BENCH_DATABASE_URL`` (an admin URL), migrates it with
joblife's migrations and drops it at the end, even on failure; the local executor's state
and the test products live in a temporary directory, removed at the end too.

1. **No-op jobs, discovery to done** (``--jobs``, default 1,000): that many ``test``
   products (behaviour ``succeed``, no sleep) are written as files, then an in-process
   ``Orchestrator(...).run_forever()`` runs in a thread (the very loop ``joblife run``
   runs) with the local executor and its default start method ``fork``, until every job is
   ``done``. Figures:

   - wall time: from the start of the orchestrator to the last job's ``done`` row;
   - orchestration CPU per job: CPU time of the orchestrator's thread (``time.thread_time``,
     user + system: its requests to the local executor's zygote included, the zygote and the
     workers it forks excluded, and so is the PostgreSQL server's CPU), divided by the
     number of jobs; the same per service;
   - worker start-up: from the executor's ``dispatch`` call (wall clock, taken by a thin
     wrapper around the local executor) to the worker's ``queued -> started`` history row
     (``clock_timestamp()`` on the same machine), median and p90 over every job.

2. The same for ``--exec-jobs`` (default 50) jobs with ``local_start_method=exec``: every
   worker a fresh ``python -m joblife.worker`` interpreter (the CLI-less entry point).

3. **Creation**: ``screen_discovered(TestJob, jobs, [])`` then ``insert_discovered`` (what
   ``joblife create`` calls once the type's discovery returned: the untrusted names and
   values checked, then the insert, commits included) for ``--products`` (default 100,000)
   ``TestJob`` objects built beforehand (the building is timed separately), over joblife's
   ``creation_parallelism`` connections, then again for as many other jobs over one
   connection; then one job per transaction (``session.add(job)``, commit: the naive way)
   for ``--per-transaction`` (default 2,000) other jobs, whose rate is extrapolated to
   ``--products`` jobs for the ratio. Both write the creation history row through the
   database trigger, in the same transaction. Last, the discovery cursor
   (``TestJob.get_last_inserted_job``) is timed with all those jobs in the table.

joblife's settings are its defaults (the loop interval too: the orchestrator wakes when an
execution ends, so short jobs do not wait for it), except what ``--loop-interval`` and
``--slots`` set when given.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchkit import (
    add_database_url_argument,
    bench_database,
    joblife_environment,
    no_op_test_jobs,
    print_table,
    sqlalchemy_url,
)
from joblife.config import Settings, get_settings
from joblife.db.engine import create_joblife_engine
from joblife.db.migrate import upgrade
from joblife.executors.base import ExecutionRequest, execution_token
from joblife.executors.local import LocalExecutor
from joblife.jobtypes.test_job import TestJob, write_test_product
from joblife.lifecycle.common import ServiceContext
from joblife.lifecycle.creation import insert_discovered, screen_discovered
from joblife.lifecycle.orchestrator import Orchestrator
from joblife.model import JobStatus
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session

S = JobStatus


# --- database and environment --------------------------------------------------------------


def configure_environment(url: URL, data_dir: Path, args: argparse.Namespace) -> Settings:
    """Point joblife at the bench database through ``JOBLIFE_*`` variables: the forked
    and exec'd workers read their settings from the environment, like in production."""
    settings = {}
    if args.loop_interval is not None:
        settings["loop_interval"] = str(args.loop_interval)
    if args.slots:
        settings["local_default_slots"] = str(args.slots)
    joblife_environment(sqlalchemy_url(url), data_dir, **settings)
    return get_settings()


# --- the life cycle run ----------------------------------------------------------------------


class TimedExecutor:
    """The local executor, with the wall-clock time at which each token was dispatched and
    the CPU time its ``dispatch`` calls cost the calling thread (the request to the
    zygote, which forks the worker); every other attribute is the executor's own."""

    def __init__(self, inner: LocalExecutor) -> None:
        self.inner = inner
        self.dispatched_at: dict[str, float] = {}
        self.dispatch_cpu_s = 0.0

    def dispatch(self, request: ExecutionRequest, token: str) -> str:
        self.dispatched_at.setdefault(token, time.time())
        began = time.thread_time()
        try:
            return self.inner.dispatch(request, token)
        finally:
            self.dispatch_cpu_s += time.thread_time() - began

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class LifecycleRun:
    """The figures of one run of the orchestrator over ``jobs`` jobs."""

    label: str
    jobs: int
    slots: int | None
    wall_s: float = 0.0
    thread_cpu_s: float = 0.0
    process_cpu_s: float = 0.0
    service_cpu_s: Counter[str] = field(default_factory=Counter)
    service_calls: Counter[str] = field(default_factory=Counter)
    minor_faults: int = 0  # page faults of the orchestrator's thread (copy-on-write...)
    discovery_cpu_s: float = 0.0  # in TestJob.get_jobs_to_create (part of "create")
    executor_cpu_s: float = 0.0  # in the executor's dispatch calls (part of "dispatch")
    startup_ms: list[float] = field(default_factory=list)
    queued_to_started_ms: list[float] = field(default_factory=list)
    attempts: Counter[int] = field(default_factory=Counter)

    @property
    def cpu_per_job_ms(self) -> float:
        return self.thread_cpu_s * 1000 / self.jobs


def write_products(directory: Path, prefix: str, count: int, first: datetime) -> list[str]:
    ids = [f"{prefix}{i:06d}" for i in range(count)]
    for i, product_id in enumerate(ids):
        write_test_product(directory, product_id, first + timedelta(milliseconds=i))
    return ids


def count_done(engine: Engine, product_ids: Sequence[str]) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM jobs WHERE status = :done AND input_product_id = ANY(:p)"),
            {"done": int(S.DONE), "p": list(product_ids)},
        ).scalar_one()


@contextmanager
def discovery_timed(run: LifecycleRun) -> Iterator[None]:
    """Accumulate the CPU time of the ``test`` type's own discovery (reading its product
    files): the job type's cost, inside the creation service."""
    original = TestJob.__dict__["get_jobs_to_create"]

    def timed(cls: type[TestJob], start: datetime, end: datetime) -> Any:
        began = time.thread_time()
        try:
            return original.__func__(cls, start, end)
        finally:
            run.discovery_cpu_s += time.thread_time() - began

    TestJob.get_jobs_to_create = classmethod(timed)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        TestJob.get_jobs_to_create = original  # type: ignore[method-assign]


def instrument(orchestrator: Orchestrator, run: LifecycleRun) -> None:
    """Accumulate each service's thread CPU time (wraps the orchestrator's service steps,
    a private attribute: this is a measurement, not an API)."""
    for name, step in list(orchestrator._steps.items()):

        def timed(step: Callable[[], Any] = step, name: str = name) -> Any:
            began = time.thread_time()
            try:
                return step()
            finally:
                run.service_cpu_s[name] += time.thread_time() - began
                run.service_calls[name] += 1

        orchestrator._steps[name] = timed


def run_lifecycle(
    engine: Engine,
    settings: Settings,
    start_method: str,
    products: Path,
    prefix: str,
    count: int,
    first: datetime,
    timeout: float,
) -> LifecycleRun:
    """Write ``count`` products, run the orchestrator in a thread until their jobs are
    done, and collect the figures."""
    product_ids = write_products(products, prefix, count, first)
    method = settings.model_copy(update={"local_start_method": start_method})
    executor = TimedExecutor(LocalExecutor.from_settings(method))
    slots = executor.capacity(TestJob.WORKER_FLAVOR_NAME)
    run = LifecycleRun(f"{count:,} no-op jobs, {start_method}", count, slots)
    stop = threading.Event()
    orchestrator = Orchestrator(ServiceContext(engine, settings), executor, stop_event=stop)
    instrument(orchestrator, run)
    failure: list[BaseException] = []

    def orchestrate() -> None:
        began = time.thread_time()
        faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        try:
            orchestrator.run_forever()
        except BaseException as exc:
            failure.append(exc)
        finally:
            run.thread_cpu_s = time.thread_time() - began
            run.minor_faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults

    watch_engine = create_joblife_engine(settings=settings, pool_size=1)
    thread = threading.Thread(target=orchestrate, name="orchestrator")
    cpu_began = time.process_time()
    started = time.time()
    with discovery_timed(run):
        thread.start()
        try:
            wait_until_done(watch_engine, product_ids, thread, failure, stop, timeout)
        finally:
            stop.set()
            thread.join()
            run.process_cpu_s = time.process_time() - cpu_began
            run.executor_cpu_s = executor.dispatch_cpu_s
            watch_engine.dispose()
    collect(engine, run, product_ids, executor.dispatched_at, started)
    return run


def wait_until_done(
    engine: Engine,
    product_ids: Sequence[str],
    thread: threading.Thread,
    failure: list[BaseException],
    stop: threading.Event,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while count_done(engine, product_ids) < len(product_ids):
        if failure or not thread.is_alive():
            raise RuntimeError(f"the orchestrator stopped: {failure}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not done after {timeout:.0f} s")
        stop.wait(0.25)


def collect(
    engine: Engine,
    run: LifecycleRun,
    product_ids: Sequence[str],
    dispatched_at: dict[str, float],
    started: float,
) -> None:
    """Wall time, start-up times and attempts from the history."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                """
                SELECT j.id, j.unique_id, j.attempt,
                       extract(epoch FROM (SELECT max(c.time) FROM job_status_changes c
                                            WHERE c.job_id = j.id AND c.status = :done)) AS done,
                       extract(epoch FROM q.time) AS queued, extract(epoch FROM s.time) AS started
                  FROM jobs j
                  JOIN LATERAL (SELECT c.time FROM job_status_changes c
                                 WHERE c.job_id = j.id AND c.status = :queued
                                 ORDER BY c.id LIMIT 1) q ON true
                  JOIN LATERAL (SELECT c.time FROM job_status_changes c
                                 WHERE c.job_id = j.id AND c.previous_status = :queued
                                   AND c.status = :started
                                 ORDER BY c.id LIMIT 1) s ON true
                 WHERE j.input_product_id = ANY(:p)
                """
            ),
            {
                "done": int(S.DONE),
                "queued": int(S.QUEUED),
                "started": int(S.STARTED),
                "p": list(product_ids),
            },
        ).all()
    if len(rows) != run.jobs:
        raise RuntimeError(f"{len(rows)} jobs with a started row, expected {run.jobs}")
    run.wall_s = max(float(r.done) for r in rows) - started
    for row in rows:
        run.attempts[row.attempt] += 1
        dispatched = dispatched_at[execution_token(row.id, 1, row.unique_id)]
        run.startup_ms.append((float(row.started) - dispatched) * 1000)
        run.queued_to_started_ms.append((float(row.started) - float(row.queued)) * 1000)


# --- creation --------------------------------------------------------------------------------


@dataclass
class CreationRun:
    products: int
    parallelism: int
    build_s: float = 0.0
    batch_s: float = 0.0
    one_connection_s: float = 0.0
    per_tx_jobs: int = 0
    per_tx_s: float = 0.0
    cursor_ms: float = 0.0

    @property
    def batch_rate(self) -> float:
        return self.products / self.batch_s

    @property
    def one_connection_rate(self) -> float:
        return self.products / self.one_connection_s

    @property
    def per_tx_rate(self) -> float:
        return self.per_tx_jobs / self.per_tx_s

    @property
    def per_tx_extrapolated_s(self) -> float:
        return self.products / self.per_tx_rate


def history_rows_of(engine: Engine, prefix: str) -> tuple[int, int]:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT count(DISTINCT j.id), count(c.id) FROM jobs j "
                "JOIN job_status_changes c ON c.job_id = j.id "
                "WHERE j.input_product_id LIKE :p"
            ),
            {"p": prefix + "%"},
        ).one()
    return row[0], row[1]


def checkpoint(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(text("VACUUM ANALYZE"))
        conn.execute(text("CHECKPOINT"))


def timed_creation(engine: Engine, jobs: Sequence[Any], parallelism: int) -> float:
    """Seconds the screening and ``insert_discovered`` take for ``jobs`` (all new, all
    safe), commits included."""
    checkpoint(engine)
    began = time.perf_counter()
    screened = screen_discovered(TestJob, jobs, [])
    inserted = insert_discovered(
        engine, TestJob, screened.to_create, screened.to_cancel, parallelism=parallelism
    )
    elapsed = time.perf_counter() - began
    prefix = jobs[0].input_product_id[0]
    if inserted[S.INITIALIZED] != len(jobs) or history_rows_of(engine, prefix) != (
        len(jobs),
        len(jobs),
    ):
        raise RuntimeError(f"creation inserted {inserted} of {len(jobs)}")
    return elapsed


def measure_creation(engine: Engine, products: int, per_tx: int, parallelism: int) -> CreationRun:
    result = CreationRun(products, parallelism)
    first = datetime.now(UTC) - timedelta(days=3)
    began = time.perf_counter()
    jobs = no_op_test_jobs("C", products, first)
    result.build_s = time.perf_counter() - began
    result.batch_s = timed_creation(engine, jobs, parallelism)
    result.one_connection_s = timed_creation(
        engine, no_op_test_jobs("O", products, first + timedelta(days=1)), 1
    )

    singles = no_op_test_jobs("T", per_tx, first)
    checkpoint(engine)
    with Session(engine) as session:
        began = time.perf_counter()
        for job in singles:  # the naive way: one ORM insert and one commit per job
            session.add(job)
            session.commit()
        result.per_tx_s = time.perf_counter() - began
    result.per_tx_jobs = per_tx
    if history_rows_of(engine, "T") != (per_tx, per_tx):
        raise RuntimeError("one-per-transaction creation lost jobs")

    # What the creation cursor costs once the type has this many jobs (every creation cycle
    # reads it first).
    with Session(engine) as session:
        TestJob.get_last_inserted_job(session)  # warm-up
        samples = []
        for _ in range(20):
            began = time.perf_counter()
            TestJob.get_last_inserted_job(session)
            samples.append(time.perf_counter() - began)
            session.rollback()
    result.cursor_ms = statistics.median(samples) * 1000
    return result


# --- report ----------------------------------------------------------------------------------


def quantile(values: Sequence[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def describe_run(run: LifecycleRun) -> None:
    print(
        f"  {run.label}: {run.slots} slots; wall {run.wall_s:.1f} s "
        f"({run.jobs / run.wall_s:.1f} jobs/s); orchestrator thread CPU {run.thread_cpu_s:.1f} s "
        f"(whole bench process {run.process_cpu_s:.1f} s); attempts {dict(run.attempts)}"
    )
    print(
        "  service CPU (s) / calls: "
        + ", ".join(
            f"{name} {run.service_cpu_s[name]:.2f} / {run.service_calls[name]}"
            for name in ("create", "configure", "dispatch", "monitor")
        )
    )
    print(
        f"  of which the test type's discovery (in create) {run.discovery_cpu_s:.2f} s, "
        f"the executor's dispatch calls (in dispatch) {run.executor_cpu_s:.2f} s; "
        f"minor page faults of the thread {run.minor_faults:,} ({run.minor_faults / run.jobs:.0f}"
        " per job)"
    )
    print(
        f"  start-up dispatch->started: median {statistics.median(run.startup_ms):.0f} ms, "
        f"p90 {quantile(run.startup_ms, 90):.0f} ms, max {max(run.startup_ms):.0f} ms; "
        f"queued row->started: median {statistics.median(run.queued_to_started_ms):.0f} ms"
    )


def report_rows(fork: LifecycleRun, exec_: LifecycleRun, creation: CreationRun) -> list[tuple]:
    ratio = creation.batch_rate / creation.per_tx_rate
    per_service = ", ".join(
        f"{name} {fork.service_cpu_s[name] * 1000 / fork.jobs:.1f}"
        for name in ("create", "configure", "dispatch", "monitor")
    )
    return [
        (
            f"{fork.jobs:,} no-op jobs, discovery to done (fork, {fork.slots} slots)",
            f"{fork.wall_s:.1f} s",
            "< 120 s",
            verdict(fork.wall_s < 120),
        ),
        (
            "orchestration CPU per job (orchestrator thread)",
            f"{fork.cpu_per_job_ms:.1f} ms",
            "< 20 ms",
            verdict(fork.cpu_per_job_ms < 20),
        ),
        ("  of which per service (ms/job)", per_service, "", ""),
        (
            "  of which the test type's discovery / the zygote requests",
            f"{fork.discovery_cpu_s * 1000 / fork.jobs:.1f} / "
            f"{fork.executor_cpu_s * 1000 / fork.jobs:.1f} ms",
            "",
            "",
        ),
        (
            "  without the test type's discovery",
            f"{(fork.thread_cpu_s - fork.discovery_cpu_s) * 1000 / fork.jobs:.1f} ms",
            "",
            "",
        ),
        (
            # Every cycle runs dispatch; a full one (every service) runs create too.
            "  orchestrator cycles (full ones); CPU per cycle",
            f"{fork.service_calls['dispatch']:,} ({fork.service_calls['create']:,}); "
            f"{fork.thread_cpu_s * 1000 / max(1, fork.service_calls['dispatch']):.1f} ms",
            "",
            "",
        ),
        (
            "worker start-up, dispatch -> started (fork), median",
            f"{statistics.median(fork.startup_ms):.0f} ms",
            "< 200 ms",
            verdict(statistics.median(fork.startup_ms) < 200),
        ),
        (
            "worker start-up (fork), p90",
            f"{quantile(fork.startup_ms, 90):.0f} ms",
            "< 200 ms",
            verdict(quantile(fork.startup_ms, 90) < 200),
        ),
        (
            f"worker start-up (exec, {exec_.jobs} jobs), median",
            f"{statistics.median(exec_.startup_ms):.0f} ms",
            "",
            "",
        ),
        ("worker start-up (exec), p90", f"{quantile(exec_.startup_ms, 90):.0f} ms", "", ""),
        (
            f"{exec_.jobs} no-op jobs (exec): wall / CPU per job",
            f"{exec_.wall_s:.1f} s / {exec_.cpu_per_job_ms:.1f} ms",
            "",
            "",
        ),
        (
            f"creation of {creation.products:,} jobs, commits included "
            f"({creation.parallelism} connections)",
            f"{creation.batch_rate:,.0f} jobs/s ({creation.batch_s:.2f} s)",
            ">= 30,000 jobs/s",
            verdict(creation.batch_rate >= 30_000),
        ),
        (
            f"creation of {creation.products:,} jobs over one connection",
            f"{creation.one_connection_rate:,.0f} jobs/s ({creation.one_connection_s:.2f} s)",
            "",
            "",
        ),
        (
            f"creation: one job per transaction ({creation.per_tx_jobs:,} jobs)",
            f"{creation.per_tx_rate:,.0f} jobs/s",
            "",
            "",
        ),
        (
            f"  extrapolated to {creation.products:,} jobs; ratio batch / single",
            f"{creation.per_tx_extrapolated_s:.0f} s; {ratio:.0f}x",
            "",
            "",
        ),
        (
            f"  building the {creation.products:,} TestJob objects (not in the rate)",
            f"{creation.build_s:.2f} s",
            "",
            "",
        ),
        (
            "creation cursor (get_last_inserted_job), median",
            f"{creation.cursor_ms:.1f} ms",
            "",
            "",
        ),
    ]


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_database_url_argument(parser)
    parser.add_argument("--jobs", type=int, default=1_000, help="no-op jobs run with fork")
    parser.add_argument("--exec-jobs", type=int, default=50, help="no-op jobs run with exec")
    parser.add_argument("--products", type=int, default=100_000, help="jobs created at once")
    parser.add_argument(
        "--per-transaction", type=int, default=2_000, help="jobs created one per transaction"
    )
    parser.add_argument(
        "--loop-interval",
        type=float,
        default=None,
        help="seconds between idle orchestrator cycles (JOBLIFE_LOOP_INTERVAL; default: "
        "joblife's, 5)",
    )
    parser.add_argument(
        "--slots",
        type=int,
        default=None,
        help="local executor slots per flavor (default: joblife's, the CPU count)",
    )
    parser.add_argument("--timeout", type=float, default=900, help="give up a run after this")
    parser.add_argument("--keep", action="store_true", help="do not drop the database")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    print(
        f"machine: {os.cpu_count()} CPUs, load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    data_dir = Path(tempfile.mkdtemp(prefix="joblife-bench-"))
    try:
        with bench_database(make_url(args.database_url), args.keep) as url:
            settings = configure_environment(url, data_dir, args)
            engine = create_joblife_engine(settings=settings)
            try:
                upgrade(engine, settings=settings)
                with engine.connect() as conn:
                    print(f"server: {conn.execute(text('SELECT version()')).scalar()}")
                print(
                    f"settings: loop_interval={settings.loop_interval} s, "
                    f"batch_size={settings.batch_size}, "
                    f"local_default_slots={settings.local_default_slots}"
                )
                products = settings.test_products_path
                now = datetime.now(UTC)
                print("life cycle, fork ...", flush=True)
                fork = run_lifecycle(
                    engine,
                    settings,
                    "fork",
                    products,
                    "F",
                    args.jobs,
                    now - timedelta(hours=2),
                    args.timeout,
                )
                describe_run(fork)
                print("life cycle, exec ...", flush=True)
                exec_ = run_lifecycle(
                    engine,
                    settings,
                    "exec",
                    products,
                    "E",
                    args.exec_jobs,
                    now - timedelta(hours=1),
                    args.timeout,
                )
                describe_run(exec_)
                print("creation ...", flush=True)
                creation = measure_creation(
                    engine, args.products, args.per_transaction, settings.creation_parallelism
                )
            finally:
                engine.dispose()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    print()
    print_table(report_rows(fork, exec_, creation))
    print(
        f"\nper-transaction rate measured on {creation.per_tx_jobs:,} jobs and extrapolated to "
        f"{creation.products:,}; total run time {time.perf_counter() - began:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
