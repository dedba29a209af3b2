"""Thousands of workers through PgBouncer (issue 15, item 2).

On a private PostgreSQL (``initdb`` + ``pg_ctl`` of the installed server, started with
``max_connections = 100``; the shared server is never touched) behind a private PgBouncer
in transaction mode (``tests/support/pgbouncer.py``), this runs:

- ``--workers`` simulated workers, each a thread running joblife's real worker
  (:func:`joblife.worker.runner.run_worker`: the claim, the status changes and the outcome
  through the doors with the per-transaction proof of the attempt secret, the heartbeat
  thread, one short-lived connection at a time) on ``test`` jobs whose processing sleeps
  ``--science`` seconds (±50 %), spread over ``--processes`` processes, all as one
  ``joblife_worker`` login through PgBouncer;
- an orchestrator running joblife's dispatch and monitor cycles through PgBouncer too,
  whose executor hands each dispatched attempt (with its secret) to a free simulated
  worker. Dispatch fills the workers first; the orchestrator's **idle** cycles are timed
  then, every worker's attempt queued and no worker running (before each, as many queued
  attempts are cancelled as the workers end per cycle under load, so that an idle cycle
  dispatches as many as a loaded one); its **load** cycles while the workers run. The
  server time of the orchestrator's statements (``pg_stat_statements``) is reported for
  both, which tells the database's share of a slower cycle from the shared CPUs'.

Reported against the issue's targets: connection errors (0), lost heartbeats (0: a beat
that failed, two beats of an attempt further apart than twice the interval, or a job the
monitor failed for want of heartbeats), p99 of a heartbeat and of a worker status change
(< 50 ms: each a whole transaction, from the connection to PgBouncer to its close), and the
orchestrator's cycle under load within 2x of idle; and the server's connections (at most
100). A quick run: ``python bench/workers_scale.py --workers 200 --duration 30``.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import queue
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchkit import no_op_test_jobs, print_table
from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from joblife.config import Settings  # noqa: E402
from joblife.db.engine import create_joblife_engine  # noqa: E402
from joblife.db.migrate import upgrade  # noqa: E402
from joblife.db.status import set_job_status  # noqa: E402
from joblife.executors.base import (  # noqa: E402
    ExecutionRequest,
    ExecutionState,
    ExecutionStatus,
)
from joblife.lifecycle.common import ServiceContext  # noqa: E402
from joblife.lifecycle.orchestrator import Orchestrator  # noqa: E402
from joblife.model import JobStatus  # noqa: E402
from joblife.model.registry import load_job_types  # noqa: E402
from joblife.worker import runner  # noqa: E402
from joblife.worker.heartbeat import Heartbeat  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from tests.support.pgbouncer import pgbouncer_binary, running_pgbouncer  # noqa: E402

S = JobStatus
TARGET_MS = 50.0
WORKER_LOGIN = "bench_worker"
DATABASE = "joblife"
#: Statements of a worker's status change (a door of the status machine).
STATUS_DOOR = "worker_set_job_status"


# -- the private server ----------------------------------------------------------------------
def _postgres_bindir() -> Path:
    """The installed PostgreSQL's programs (the newest of /usr/lib/postgresql/*, else PATH)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise SystemExit("no PostgreSQL server programs (initdb, pg_ctl) installed")
    return Path(initdb).parent


