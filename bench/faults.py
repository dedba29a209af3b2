"""Fault injection on ``joblife run`` (issue 14, "What must be shown").

Run: ``python bench/faults.py`` (``--quick`` for a short check, ``--help`` for the options).
Not a test: it prints what happened, the table of figures, the goals and whether each is
met, and exits 1 if one is missed; ``docs/reliability.md`` records a run.

**What runs.** ``joblife run`` as a real subprocess (the CLI's ``main``, with the local
executor forking the workers), kept alive by the harness as a supervisor would: restarted
at once whenever it exits. Its jobs are the built-in ``test`` type's, ``--jobs`` products
(default 300) written as files before it starts, each with behaviour ``sleep`` (a random
sleep around ``--sleep`` seconds in the science step, so that several jobs are in flight
at every fault) and ``publish`` (one product message per job, to RabbitMQ). Nothing of
joblife is changed on disk: the subprocess is ``python bench/faults.py --as-joblife FILE
run``, which wraps ``TestJob.job_processing`` in memory, then runs the CLI; the wrapper
appends ``<job id> <attempt> <pid>`` to FILE each time the science step begins. The
workers are forked from that process (the local executor's default), so the count is the
science's own.

**Its services.**

- The database is joblife's embedded PostgreSQL server (``joblife.db.embedded``, what
  ``joblife demo`` uses), in the harness's temporary data directory: a restart is a real
  ``pg_ctl stop`` (fast mode: connections terminated), a wait, and a start on the same
  socket. The machine's shared PostgreSQL is never touched.
- RabbitMQ (``--amqp-url`` / ``JOBLIFE_BENCH_AMQP_URL``) is reached through
  ``tests/support/tcp_proxy.py``'s ``TcpProxy`` (cut, black hole, restore). The harness
  declares a uniquely named durable exchange and a queue bound to it with ``#``
  (``bench/publication.py``'s ``broker_corner``), reads the queue at the end and deletes both.

**Settings.** joblife's defaults, except what the harness must set: ``JOBLIFE_DATABASE_URL``
(its embedded server: set, so that no restarted process starts the server itself),
``JOBLIFE_DATA_DIR`` (a temporary directory), ``JOBLIFE_CONFIG`` (a missing file: no user
configuration), ``JOBLIFE_AMQP_URL`` (through the proxy), ``JOBLIFE_AMQP_EXCHANGE`` (the
unique exchange) and ``JOBLIFE_LOCAL_DEFAULT_SLOTS`` (``--slots``, default 6: the default
is the CPU count, 2 here, too few jobs in flight for a fault to meet several). So the loop
interval is 5 s, heartbeats 10 s (timeout 120 s), ``worker_database_retry_seconds`` 120 s,
``retry_backoff_seconds`` 30 s, ``outage_backoff_max_seconds`` 10 s, the broker's confirm
timeout 30 s, its connect timeout 10 s.

**The schedule** (``--seed``): once two slots' worth of jobs are done (the first wave,
which started together, is over), in a random order, each after a random quiet gap of
``--gap`` seconds: ``--kills`` kill -9 of ``joblife run`` (restarted at once), ``--cuts``
broker cuts of ``--cut`` seconds, one broker black hole of ``--black-hole`` seconds and one
database restart per ``--db-outages`` entry (seconds down). Faults do not overlap. The
black hole comes after at least ``--settle`` quiet seconds then a quiet window as long as
the hole, which gives the normal dispatch rate (next to the hole in time: same backlog,
same load on a shared machine). The science sleep is chosen so that the backlog
outlasts the schedule (unless ``--sleep`` is given). After the last fault the harness waits
for the drain (every job done or failed for good; ``--drain-timeout``), stops ``joblife
run`` with SIGTERM, reads the queue, and cleans up: workers left are killed, the exchange
and queue deleted, the server stopped and the directory removed (``--keep`` keeps both).

**Figures** (from the database, the queue and the execution file): jobs; faults by kind,
with the jobs in flight when each began; lost jobs (products without a job), stuck jobs
(not done after the drain); lost messages (outbox rows recorded published, or messages of
done jobs, that are not in the queue); duplicate message ids in the queue; science
executions per (job, attempt) and ``started`` rows per attempt; attempts spent on faults
(each failure in the history, credited to the last fault that began before it, with its
reason); time to drain after the last fault (its end to the last job's final status, with
the jobs not done then: the backlog is meant to outlast the schedule); jobs reaching
``queued`` per second during the black hole against the normal window, and the longest
time without one in each.

**Goals** (issue 14): 0 lost jobs, 0 stuck, 0 lost messages, one execution per attempt,
0 attempts spent by an orchestrator crash or by a database outage shorter than the
heartbeat timeout, dispatch rate during the black hole at least 80 % of normal.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pika
from benchkit import connect, joblife_environment, sqlalchemy_url
from publication import DEFAULT_AMQP_URL, broker_corner, queue_depth
from sqlalchemy.engine import URL, make_url

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from joblife.config import get_settings  # noqa: E402
from joblife.db.embedded import embedded_database_url, stop_embedded_server  # noqa: E402
from joblife.db.engine import create_joblife_engine  # noqa: E402
from joblife.db.migrate import upgrade  # noqa: E402
from joblife.jobtypes.test_job import TestJob, write_test_product  # noqa: E402
from joblife.model import JobStatus  # noqa: E402
from joblife.model.status import IN_FLIGHT_STATUSES  # noqa: E402

from tests.support.tcp_proxy import TcpProxy  # noqa: E402

S = JobStatus
#: The subprocess flag: run joblife's CLI with the science step counted (see the docstring).
AS_JOBLIFE = "--as-joblife"
KILL = "kill -9 of joblife run"
CUT = "broker cut"
BLACK_HOLE = "broker black hole"
DB_RESTART = "database restart"
#: Statuses a job does not leave by itself: done, cancelled, failed for good.
SETTLED = (S.DONE, S.CANCELLED, S.INTERNAL_ERROR, S.ERROR_CHECKED)
GOAL_DISPATCH_RATIO = 0.8
STARTED_MESSAGE = re.compile(r"attempt (\d+) started")


# --- the joblife subprocess ----------------------------------------------------------------


def joblife_counting_executions(executions: Path, argv: Sequence[str]) -> None:
    """Run joblife's CLI with ``argv`` in this process, the ``test`` type's science step
    appending ``<job id> <attempt> <pid>`` to ``executions`` each time it begins."""
    from joblife.cli.main import main as joblife_main

    science = TestJob.job_processing

    def counted(self: TestJob, context: Any) -> int:
        line = f"{self.id} {self.attempt} {os.getpid()}\n".encode()
        fd = os.open(executions, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)  # one write with O_APPEND: lines of concurrent workers stay whole
        finally:
            os.close(fd)
        return science(self, context)

    TestJob.job_processing = counted  # type: ignore[method-assign]
    sys.argv = ["joblife", *argv]
    joblife_main()


class Supervisor:
    """One ``joblife run`` kept running as a process supervisor would: restarted at once
    after the harness kills it, and after 1 s if it exits by itself (counted)."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.command = command
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self.exits: list[tuple[float, int]] = []  # exits the harness did not cause
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def start(self) -> None:
        with self._lock:
            self._spawn()
        self._watcher.start()

    def _spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the harness is the harness's to handle
            )
        self.starts += 1

    def kill(self) -> int:
        """kill -9 the running ``joblife run`` and start another at once; the killed pid."""
        with self._lock:
            assert self.process is not None
            pid = self.process.pid
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self._spawn()
        return pid

    def _watch(self) -> None:
        while not self._stopping.wait(0.2):
            with self._lock:
                code = self.process.poll() if self.process is not None else None
                if code is None or self._stopping.is_set():
                    continue
                self.exits.append((time.time(), code))
                print(f"  joblife run exited by itself ({code}); restarted in 1 s", flush=True)
            if self._stopping.wait(1.0):
                return
            with self._lock:
                self._spawn()

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM (SIGKILL after ``grace`` seconds); its exit code."""
        self._stopping.set()
        if self._watcher.is_alive():
            self._watcher.join(timeout=5)
        with self._lock:
            if self.process is None or self.process.poll() is not None:
                return None if self.process is None else self.process.returncode
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return self.process.wait()


# --- the database ----------------------------------------------------------------------------


def query(url: URL, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
    """Rows of one statement on a fresh connection (the server may have restarted since)."""
    conn = connect(url, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params or {})
            return cur.fetchall()
    finally:
        conn.close()


def count(url: URL, sql: str, params: dict[str, Any] | None = None) -> int:
    return int(query(url, sql, params)[0][0])


def in_flight(url: URL) -> int | None:
    try:
        return count(
            url,
            "SELECT count(*) FROM jobs WHERE status = ANY(%(s)s)",
            {"s": [int(s) for s in IN_FLIGHT_STATUSES]},
        )
    except Exception:  # the database is down or restarting: unknown
        return None


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` (an exception counts as not yet) until it holds; the time it took.
    RuntimeError after ``timeout`` seconds."""
    began = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - began
        except Exception:
            pass
        if time.monotonic() - began > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