def _as_server_user(command: list[str]) -> list[str]:
    """As root, PostgreSQL runs as ``postgres`` (it refuses root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def private_postgres(directory: Path, max_connections: int) -> Iterator[URL]:
    """A PostgreSQL server of this bench's own in ``directory``: its admin URL."""
    bindir = _postgres_bindir()
    directory.mkdir(parents=True)
    directory.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    pgdata = directory / "data"
    subprocess.run(
        _as_server_user(
            [str(bindir / "initdb"), "-D", str(pgdata), "-A", "trust", "-U", "postgres", "-N"]
        ),
        check=True,
        capture_output=True,
    )
    port = _free_port()
    options = (
        f"-c max_connections={max_connections} -c port={port} "
        f"-c listen_addresses=127.0.0.1 -c unix_socket_directories={directory} "
        "-c shared_preload_libraries=pg_stat_statements"
    )
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(pgdata), "-l", str(directory / "server.log")]
    subprocess.run(
        _as_server_user([*pg_ctl, "-w", "-o", options, "start"]), check=True, capture_output=True
    )
    try:
        yield make_url(f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres")
    finally:
        subprocess.run(_as_server_user([*pg_ctl, "-m", "fast", "-w", "stop"]), capture_output=True)


# -- the executor ------------------------------------------------------------------------------
class HandOverExecutor:
    """An executor whose workers are the simulated ones: a dispatch puts the attempt (its
    job id, attempt and secret) on a queue a free worker takes it from; every execution it
    was asked about is running (a job that ended is no longer in flight: not asked)."""

    name = "bench"

    def __init__(self, attempts: Any, slots: int) -> None:
        self.attempts = attempts
        self.slots = slots
        self.dispatched = 0

    def dispatch(self, request: ExecutionRequest, token: str) -> str:
        self.attempts.put((request.job_id, request.attempt, request.attempt_secret))
        self.dispatched += 1
        return f"bench:{token}"

    def status(self, references: Any) -> dict[str, ExecutionStatus]:
        return {r: ExecutionStatus(r, ExecutionState.RUNNING) for r in references}

    def stop(self, reference: str) -> None:
        pass

    def capacity(self, flavor: str) -> int | None:
        return self.slots


# -- the simulated workers ---------------------------------------------------------------------
@dataclass
class Figures:
    """What one worker process measured (sent back to the main process)."""

    beats_ms: list[float] = field(default_factory=list)
    beat_failures: list[str] = field(default_factory=list)
    late_beats: int = 0  # two consecutive beats of an attempt more than 2 intervals apart
    changes_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # database errors by kind
    error_samples: list[str] = field(default_factory=list)
    exit_codes: Counter[int] = field(default_factory=Counter)
    crashes: list[str] = field(default_factory=list)
    stopped_by_heartbeat: int = 0  # SIGTERM from a heartbeat that found its job taken away
    cpu_seconds: float = 0.0  # the process's CPU time from the start to its last worker
    wall_seconds: float = 0.0


def timed_heartbeat(figures: Figures, lock: threading.Lock) -> type[Heartbeat]:
    """The real heartbeat, timing each beat and watching the gaps between them."""

    class TimedHeartbeat(Heartbeat):
        def start(self) -> Heartbeat:
            self._last: float | None = None
            return super().start()

        def beat(self) -> JobStatus | None:
            began = time.perf_counter()
            try:
                status = super().beat()
            except Exception as exc:
                with lock:
                    figures.beat_failures.append(f"{type(exc).__name__}: {exc}"[:300])
                raise
            ended = time.perf_counter()
            with lock:
                figures.beats_ms.append((ended - began) * 1000)
                if self._last is not None and ended - self._last > 2 * self.interval:
                    figures.late_beats += 1
            self._last = ended
            return status

    return TimedHeartbeat


def instrumented_engine(figures: Figures, lock: threading.Lock) -> Any:
    """joblife's worker engine, timing each status change (from the connection to its
    close: the worker's engine opens one per transaction) and counting database errors."""
    made = runner.worker_engine
    local = threading.local()

    def engine_for(settings: Settings) -> Any:
        engine = made(settings)

        @event.listens_for(engine, "do_connect")
        def _connecting(*_: Any) -> None:
            if getattr(local, "began", None) is None:
                local.began = time.perf_counter()
                local.change = False

        @event.listens_for(engine, "before_cursor_execute")
        def _statement(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            if STATUS_DOOR in statement:
                local.change = True

        @event.listens_for(engine, "checkin")
        def _returned(*_: Any) -> None:
            began = getattr(local, "began", None)
            if began is not None and getattr(local, "change", False):
                with lock:
                    figures.changes_ms.append((time.perf_counter() - began) * 1000)
            local.began = None

        @event.listens_for(engine, "handle_error")
        def _error(context: Any) -> None:
            error = context.original_exception
            # No connection yet (refused, timed out) or one lost: a connection error.
            kind = "connection" if context.connection is None or context.is_disconnect else "other"
            with lock:
                figures.errors[kind] += 1
                if len(figures.error_samples) < 20:
                    figures.error_samples.append(f"{type(error).__name__}: {error}"[:300])

        return engine

    return engine_for


def worker_process(
    threads: int,
    attempts: Any,
    start: Any,
    results: Any,
    settings: Settings,
    duration: float,
    ramp: float,
    switch_interval: float | None,
) -> None:
    """One process of simulated workers: ``threads`` of them, from ``start`` on, each
    taking attempts until ``duration`` seconds have passed (finishing the one it runs)."""
    figures = Figures()
    lock = threading.Lock()

    def taken_away(signum: int, frame: Any) -> None:
        figures.stopped_by_heartbeat += 1

    signal.signal(signal.SIGTERM, taken_away)
    runner.Heartbeat = timed_heartbeat(figures, lock)  # type: ignore[misc]
    runner.worker_engine = instrumented_engine(figures, lock)  # type: ignore[assignment]
    load_job_types(settings)  # once, before the threads
    threading.stack_size(512 * 1024)
    if switch_interval:
        sys.setswitchinterval(switch_interval)
    start.wait()
    deadline = time.monotonic() + duration
    cpu, wall = time.process_time(), time.monotonic()

    def simulated_worker(seed: int) -> None:
        time.sleep(random.Random(seed).uniform(0, ramp))  # workers start over the ramp
        while time.monotonic() < deadline:
            try:
                job_id, attempt, secret = attempts.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                code = runner.run_worker(job_id, attempt, settings, attempt_secret=secret)
            except BaseException as exc:  # reported, never silent
                with lock:
                    figures.crashes.append(f"job {job_id}: {type(exc).__name__}: {exc}"[:300])
                continue
            with lock:
                figures.exit_codes[code] += 1

    pool = [
        threading.Thread(target=simulated_worker, args=(os.getpid() * 100_000 + i,), daemon=True)
        for i in range(threads)
    ]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    figures.cpu_seconds = time.process_time() - cpu
    figures.wall_seconds = time.monotonic() - wall
    results.put(figures)


# -- the main process --------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def seed_ready_jobs(url: str, count: int, science: float) -> None:
    """``count`` test jobs, ready, each processing for ``science`` seconds ±50 %."""
    engine = create_joblife_engine(url)
    rng = random.Random(15)
    try:
        first = datetime.now(UTC) - timedelta(days=1)
        for offset in range(0, count, 2000):
            jobs = no_op_test_jobs(f"W{offset:07d}-", min(2000, count - offset), first)
            for job in jobs:
                job.sleep_seconds = science * rng.uniform(0.5, 1.5)
            with Session(engine) as session:
                session.add_all(jobs)
                session.flush()
                set_job_status(session, [job.id for job in jobs], S.READY, message="bench")
                session.commit()
    finally:
        engine.dispose()


class ServerWatch:
    """Samples the server's client connections every 0.2 s (one direct connection)."""

    def __init__(self, url: str) -> None:
        self.engine = create_joblife_engine(url, pool_size=1, max_overflow=0)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="server-watch", daemon=True)

    def __enter__(self) -> ServerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.engine.dispose()

    def _run(self) -> None:
        with self.engine.connect() as conn:
            while not self._stop.wait(0.2):
                count = conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE backend_type = 'client backend'"
                    )
                ).scalar_one()
                conn.rollback()
                self.peak = max(self.peak, int(count))