# --- the schedule ------------------------------------------------------------------------------


@dataclass
class Fault:
    """One fault of the schedule: planned, then what happened (wall-clock times)."""

    kind: str
    seconds: float  # planned length (0: a kill)
    gap: float = 0.0  # quiet seconds before it
    began: float = 0.0
    ended: float = 0.0
    in_flight: int | None = None  # jobs queued...post_processing when it began

    @property
    def label(self) -> str:
        return self.kind if self.kind == KILL else f"{self.kind} {self.seconds:g} s"


def plan(args: argparse.Namespace, rng: random.Random) -> list[Fault]:
    """The faults in a random order, each with a random gap before it; the black hole
    after at least ``--settle`` quiet seconds (its rate is compared to a quiet window)."""
    faults = (
        [Fault(KILL, 0) for _ in range(args.kills)]
        + [Fault(CUT, args.cut) for _ in range(args.cuts)]
        + [Fault(DB_RESTART, s) for s in args.db_outages]
    )
    rng.shuffle(faults)
    faults.insert(rng.randrange(len(faults) + 1), Fault(BLACK_HOLE, args.black_hole))
    for fault in faults:
        fault.gap = rng.uniform(*args.gap)
        if fault.kind == BLACK_HOLE:
            fault.gap = max(fault.gap, args.settle)
    return faults


def planned_seconds(faults: Sequence[Fault], window: float) -> float:
    """A guess of the schedule's length: the quiet window, the gaps and the faults, and
    the orchestrator's catching up after a database restart (its backoff, 10 s at most)."""
    return window + sum(f.gap + f.seconds + (10 if f.kind == DB_RESTART else 1) for f in faults)


def write_products(directory: Path, jobs: int, sleep: float, rng: random.Random) -> list[str]:
    """``jobs`` test products: behaviour ``sleep`` (0.5 to 1.5 times ``sleep`` seconds,
    so that completions do not come in waves), one message each."""
    first = datetime.now(UTC) - timedelta(hours=1)
    ids = [f"F{i:06d}" for i in range(jobs)]
    for i, product_id in enumerate(ids):
        write_test_product(
            directory,
            product_id,
            first + timedelta(milliseconds=i),
            behaviour="sleep",
            sleep_seconds=round(sleep * rng.uniform(0.5, 1.5), 2),
            publish=True,
        )
    return ids


class Injector:
    """Applies the faults to the running system."""

    def __init__(
        self, supervisor: Supervisor, proxy: TcpProxy, pgdata: Path, url: URL, began: float
    ) -> None:
        self.supervisor = supervisor
        self.proxy = proxy
        self.pgdata = pgdata
        self.url = url
        self.began = began

    def say(self, text: str) -> None:
        print(f"  [{time.time() - self.began:6.1f} s] {text}", flush=True)

    def inject(self, fault: Fault) -> None:
        fault.in_flight = in_flight(self.url)
        fault.began = time.time()
        if fault.kind == KILL:
            pid = self.supervisor.kill()
            self.say(f"kill -9 {pid} ({fault.in_flight} jobs in flight); restarted")
        elif fault.kind in (CUT, BLACK_HOLE):
            (self.proxy.cut if fault.kind == CUT else self.proxy.black_hole)()
            self.say(f"{fault.label} ({fault.in_flight} jobs in flight)")
            time.sleep(fault.seconds)  # the outage's length is the scenario
            self.proxy.restore()
        elif fault.kind == DB_RESTART:
            if not stop_embedded_server(self.pgdata):
                raise RuntimeError("the database server was not running")
            self.say(f"{fault.label}: stopped ({fault.in_flight} jobs in flight)")
            time.sleep(fault.seconds)
            embedded_database_url(self.pgdata)  # started again, same socket
        fault.ended = time.time()
        if fault.kind != KILL:
            self.say(f"{fault.kind} over after {fault.ended - fault.began:.1f} s")