def services_server_time(url: str, reset: bool = False) -> tuple[float, int]:
    """The server time (ms) and count of the top-level statements the services' login
    (the admin user, through PgBouncer) ran since the last reset, this bench's own
    sampling left out; ``reset``: start counting again."""
    engine = create_joblife_engine(url)
    try:
        with engine.begin() as conn:
            if reset:
                conn.execute(text("SELECT pg_stat_statements_reset()"))
                return 0.0, 0
            row = conn.execute(
                text(
                    "SELECT coalesce(sum(total_exec_time), 0), coalesce(sum(calls), 0) "
                    "FROM pg_stat_statements WHERE userid = 'postgres'::regrole "
                    "AND query NOT LIKE '%pg_stat_%' AND query NOT LIKE '%cancel_jobs%'"
                )
            ).one()
            return float(row[0]), int(row[1])
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Cycle:
    """One orchestrator cycle: its dispatch and monitor steps (wall ms), how many attempts
    it dispatched, and the orchestrator thread's own CPU time (ms)."""

    dispatch_ms: float
    monitor_ms: float
    dispatched: int
    cpu_ms: float

    @property
    def total_ms(self) -> float:
        return self.dispatch_ms + self.monitor_ms


def run_cycle(
    orchestrator: Orchestrator, executor: HandOverExecutor, dispatch: bool = True
) -> Cycle:
    """One cycle of the orchestrator's dispatch (unless ``dispatch`` is false) and monitor."""
    cpu = time.thread_time()
    before = executor.dispatched
    began = time.perf_counter()
    reports = [orchestrator.run_once(["dispatch"])] if dispatch else []
    dispatched_at = time.perf_counter()
    reports.append(orchestrator.run_once(["monitor"]))
    ended = time.perf_counter()
    for report in reports:
        if report.errors:
            print(f"  orchestrator errors: {report.errors}")
    return Cycle(
        (dispatched_at - began) * 1000,
        (ended - dispatched_at) * 1000,
        executor.dispatched - before,
        (time.thread_time() - cpu) * 1000,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2000, help="simulated workers")
    parser.add_argument("--processes", type=int, default=8, help="processes they run in")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load")
    parser.add_argument("--science", type=float, default=120.0, help="processing seconds (±50 %%)")
    parser.add_argument("--heartbeat", type=float, default=10.0, help="heartbeat interval (s)")
    parser.add_argument("--ramp", type=float, default=60.0, help="workers start over this (s)")
    parser.add_argument("--pool-size", type=int, default=40, help="PgBouncer's pool per user")
    parser.add_argument("--max-connections", type=int, default=100, help="the server's")
    parser.add_argument("--idle-cycles", type=int, default=10, help="orchestrator cycles idle")
    parser.add_argument("--cycle-interval", type=float, default=1.0, help="between cycles (s)")
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="the worker processes' sys.setswitchinterval (default Python's, 0.005 s)",
    )
    args = parser.parse_args()
    if pgbouncer_binary() is None:
        raise SystemExit("pgbouncer is not installed (bash scripts/system-packages.sh)")

    print(
        f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
        f"({os.cpu_count()} CPUs)"
    )
    tmp = Path(tempfile.mkdtemp(prefix="joblife-bench-workers-"))
    tmp.chmod(0o755)
    os.environ["JOBLIFE_CONFIG"] = str(tmp / "no-config.toml")
    os.environ["JOBLIFE_DATA_DIR"] = str(tmp / "services")
    try:
        with private_postgres(tmp / "pg", args.max_connections) as admin:
            run_bench(args, tmp, admin)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def run_bench(args: argparse.Namespace, tmp: Path, admin: URL) -> None:
    admin_engine = create_joblife_engine(
        admin.render_as_string(False), isolation_level="AUTOCOMMIT"
    )
    with admin_engine.connect() as conn:
        version = conn.execute(text("SHOW server_version")).scalar()
        conn.execute(text(f'CREATE DATABASE "{DATABASE}"'))
    direct = admin.set(database=DATABASE).render_as_string(hide_password=False)
    engine = create_joblife_engine(direct)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{WORKER_LOGIN}" LOGIN IN ROLE joblife_worker'))
        conn.execute(text("CREATE EXTENSION pg_stat_statements"))
        max_connections = conn.execute(text("SHOW max_connections")).scalar()
    engine.dispose()
    admin_engine.dispose()
    print(f"server: PostgreSQL {version}, max_connections = {max_connections} (private)")

    expected_attempts = int(args.workers * (args.duration / args.science + 3))
    began = time.perf_counter()
    seed_ready_jobs(direct, expected_attempts, args.science)
    print(f"seeded {expected_attempts} ready test jobs in {time.perf_counter() - began:.1f} s")

    with running_pgbouncer(
        admin,
        pool_size=args.pool_size,
        max_client_conn=args.workers * 2 + 200,
        extra=f"max_db_connections = {args.max_connections - 10}",
    ) as bouncer:
        bouncer.add_user(WORKER_LOGIN)
        pooled = make_url(bouncer.url(direct))
        print(f"pgbouncer: 127.0.0.1:{bouncer.port}, transaction mode, pool {args.pool_size}")
        services = Settings(
            database_url=pooled.render_as_string(hide_password=False),
            data_dir=tmp / "services",
            max_in_flight=args.workers,
            batch_size=500,
            heartbeat_interval_seconds=args.heartbeat,
        )
        workers = Settings(
            database_url=bouncer.url(direct, username=WORKER_LOGIN),
            data_dir=tmp / "worker-data",
            work_root=tmp / "work",
            storage_url=(tmp / "storage").as_uri(),
            heartbeat_interval_seconds=args.heartbeat,
        )
        run_load(args, services, workers, direct, bouncer)