# --- the figures -------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the database, the queue and the execution file say at the end."""

    products: int
    jobs: dict[int, tuple[str, int, int]] = field(
        default_factory=dict
    )  # id: product, status, attempt
    products_without_job: list[str] = field(default_factory=list)
    history: list[tuple] = field(
        default_factory=list
    )  # (job, previous, status, time, message, details)
    publications: list[tuple] = field(default_factory=list)  # (job, attempt, message id, published)
    received: Counter[str] = field(default_factory=Counter)
    executions: Counter[tuple[int, int]] = field(default_factory=Counter)


def collect(
    url: URL, product_ids: Sequence[str], executions: Path, received: Counter[str]
) -> Outcome:
    outcome = Outcome(len(product_ids), received=received)
    for job_id, product, status, attempt in query(
        url, "SELECT id, input_product_id, status, attempt FROM jobs WHERE job_type = 'test'"
    ):
        outcome.jobs[job_id] = (product, status, attempt)
    known = {product for product, _, _ in outcome.jobs.values()}
    outcome.products_without_job = [p for p in product_ids if p not in known]
    outcome.history = query(
        url,
        "SELECT job_id, previous_status, status, extract(epoch FROM time), message, details "
        "FROM job_status_changes ORDER BY id",
    )
    outcome.publications = query(
        url,
        "SELECT job_id, attempt, message_id, extract(epoch FROM published_at) FROM publications",
    )
    if executions.exists():
        for line in executions.read_text().splitlines():
            job_id, attempt, _pid = line.split()
            outcome.executions[(int(job_id), int(attempt))] += 1
    return outcome


def drain_queue(amqp_url: str, queue: str) -> Counter[str]:
    """Take every message of ``queue``; how many times each message id came."""
    received: Counter[str] = Counter()
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        while True:
            method, properties, _body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return received
            received[properties.message_id or "(none)"] += 1
    finally:
        connection.close()


@dataclass(frozen=True)
class Dispatch:
    """Dispatch in a window: jobs reaching ``queued`` (from ``ready``) per second, the
    longest time without one, and how many jobs were still to dispatch at its end (0: the
    backlog ran out, the rate measures nothing)."""

    rate: float
    longest_pause: float
    left: int


def dispatch_in(outcome: Outcome, began: float, ended: float) -> Dispatch:
    first_queued: dict[int, float] = {}
    times = []
    for job_id, previous, status, at, _message, _details in outcome.history:
        if status == S.QUEUED and previous == S.READY:
            first_queued.setdefault(job_id, float(at))
            if began <= float(at) < ended:
                times.append(float(at))
    edges = [began, *sorted(times), ended]
    left = sum(1 for at in first_queued.values() if at >= ended)
    left += len(outcome.jobs) - len(first_queued)
    return Dispatch(len(times) / (ended - began), max(b - a for a, b in pairwise(edges)), left)


def dispatch_resumed(outcome: Outcome, faults: Sequence[Fault]) -> dict[str, list[float]]:
    """Per kind of fault: seconds from each fault's end to the next job reaching ``queued``
    (how long dispatch took to resume: a restarted ``joblife run``'s start-up, the backoff
    after a database outage)."""
    queued = sorted(
        float(at)
        for _job, previous, status, at, _message, _details in outcome.history
        if status == S.QUEUED and previous == S.READY
    )
    resumed: dict[str, list[float]] = {}
    for fault in faults:
        after = next((at for at in queued if at >= fault.ended), None)
        if fault.ended and after is not None:
            resumed.setdefault(fault.kind, []).append(after - fault.ended)
    return resumed


def spent_attempts(
    outcome: Outcome, faults: Sequence[Fault]
) -> list[tuple[int, Any, Fault | None, str]]:
    """Every failure in the history: (job, attempt, the last fault that began before it, the
    reason)."""
    spent = []
    for job_id, _previous, status, at, message, details in outcome.history:
        if status not in (S.EXTERNAL_ERROR, S.INTERNAL_ERROR):
            continue
        before = [f for f in faults if 0 < f.began <= float(at)]  # 0: not injected
        attempt = (details or {}).get("attempt", "?")
        spent.append((job_id, attempt, before[-1] if before else None, message or ""))
    return spent


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(
    outcome: Outcome,
    faults: Sequence[Fault],
    window: tuple[float, float],
    supervisor: Supervisor,
    heartbeat_timeout: float,
) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """The table's rows (figure, measured, goal, result) and the details worth printing."""
    notes: list[str] = []
    statuses = Counter(str(S(status)) for _, status, _ in outcome.jobs.values())
    not_done = {job: v for job, v in outcome.jobs.items() if v[1] != S.DONE}

    # Messages.
    published = {m for _, _, m, at in outcome.publications if at is not None}
    expected = set(published)
    for job_id, attempt, message_id, _ in outcome.publications:
        job = outcome.jobs.get(job_id)
        if job is not None and job[1] == S.DONE and attempt == job[2]:
            expected.add(message_id)  # a done job's messages must have arrived
    lost_messages = sorted(m for m in expected if m not in outcome.received)
    outbox = {m for _, _, m, _ in outcome.publications}
    unknown = sorted(m for m in outcome.received if m not in outbox)
    duplicates = {m: n for m, n in outcome.received.items() if n > 1}

    # Executions per attempt: the science's own count, and the started rows.
    started: Counter[tuple[int, int]] = Counter()
    for job_id, previous, status, _at, message, _details in outcome.history:
        match = STARTED_MESSAGE.match(message or "")
        if status == S.STARTED and previous == S.QUEUED and match:
            started[(job_id, int(match.group(1)))] += 1
    attempts = {(job, a) for job, (_, _, last) in outcome.jobs.items() for a in range(1, last + 1)}
    twice = sorted(k for k, n in outcome.executions.items() if n > 1)
    started_twice = sorted(k for k, n in started.items() if n > 1)
    final_not_once = sorted(
        (job, last)
        for job, (_, status, last) in outcome.jobs.items()
        if status == S.DONE and outcome.executions[(job, last)] != 1
    )
    never_ran = sorted(k for k in attempts if outcome.executions[k] == 0)
    once = sum(1 for k in attempts if outcome.executions[k] == 1)

    # Attempts spent, by the fault that preceded them.
    spent = spent_attempts(outcome, faults)
    by_cause = Counter(fault.label if fault else "no fault" for _, _, fault, _ in spent)
    for job_id, attempt, fault, message in spent:
        cause = fault.label if fault else "no fault"
        notes.append(f"attempt spent: job {job_id} attempt {attempt} after {cause}: {message}")
    db_faults = [f for f in faults if f.kind == DB_RESTART]
    # The goal: none spent by a crash of joblife run, nor by a database outage shorter
    # than the heartbeat timeout (a longer one may fail the workers that ran through it).
    crash_or_db = sum(
        1
        for _, _, fault, _ in spent
        if fault is not None
        and (
            fault.kind == KILL
            or (fault.kind == DB_RESTART and fault.ended - fault.began < heartbeat_timeout)
        )
    )

    # Drain and dispatch rate.
    last_fault_end = max(f.ended for f in faults)
    settled_at: dict[int, float] = {}
    for job_id, _previous, status, at, _message, _details in outcome.history:
        if status in SETTLED:
            settled_at[job_id] = float(at)
    last_settled = max(settled_at.values(), default=float("nan"))
    drain = last_settled - last_fault_end
    # The backlog is meant to outlast the schedule: how much of the drain is plain work.
    left_then = sum(1 for at in settled_at.values() if at > last_fault_end)
    left_then += len(outcome.jobs) - len(settled_at)
    hole = next(f for f in faults if f.kind == BLACK_HOLE)
    normal = dispatch_in(outcome, *window)
    holed = dispatch_in(outcome, hole.began, hole.began + hole.seconds)
    measured = normal.left > 0 and holed.left > 0 and normal.rate > 0
    ratio = holed.rate / normal.rate if normal.rate else 0.0
    if not measured:
        notes.append(
            "dispatch rate: NOT MEASURED, the backlog ran out during a window "
            f"(jobs left after the normal window {normal.left}, after the hole {holed.left}): "
            "give the jobs a longer --sleep"
        )

    kinds = Counter(f.label for f in faults)
    real_db = ", ".join(f"{f.ended - f.began:.1f}" for f in db_faults)
    flight = [f.in_flight for f in faults if f.in_flight is not None]
    rows = [
        (
            "jobs (products written / jobs / done)",
            f"{outcome.products} / {len(outcome.jobs)} / {statuses.get('done', 0)}",
            "",
            "",
        ),
        (
            "faults",
            "; ".join(f"{n} x {label}" for label, n in kinds.items())
            + f" (database down {real_db} s in all)",
            "",
            "",
        ),
        (
            "jobs in flight when a fault began (min / median)",
            f"{min(flight)} / {statistics.median(flight):g}" if flight else "unknown",
            "",
            "",
        ),
        (
            "lost jobs (products without a job)",
            str(len(outcome.products_without_job)),
            "0",
            verdict(not outcome.products_without_job),
        ),
        (
            "stuck or failed jobs (not done after the drain)",
            str(len(not_done))
            + (
                f" ({', '.join(f'{k} {n}' for k, n in statuses.items() if k != 'done')})"
                if not_done
                else ""
            ),
            "0",
            verdict(not not_done),
        ),
        (
            "lost messages (recorded published or of a done job, not in the queue)",
            str(len(lost_messages)),
            "0",
            verdict(not lost_messages),
        ),
        (
            "duplicate message ids in the queue (ids / extra copies)",
            f"{len(duplicates)} / {sum(n - 1 for n in duplicates.values())}"
            f" ({sum(outcome.received.values())} messages, {len(unknown)} not in the outbox)",
            "",
            "",
        ),
        (
            "science executions per attempt",
            f"{once} attempts once, {len(twice)} more than once, {len(never_ran)} never "
            f"(max {max(outcome.executions.values(), default=0)})",
            "1 (at most 1; once for a done job's last attempt)",
            verdict(not twice and not final_not_once),
        ),
        (
            "started rows per attempt (history)",
            f"max {max(started.values(), default=0)}; {len(started_twice)} attempts twice",
            "",
            "",
        ),
        (
            "attempts spent on faults (by the fault before them)",
            (", ".join(f"{cause} {n}" for cause, n in by_cause.items()) or "0"),
            f"0 by kill or database outage (< heartbeat timeout {heartbeat_timeout:g} s)",
            verdict(crash_or_db == 0),
        ),
        (
            "time to drain after the last fault",
            f"{drain:.1f} s ({left_then} jobs not done then; "
            f"{left_then / normal.rate:.0f} s of work at the normal rate)"
            if normal.rate
            else f"{drain:.1f} s",
            "",
            "",
        ),
        (
            "dispatch rate, black hole / normal (jobs reaching queued)",
            f"{holed.rate:.2f} / {normal.rate:.2f} jobs/s = {ratio:.0%}"
            f" ({hole.seconds:g} s windows)",
            f">= {GOAL_DISPATCH_RATIO:.0%}",
            verdict(measured and ratio >= GOAL_DISPATCH_RATIO),
        ),
        (
            "first dispatch after a fault's end, per kind (median / max)",
            "; ".join(
                f"{kind} {statistics.median(v):.1f} / {max(v):.1f} s"
                for kind, v in dispatch_resumed(outcome, faults).items()
            ),
            "",
            "",
        ),
        (
            "longest time without a dispatch, black hole / normal",
            f"{holed.longest_pause:.1f} / {normal.longest_pause:.1f} s",
            "",
            "",
        ),
        (
            "joblife run exits the harness did not cause",
            f"{len(supervisor.exits)} ({supervisor.starts} processes started in all)"
            + (f" (codes {sorted({c for _, c in supervisor.exits})})" if supervisor.exits else ""),
            "",
            "",
        ),
    ]
    for job, attempt in twice:
        notes.append(
            f"science ran {outcome.executions[(job, attempt)]} times: job {job} attempt {attempt}"
        )
    for job, attempt in final_not_once:
        notes.append(
            f"done job {job}: its last attempt {attempt} ran "
            f"{outcome.executions[(job, attempt)]} times"
        )
    for message_id in lost_messages[:20]:
        notes.append(f"lost message {message_id}")
    confirmed = {m: (job, at) for job, _, m, at in outcome.publications if at is not None}
    for message_id, copies in list(duplicates.items())[:20]:
        job, at = confirmed.get(message_id, (None, None))
        before = [f for f in faults if at is not None and 0 < f.began <= float(at)]
        notes.append(
            f"duplicate: message {message_id} of job {job} came {copies} times; recorded "
            f"published after {before[-1].label if before else 'no fault'}"
        )
    for job, (product, status, attempt) in list(not_done.items())[:20]:
        notes.append(f"not done: job {job} ({product}) {S(status)} at attempt {attempt}")
    return rows, notes