def run_load(
    args: argparse.Namespace, services: Settings, workers: Settings, direct: str, bouncer: Any
) -> None:
    context = multiprocessing.get_context("fork")
    attempts = context.Queue()
    start = context.Event()
    results = context.Queue()
    shares = [
        args.workers // args.processes + (i < args.workers % args.processes)
        for i in range(args.processes)
    ]
    processes = [
        context.Process(
            target=worker_process,
            args=(
                n,
                attempts,
                start,
                results,
                workers,
                args.duration,
                args.ramp,
                args.switch_interval,
            ),
            daemon=True,
        )
        for n in shares
        if n
    ]
    for process in processes:
        process.start()

    services_engine = create_joblife_engine(services.database_url.get_secret_value())
    executor = HandOverExecutor(attempts, args.workers)
    orchestrator = Orchestrator(
        ServiceContext(services_engine, services), executor, ["dispatch", "monitor"]
    )
    fill: list[Cycle] = []
    idle: list[Cycle] = []
    load: list[Cycle] = []
    try:
        with ServerWatch(direct) as watch:
            while executor.dispatched < args.workers:
                fill.append(run_cycle(orchestrator, executor))
            print(
                f"dispatch filled {executor.dispatched} workers in {len(fill)} cycles, "
                f"{sum(c.dispatch_ms for c in fill) / 1000:.1f} s"
            )
            # Idle: no worker runs; before each cycle (untimed) as many queued attempts
            # are cancelled as the workers will end per cycle under load, so that each
            # idle cycle dispatches as many as a loaded one.
            room = max(1, round(args.workers * args.cycle_interval / args.science))
            services_server_time(direct, reset=True)
            for _ in range(args.idle_cycles):
                cancel_queued(direct, room)
                idle.append(run_cycle(orchestrator, executor))
                time.sleep(args.cycle_interval)
            server_idle = services_server_time(direct)
            start.set()
            load_began = time.monotonic()
            services_server_time(direct, reset=True)
            pooler_before = pooler_stats(bouncer)
            while time.monotonic() - load_began < args.duration:
                load.append(run_cycle(orchestrator, executor))
                time.sleep(args.cycle_interval)
            server_load = services_server_time(direct)
            pooler = {k: v - pooler_before.get(k, 0) for k, v in pooler_stats(bouncer).items()}
            # The workers finish the attempts they run; the monitor keeps watching.
            figures: list[Figures] = []
            while len(figures) < len(processes):
                with contextlib.suppress(queue.Empty):
                    figures.append(results.get(timeout=args.cycle_interval))
                    continue
                run_cycle(orchestrator, executor, dispatch=False)
            peak = watch.peak
        pools = bouncer.admin("SHOW POOLS")
        stale = stale_failures(direct)
    finally:
        orchestrator.close()
        services_engine.dispose()
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join(10)
    report(args, figures, idle, load, (server_idle, server_load), peak, pools, stale, pooler)


def pooler_stats(bouncer: Any) -> dict[str, int]:
    """PgBouncer's cumulative counters of the joblife database (``SHOW STATS``)."""
    for row in bouncer.admin("SHOW STATS"):
        if row["database"] == DATABASE:
            return {k: int(v) for k, v in row.items() if k.startswith("total_")}
    return {}


def cancel_queued(url: str, count: int) -> None:
    """Cancel ``count`` queued attempts (the oldest) as an operator would."""
    engine = create_joblife_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "SELECT cancel_jobs(ARRAY(SELECT id FROM jobs WHERE status = :s "
                    "ORDER BY id LIMIT :n), 'bench: room for an idle dispatch')"
                ),
                {"s": int(S.QUEUED), "n": count},
            )
    finally:
        engine.dispose()


def stale_failures(url: str) -> int:
    """Jobs the monitor failed for want of heartbeats."""
    engine = create_joblife_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM job_status_changes WHERE status = :s "
                        "AND message ILIKE '%heartbeat%'"
                    ),
                    {"s": int(S.EXTERNAL_ERROR)},
                ).scalar_one()
            )
    finally:
        engine.dispose()


def report(
    args: argparse.Namespace,
    figures: list[Figures],
    idle: list[Cycle],
    load: list[Cycle],
    server: tuple[tuple[float, int], tuple[float, int]],
    peak: int,
    pools: list[dict[str, Any]],
    stale: int,
    pooler: dict[str, int],
) -> None:
    beats = [ms for f in figures for ms in f.beats_ms]
    changes = [ms for f in figures for ms in f.changes_ms]
    failures = [m for f in figures for m in f.beat_failures]
    late = sum(f.late_beats for f in figures)
    errors = sum((f.errors for f in figures), Counter())
    exits = sum((f.exit_codes for f in figures), Counter())
    crashes = [c for f in figures for c in f.crashes]
    taken = sum(f.stopped_by_heartbeat for f in figures)
    connection_errors = errors["connection"]
    lost = len(failures) + late + stale

    def median(cycles: list[Cycle], what: str) -> float:
        return statistics.median(getattr(c, what) for c in cycles)

    def per_job(cycles: list[Cycle]) -> float:
        busy = [c for c in cycles if c.dispatched]
        return sum(c.dispatch_ms for c in busy) / max(1, sum(c.dispatched for c in busy))

    idle_p50, load_p50 = median(idle, "total_ms"), median(load, "total_ms")
    idle_monitor, load_monitor = median(idle, "monitor_ms"), median(load, "monitor_ms")
    idle_per_job, load_per_job = per_job(idle), per_job(load)
    (idle_server, idle_calls), (load_server, load_calls) = server
    idle_server_cycle, load_server_cycle = idle_server / len(idle), load_server / len(load)
    load_cpu = sum(c.cpu_ms for c in load) / sum(c.total_ms for c in load)
    print()
    print(
        f"{args.workers} workers in {len(figures)} processes, {args.duration:.0f} s of load, "
        f"heartbeat every {args.heartbeat:g} s, science {args.science:g} s ±50 %"
    )
    print(
        f"attempts ended: {sum(exits.values())} (exit codes {dict(exits)}); "
        f"heartbeats: {len(beats)}; status changes: {len(changes)}"
    )
    print(
        f"database errors: {dict(errors) or 0}; worker crashes: {len(crashes)}; "
        f"workers stopped by their heartbeat: {taken}"
    )
    for sample in [s for f in figures for s in f.error_samples][:5] + failures[:5] + crashes[:5]:
        print(f"  e.g. {sample}")
    cores = sum(f.cpu_seconds for f in figures) / max(f.wall_seconds for f in figures)
    print(f"simulated workers' own CPU: {cores:.2f} cores on average")
    transactions = max(1, pooler.get("total_xact_count", 0))
    queries = max(1, pooler.get("total_query_count", 0))
    print(
        f"pgbouncer over the load ({transactions} transactions, {queries} queries): "
        f"wait for a server connection {pooler.get('total_wait_time', 0) / transactions:.0f} us "
        f"per transaction, query {pooler.get('total_query_time', 0) / queries:.0f} us, "
        f"transaction {pooler.get('total_xact_time', 0) / transactions:.0f} us (on average)"
    )
    worker_pools = [p for p in pools if p["user"] == WORKER_LOGIN]
    if worker_pools:
        p = worker_pools[0]
        print(
            f"pgbouncer worker pool at the end: maxwait {p['maxwait']} s {p['maxwait_us']} us, "
            f"server connections {p['sv_active'] + p['sv_idle'] + p['sv_used']}"
        )

    def ms(values: Sequence[float]) -> str:
        return f"{percentile(values, 0.5):.1f} / {percentile(values, 0.99):.1f}"

    def ok(condition: bool) -> str:
        return "met" if condition else "NOT met"

    print_table(
        [
            ("connection errors", str(connection_errors), "0", ok(connection_errors == 0)),
            (
                "lost heartbeats (failed / late / stale jobs)",
                f"{lost} ({len(failures)} / {late} / {stale})",
                "0",
                ok(lost == 0),
            ),
            (
                "heartbeat p50 / p99 (ms)",
                ms(beats),
                f"p99 < {TARGET_MS:g}",
                ok(percentile(beats, 0.99) < TARGET_MS),
            ),
            (
                "status change p50 / p99 (ms)",
                ms(changes),
                f"p99 < {TARGET_MS:g}",
                ok(percentile(changes, 0.99) < TARGET_MS),
            ),
            (
                "orchestrator cycle p50 idle / load (ms)",
                f"{idle_p50:.0f} / {load_p50:.0f} (x{load_p50 / idle_p50:.2f})",
                "load <= 2x idle",
                ok(load_p50 <= 2 * idle_p50),
            ),
            (
                "  monitor step p50 idle / load (ms)",
                f"{idle_monitor:.0f} / {load_monitor:.0f} (x{load_monitor / idle_monitor:.2f})",
                "load <= 2x idle",
                ok(load_monitor <= 2 * idle_monitor),
            ),
            (
                "  dispatch per attempt idle / load (ms)",
                f"{idle_per_job:.2f} / {load_per_job:.2f} (x{load_per_job / idle_per_job:.2f})",
                "load <= 2x idle",
                ok(load_per_job <= 2 * idle_per_job),
            ),
            (
                "  server time per cycle idle / load (ms)",
                f"{idle_server_cycle:.1f} / {load_server_cycle:.1f} "
                f"({idle_calls / len(idle):.0f} / {load_calls / len(load):.0f} statements)",
                "-",
                "-",
            ),
            (
                "  dispatched per cycle p50 idle / load",
                f"{median(idle, 'dispatched'):.0f} / {median(load, 'dispatched'):.0f}",
                "-",
                "-",
            ),
            (
                "  load cycles: p99 (ms), orchestrator CPU / wall",
                f"{percentile([c.total_ms for c in load], 0.99):.0f}, {load_cpu:.0%}",
                "-",
                "-",
            ),
            (
                "server connections, peak",
                str(peak),
                f"<= {args.max_connections}",
                ok(peak <= args.max_connections),
            ),
        ]
    )


if __name__ == "__main__":
    main()