def print_markdown(rows: Sequence[tuple[str, str, str, str]]) -> None:
    print("| figure | measured | goal | result |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")


# --- main --------------------------------------------------------------------------------------


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("JOBLIFE_BENCH_AMQP_URL", DEFAULT_AMQP_URL),
        help=f"broker URL (env JOBLIFE_BENCH_AMQP_URL; default {DEFAULT_AMQP_URL})".replace(
            "%", "%%"
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short check: 120 jobs, 4 slots, 3 kills, 1 cut of 2 s, a 10 s black hole, database "
        "restarts of 2 s and 6 s, gaps of 1-4 s (explicit options still win)",
    )
    parser.add_argument("--seed", type=int, default=14, help="the schedule's and sleeps' seed")
    parser.add_argument("--jobs", type=int, help="test products (default 300)")
    parser.add_argument("--slots", type=int, help="local executor slots (default 6)")
    parser.add_argument("--sleep", type=float, help="mean science sleep (s; default: auto)")
    parser.add_argument("--kills", type=int, help="kill -9 of joblife run (default 10)")
    parser.add_argument("--cuts", type=int, help="broker cuts (default 3)")
    parser.add_argument("--cut", type=float, help="length of a broker cut (s; default 3)")
    parser.add_argument(
        "--black-hole",
        type=float,
        help="length of the black hole and of the normal window (s; default 30)",
    )
    parser.add_argument(
        "--db-outages", type=floats, help="database restarts, seconds down (default 5,30)"
    )
    parser.add_argument("--gap", type=floats, help="min,max quiet seconds before a fault (2,8)")
    parser.add_argument(
        "--settle", type=float, help="quiet seconds at least before the black hole (default 10)"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=900, help="give up the drain after this (s)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    args = parser.parse_args(argv)
    defaults: dict[str, Any] = {
        "jobs": 300,
        "slots": 6,
        "kills": 10,
        "cuts": 3,
        "cut": 3.0,
        "black_hole": 30.0,
        "db_outages": [5.0, 30.0],
        "gap": [2.0, 8.0],
        "settle": 10.0,
    }
    if args.quick:
        defaults.update(
            jobs=120,
            slots=4,
            kills=3,
            cuts=1,
            cut=2.0,
            black_hole=10.0,
            db_outages=[2.0, 6.0],
            gap=[1.0, 4.0],
            settle=5.0,
        )
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if len(args.gap) != 2 or not 0 <= args.gap[0] <= args.gap[1]:
        parser.error("--gap takes min,max")
    return args


def configure_environment(
    db_url: str, data_dir: Path, amqp_url: str, exchange: str, slots: int
) -> dict[str, str]:
    """The ``JOBLIFE_*`` settings of this process and of ``joblife run`` (see the docstring)."""
    joblife_environment(
        db_url,
        data_dir,
        log_level="INFO",
        amqp_url=amqp_url,
        amqp_exchange=exchange,
        local_default_slots=str(slots),
    )
    return dict(os.environ)


def with_query(url: str, option: str) -> str:
    return url + ("&" if "?" in url else "?") + option


def measured_code() -> str:
    """Which joblife runs: where it is imported from, the commit of its checkout and how
    many of the checkout's files under components/ and database/ differ from it (the
    code a run measures; other changes, like this script's, do not count)."""
    import joblife

    package = Path(joblife.__file__).resolve().parent
    git = ["git", "-C", str(package)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        changed = subprocess.run(
            [*git, "status", "--porcelain", "--", ":/components", ":/database"],
            capture_output=True,
            text=True,
        ).stdout.splitlines()
    except OSError:
        head, changed = "", []
    if not head:
        return f"joblife from {package} (not a git checkout)"
    dirty = f" + {len(changed)} uncommitted files in components/, database/" if changed else ""
    return f"joblife from {package}, commit {head}{dirty}"


def run(args: argparse.Namespace, data_dir: Path, began: float) -> int:
    rng = random.Random(args.seed)
    faults = plan(args, rng)
    schedule = planned_seconds(faults, args.black_hole)
    # The backlog must outlast the schedule: the jobs left after the warm-up (two slots'
    # worth) take slots x schedule / jobs seconds each, with a margin (the outages
    # dispatch nothing, so the real backlog lasts longer).
    if args.jobs <= 4 * args.slots:
        sys.exit(f"--jobs must be more than 4 x --slots ({4 * args.slots})")
    sleep = args.sleep or max(
        1.0, round(1.1 * args.slots * schedule / (args.jobs - 2 * args.slots), 1)
    )
    print(
        f"schedule (seed {args.seed}, about {schedule:.0f} s): "
        + ", ".join(f.label for f in faults)
        + f"\njobs: {args.jobs}, science sleep about {sleep:g} s, {args.slots} slots",
        flush=True,
    )
    pgdata = data_dir / "postgres"  # the embedded server's place under JOBLIFE_DATA_DIR
    executions = data_dir / "executions.txt"
    corner_url = with_query(args.amqp_url, "heartbeat=0")  # an idle admin connection for minutes
    broker = urlsplit(args.amqp_url)
    proxy = TcpProxy(broker.hostname or "127.0.0.1", broker.port or 5672)
    supervisor: Supervisor | None = None
    try:
        db_url = embedded_database_url(pgdata)  # started here, stopped in the finally
        url = make_url(db_url)
        with broker_corner(corner_url) as (exchange, queue):
            env = configure_environment(
                db_url, data_dir, proxy.url(args.amqp_url), exchange, args.slots
            )
            settings = get_settings()
            engine = create_joblife_engine(sqlalchemy_url(url), settings=settings)
            try:
                upgrade(engine, settings=settings)
            finally:
                engine.dispose()
            print(
                f"server: {query(url, 'SELECT version()')[0][0].split(' on ')[0]} "
                f"(embedded, {pgdata})"
            )
            product_ids = write_products(settings.test_products_path, args.jobs, sleep, rng)
            supervisor = Supervisor(
                [sys.executable, str(Path(__file__).resolve()), AS_JOBLIFE, str(executions), "run"],
                env,
                data_dir / "joblife-run.log",
            )
            supervisor.start()
            injector = Injector(supervisor, proxy, pgdata, url, began)
            # Two slots' worth of jobs done: the first wave, which started together, is
            # over and completions (so dispatches) no longer come in step.
            warm = 2 * args.slots
            waited = wait_until(
                lambda: (
                    count(url, "SELECT count(*) FROM jobs WHERE status = %(d)s", {"d": int(S.DONE)})
                    >= warm
                ),
                600,
                f"{warm} jobs done",
            )
            injector.say(f"{warm} jobs done after {waited:.1f} s: the faults begin")
            window = (0.0, 0.0)
            for fault in faults:
                time.sleep(fault.gap)  # the random moment of the next fault
                if fault.kind == BLACK_HOLE:
                    # The normal rate: an equally long quiet window just before the hole,
                    # so that both see the same backlog and the same load on the machine.
                    quiet = time.time()
                    window = (quiet, quiet + args.black_hole)
                    injector.say(f"quiet window of {args.black_hole:g} s")
                    time.sleep(args.black_hole)
                injector.inject(fault)
            injector.say("last fault over; waiting for the drain")
            try:
                wait_until(
                    lambda: (
                        count(url, "SELECT count(*) FROM jobs") == args.jobs
                        and count(
                            url,
                            "SELECT count(*) FROM jobs WHERE status <> ALL(%(s)s)",
                            {"s": [int(s) for s in SETTLED]},
                        )
                        == 0
                    ),
                    args.drain_timeout,
                    "every job done or failed for good",
                )
                injector.say("drained")
            except RuntimeError as exc:
                injector.say(f"{exc}: reporting what is there")
            code = supervisor.stop()
            injector.say(f"joblife run stopped with SIGTERM (exit {code})")
            print(f"queue: {queue_depth(args.amqp_url, queue)} messages", flush=True)
            received = drain_queue(args.amqp_url, queue)
            outcome = collect(url, product_ids, executions, received)
    finally:
        if supervisor is not None:
            supervisor.stop(grace=5)
        from tests.test_lifecycle_end_to_end import kill_executions  # pytest: imported late

        kill_executions(data_dir / "local-executor")
        proxy.close()
        if not args.keep:
            stop_embedded_server(pgdata)

    rows, notes = report(outcome, faults, window, supervisor, settings.heartbeat_timeout_seconds)
    print()
    for note in notes:
        print(f"  {note}")
    print()
    print_markdown(rows)
    failed = [row[0] for row in rows if row[3] == "FAIL"]
    print(f"\ngoals: {'all met' if not failed else 'MISSED: ' + '; '.join(failed)}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.time()
    print(
        f"machine: {os.cpu_count()} CPUs, load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
        + f"; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n{measured_code()}"
    )
    data_dir = Path(tempfile.mkdtemp(prefix="joblife-faults-"))
    try:
        return run(args, data_dir, began)
    finally:
        if args.keep:
            print(
                f"kept: {data_dir} (its embedded server still runs; to stop it: "
                f"JOBLIFE_DATA_DIR={data_dir} joblife db stop)"
            )
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
        print(f"wall time {time.time() - began:.0f} s")


if __name__ == "__main__":
    if sys.argv[1:2] == [AS_JOBLIFE]:
        joblife_counting_executions(Path(sys.argv[2]), sys.argv[3:])
    else:
        sys.exit(main())
