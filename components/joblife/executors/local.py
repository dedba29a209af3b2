"""The local executor: each attempt runs as a worker process on this machine.

Every execution is supervised by a small *waiter* process in a session of its own:

    orchestrator ─request─► zygote ──fork──► intermediate (setsid, exits at once)
                 (a pipe)   (forked once)      └──fork──► waiter ──fork──► worker
                                                            waits, then writes <token>.exit

so an execution survives a restart of the orchestrator, and its exit status (even after a
SIGKILL of the worker) is kept on disk. Once per token: the dispatch writes ``<token>.claim``,
and the waiter creates the record ``<token>.json`` exclusively before it forks the worker;
a waiter that finds the record there starts nothing. So the record, not the claim, is the
start: a re-dispatch after a dispatch that died between its claim and its record asks
again, and of the two starts (if the first request still reached the zygote) one runs.
Its files are named by the token
``<job id>-<attempt>-<unique id>`` (:func:`~joblife.executors.base.execution_token`), so
that a database re-created against the same state directory never meets the executions
of its predecessor; a record that names another job than its token is never adopted. Any
orchestrator on this machine sharing the state directory can inspect or stop it. An
execution whose waiter vanished without writing an exit status is reported LOST, never
forgotten. The zygote, forked once from the orchestrator, does the forking so that the
orchestrator pays neither the forks nor the copy-on-write faults they cause (see
:class:`_Zygote`).

The worker is either forked (``fork``, the default: no interpreter start-up, joblife
already imported) or started as a fresh ``python -m joblife.worker`` process
(``exec``). Per-flavor slot limits bound how many run at once. The worker gets the
attempt's secret (an argument when forked, ``JOBLIFE_ATTEMPT_SECRET`` when exec'd) and,
with ``worker_database_url`` set, that URL as its database URL (the ``joblife_worker``
role's login) instead of the services' one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection, Pipe
from pathlib import Path

import psutil

from joblife.config import Settings
from joblife.errors import ExecutorError
from joblife.executors.base import (
    ExecutionRequest,
    ExecutionState,
    ExecutionStatus,
    parse_execution_token,
)
from joblife.logs import set_process_title

log = logging.getLogger(__name__)

REFERENCE_PREFIX = "local:"
#: A file of the state directory that grows by one byte per exit: its size counts them.
EXITS_STAMP = "exits.stamp"
#: How long a start request may wait for the zygote's answer before it is taken as stuck.
ZYGOTE_ANSWER_SECONDS = 30.0
#: A claim without a record older than this (for :meth:`LocalExecutor.status`): the
#: dispatching process died mid-way, or the record was removed.
CLAIM_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class _Paths:
    claim: Path
    record: Path
    exit: Path
    log: Path


class LocalExecutor:
    """Runs workers as local processes; see the module docstring."""

    name = "local"

    def __init__(
        self,
        state_dir: Path,
        *,
        slots: dict[str, int] | None = None,
        default_slots: int = 1,
        start_method: str = "fork",
        stop_grace_seconds: float = 10.0,
        worker_database_url: str | None = None,
    ) -> None:
        if start_method not in ("fork", "exec"):
            raise ValueError(f"unknown start method {start_method!r} (fork or exec)")
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.slots = dict(slots or {})
        self.default_slots = default_slots
        self.start_method = start_method
        self.stop_grace_seconds = stop_grace_seconds
        #: The workers' JOBLIFE_DATABASE_URL (the joblife_worker role's login); None: they
        #: use the services' URL.
        self.worker_database_url = worker_database_url
        self._zygote = _Zygote()

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalExecutor:
        return cls(
            settings.local_executor_dir,
            slots=settings.local_slots,
            default_slots=settings.local_default_slots,
            start_method=settings.local_start_method,
            worker_database_url=(
                settings.worker_database_url.get_secret_value()
                if settings.worker_database_url is not None
                else None
            ),
        )

    # -- the Executor interface -------------------------------------------------------------
    def capacity(self, flavor: str) -> int | None:
        return self.slots.get(flavor, self.default_slots)

    def dispatch(self, request: ExecutionRequest, token: str) -> str:
        reference = REFERENCE_PREFIX + token
        paths = self._paths(token)
        try:
            fd = os.open(paths.claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            record = _read_json(paths.record)
            if record is not None or paths.exit.exists():
                # Started before with this token: start nothing, if it was this job's.
                self._check_adoptable(request, token, record)
                return reference
            # A claim without a record: the dispatching process died before any waiter
            # took the record (perhaps before it asked). Ask again: of the waiters of
            # this token, the one that creates the record runs the worker, any other
            # starts nothing (see _waiter), so the attempt starts exactly once.
            log.info("dispatch of %s was interrupted before a start: starting it", token)
        except OSError as exc:
            raise ExecutorError(f"cannot write to {self.state_dir}: {exc}") from exc
        else:
            os.close(fd)
        try:
            _, worker_pid = self._start(request, paths)
        except BaseException as exc:
            if not paths.record.exists():
                paths.claim.unlink(missing_ok=True)  # nothing runs: the token may be used again
            if not isinstance(exc, Exception):
                raise  # an interrupt (Ctrl-C, a stop) of this process, not a failed start
            raise ExecutorError(
                f"could not start the worker of job {request.job_id}: {exc}"
            ) from exc
        if worker_pid == 0:  # another start of this token took the record first
            self._check_adoptable(request, token, _read_json(paths.record))
        return reference

    def find_execution(self, token: str) -> str | None:
        """The reference of the execution started with ``token`` (its record or its exit
        status is here, and names this token's job), or None; starts nothing. For the
        monitor: an attempt whose reference was never recorded (the orchestrator died
        after the start) is checked as the recorded ones are."""
        paths = self._paths(token)
        record = _read_json(paths.record)
        if record is None and not paths.exit.exists():
            return None
        if _foreign_to_token(record, token):
            return None
        return REFERENCE_PREFIX + token

    def _check_adoptable(self, request: ExecutionRequest, token: str, record: dict | None) -> None:
        """Raise if the execution recorded under ``token`` is not ``request``'s."""
        mismatch = _foreign(record, request.job_id, request.attempt, request.unique_id)
        if mismatch:
            raise ExecutorError(
                f"the local execution of token {token} is not job {request.job_id}'s "
                f"attempt {request.attempt} ({mismatch}): not adopted"
            )

    def status(self, references: Iterable[str]) -> dict[str, ExecutionStatus]:
        return {reference: self._status(reference) for reference in references}

    def stop(self, reference: str) -> None:
        token = self._token(reference)
        paths = self._paths(token)
        record = _read_json(paths.record)
        if record is None or paths.exit.exists() or not self._waiter_alive(record):
            return
        if _foreign_to_token(record, token):
            return  # another job's processes: not this reference's to stop
        try:
            # The waiter leads the group and ignores SIGTERM; the worker and what it
            # started get it.
            os.killpg(record["waiter_pid"], signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + self.stop_grace_seconds
        while time.monotonic() < deadline:
            if paths.exit.exists():
                return
            time.sleep(0.05)
        # Read again: a record written just before the waiter forked the worker names none.
        worker_pid = (_read_json(paths.record) or record).get("worker_pid")
        if worker_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker_pid, signal.SIGKILL)

    def change_marker(self) -> int:
        """A marker of the executions that ended so far on this machine (how many ended:
        the stamp's size), for :meth:`wait_for_change`."""
        try:
            return (self.state_dir / EXITS_STAMP).stat().st_size
        except FileNotFoundError:
            return 0

    def wait_for_change(
        self, timeout: float, stop: threading.Event, since: int | None = None
    ) -> bool:
        """Return when an execution ended here since ``since`` (a :meth:`change_marker`
        taken before the caller last looked; default: now), after ``timeout`` seconds, or
        when ``stop`` is set, whichever comes first; True if one ended. With ``since``
        taken before counting what runs, an exit in between is not missed."""
        deadline = time.monotonic() + timeout
        start = self.change_marker() if since is None else since
        while not stop.is_set():
            if self.change_marker() != start:
                return True
            if time.monotonic() >= deadline:
                return False
            stop.wait(0.02)
        return False

    # -- inspection ----------------------------------------------------------------------
    def _status(self, reference: str) -> ExecutionStatus:
        try:
            token = self._token(reference)
        except ExecutorError as exc:
            return ExecutionStatus(reference, ExecutionState.LOST, reason=str(exc))
        paths = self._paths(token)
        mismatch = _foreign_to_token(_read_json(paths.record), token)
        if mismatch:
            return ExecutionStatus(
                reference,
                ExecutionState.LOST,
                reason=f"the local execution record {paths.record} is not this attempt's "
                f"({mismatch}): not adopted",
            )
        exit_text = _read_text(paths.exit)
        if exit_text is not None:
            code = int(exit_text)
            return ExecutionStatus(reference, ExecutionState.EXITED, code, describe_exit(code))
        record = _read_json(paths.record)
        if record is None:
            if paths.claim.exists() and time.time() - _mtime(paths.claim) < CLAIM_TIMEOUT_SECONDS:
                return ExecutionStatus(reference, ExecutionState.PENDING)
            return ExecutionStatus(
                reference,
                ExecutionState.LOST,
                reason="no local execution record (the dispatch was interrupted, or the "
                f"state directory {self.state_dir} was cleaned)",
            )
        if self._waiter_alive(record):
            return ExecutionStatus(reference, ExecutionState.RUNNING)
        # The waiter may have written the exit status between our two reads.
        exit_text = _read_text(paths.exit)
        if exit_text is not None:
            code = int(exit_text)
            return ExecutionStatus(reference, ExecutionState.EXITED, code, describe_exit(code))
        return ExecutionStatus(
            reference,
            ExecutionState.LOST,
            reason=f"the worker (pid {record['worker_pid']}) and its supervisor vanished "
            "without an exit status (machine restarted or processes killed)",
        )

    def _waiter_alive(self, record: dict) -> bool:
        try:
            process = psutil.Process(record["waiter_pid"])
            if process.status() == psutil.STATUS_ZOMBIE:
                return False
            return abs(process.create_time() - record["waiter_started"]) < 1.0
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    # -- starting ------------------------------------------------------------------------
    def _paths(self, token: str) -> _Paths:
        base = self.state_dir / token
        return _Paths(
            claim=base.with_suffix(".claim"),
            record=base.with_suffix(".json"),
            exit=base.with_suffix(".exit"),
            log=base.with_suffix(".log"),
        )

    @staticmethod
    def _token(reference: str) -> str:
        if not reference.startswith(REFERENCE_PREFIX):
            raise ExecutorError(f"{reference!r} is not a local execution reference")
        return reference[len(REFERENCE_PREFIX) :]

    def close(self) -> None:
        """Stop the process that forks the workers (running executions go on)."""
        self._zygote.close()

    def _start(self, request: ExecutionRequest, paths: _Paths) -> tuple[int, int]:
        """Start waiter and worker through the zygote; return their pids."""
        return self._zygote.start(
            request, paths, _Launch(self.start_method, self.worker_database_url)
        )


class _Zygote:
    """A process forked once from this one, that forks each execution's supervisor on
    request and answers with the pids.

    Forking the orchestrator itself for every attempt costs it twice: the fork copies its
    page tables, and while a worker runs, every page the orchestrator writes is copied
    first (they share them until then): about 2,000 page faults per attempt, in the
    orchestrator's own CPU time. The zygote pays the forks; the orchestrator's pages are
    copied at most once. It inherits what this process has when it is forked (joblife
    imported, the settings), as the workers did; it is forked again if it dies, and exits
    when this process closes its end of the pipe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._pid: int | None = None

    def start(self, request: ExecutionRequest, paths: _Paths, launch: _Launch) -> tuple[int, int]:
        with self._lock:
            connection = self._connection
            try:
                if connection is None:
                    raise BrokenPipeError("no zygote yet")
                connection.send((request, paths, launch))
            except OSError:
                # Not received: a zygote that died since the last request. Another one
                # may take it; once a request was received it is never sent twice.
                self._reap()
                connection = self._fork()
                connection.send((request, paths, launch))
            try:
                if not connection.poll(ZYGOTE_ANSWER_SECONDS):
                    raise TimeoutError(f"no answer within {ZYGOTE_ANSWER_SECONDS:g} s")
                outcome, value = connection.recv()
            except (OSError, EOFError) as exc:
                self._reap(kill=True)
                raise ExecutorError(f"the worker zygote failed: {exc!r}") from exc
            if outcome != "ok":
                raise ExecutorError(value)
            return value

    def close(self) -> None:
        with self._lock:
            self._reap()

    def _fork(self) -> Connection:
        ours, theirs = Pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            ours.close()
            _zygote_main(theirs)
        theirs.close()
        self._connection, self._pid = ours, pid
        return ours

    def _reap(self, kill: bool = False) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._pid is not None:
            if kill:  # stuck or broken: it would not see its pipe close
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._pid, 0)  # it exits at the end of its pipe
            self._pid = None


def _zygote_main(connection: Connection) -> None:
    """The zygote's loop: one start request at a time, until the pipe closes."""
    try:
        # Ctrl-C in a terminal reaches the whole process group: the orchestrator stops,
        # then closes the pipe. Children reaped by _fork_supervisor. SIGTERM ends it (the
        # handler inherited from the parent's joblife.signals block has no watcher here).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        set_process_title("joblife zygote (starts the local workers)")
        while True:
            try:
                request, paths, launch = connection.recv()
            except (EOFError, OSError):
                break
            try:
                pids = _fork_supervisor(request, paths, launch, connection.fileno())
            except BaseException as exc:
                connection.send(("error", f"could not start the worker: {exc}"))
            else:
                connection.send(("ok", pids))
    finally:
        os._exit(0)


def _fork_supervisor(
    request: ExecutionRequest, paths: _Paths, launch: _Launch, inherited: int
) -> tuple[int, int]:
    """Start waiter and worker; return their pids (learnt through a pipe). ``inherited``:
    a descriptor the children must not keep (the zygote's pipe)."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    intermediate = os.fork()
    if intermediate == 0:  # pragma: no cover - runs in the child
        os.close(read_end)
        os.close(inherited)
        _intermediate(request, paths, write_end, launch)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read().decode()
    os.waitpid(intermediate, 0)
    # Two writers (intermediate, waiter) in no fixed order: each line is tagged.
    pids = dict(line.split("=", 1) for line in data.split() if "=" in line)
    if set(pids) != {"waiter", "worker"}:
        raise ExecutorError(f"the worker supervisor did not start (got {data!r})")
    return int(pids["waiter"]), int(pids["worker"])


# -- the child processes (no return from these) -----------------------------------------------
def _intermediate(request: ExecutionRequest, paths: _Paths, pipe: int, launch: _Launch) -> None:
    """Forks the waiter and exits at once, so that nobody must reap the waiter."""
    try:
        waiter = os.fork()
        if waiter == 0:
            _waiter(request, paths, pipe, launch)
        os.write(pipe, f"waiter={waiter}\n".encode())
    finally:
        os._exit(0)


def _waiter(request: ExecutionRequest, paths: _Paths, pipe: int, launch: _Launch) -> None:
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # A session (and process group) of its own, led by the waiter: stop() signals the
        # group, and the orchestrator's terminal or group signals never reach it.
        os.setsid()
        set_process_title(f"joblife waiter {request.job_id}-{request.attempt}")
        # The record is the start: created exclusively before the worker exists, so that
        # of two starts of a token (a re-dispatch after an interrupted one whose request
        # the zygote still took) one runs and the other does nothing, writing no exit
        # status; and a start that happened is on disk before the dispatch returns.
        record = {
            "token": paths.record.stem,
            "job_id": request.job_id,
            "attempt": request.attempt,
            "unique_id": request.unique_id,
            "flavor": request.worker_flavor,
            "waiter_pid": os.getpid(),
            "waiter_started": _create_time(os.getpid()),
            "worker_pid": None,
            "dispatched_at": datetime.now(UTC).isoformat(),
        }
        if not _create_exclusively(paths.record, json.dumps(record)):
            os.write(pipe, b"worker=0\n")
            return
        worker = os.fork()
        if worker == 0:
            os.close(pipe)
            _worker(request, paths, launch)
        record["worker_pid"] = worker
        _write_atomically(paths.record, json.dumps(record))
        os.write(pipe, f"worker={worker}\n".encode())
        os.close(pipe)
        _, status = os.waitpid(worker, 0)
        code = os.waitstatus_to_exitcode(status)
        if code < 0:  # killed by a signal: report it as a shell would (128 + signal)
            code = 128 - code
        _write_atomically(paths.exit, str(code))
        _count_exit(paths.exit.parent / EXITS_STAMP)
    finally:
        os._exit(0)


def _worker(request: ExecutionRequest, paths: _Paths, launch: _Launch) -> None:
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        log_fd = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        if launch.method == "exec":  # the worker's own entry point: no CLI to import
            args = [str(request.job_id), "--attempt", str(request.attempt)]
            argv = [sys.executable, "-m", "joblife.worker", *args]
            os.execve(sys.executable, argv, _worker_environment(request, launch))
        from joblife.worker.runner import run_worker_process

        # ps and top show which job this is, not the forked orchestrator's `joblife run`.
        set_process_title(f"joblife worker {request.job_id}-{request.attempt}")
        # Forked: what this process read of the environment stays; the database URL and
        # the secret are given explicitly (the secret never enters the environment).
        if launch.database_url:
            os.environ["JOBLIFE_DATABASE_URL"] = launch.database_url
        code = run_worker_process(
            request.job_id,
            request.attempt,
            attempt_secret=request.attempt_secret,
            database_url=launch.database_url,
        )
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


@dataclass(frozen=True, slots=True)
class _Launch:
    """How an execution's worker starts: ``fork`` or ``exec``, and the database URL it
    gets (None: the services' own)."""

    method: str
    database_url: str | None = None


def _worker_environment(request: ExecutionRequest, launch: _Launch) -> dict[str, str]:
    """The environment of an ``exec`` worker: this process's, with the workers' database
    URL and the attempt's secret (see :mod:`joblife.db.worker_doors`)."""
    from joblife.db.worker_doors import SECRET_ENVIRONMENT

    environment = {k: v for k, v in os.environ.items() if k not in SECRET_ENVIRONMENT}
    if launch.database_url:
        environment["JOBLIFE_DATABASE_URL"] = launch.database_url
    if request.attempt_secret:
        environment[SECRET_ENVIRONMENT[0]] = request.attempt_secret
    return environment


# -- small helpers -----------------------------------------------------------------------------
def _foreign(record: dict | None, job_id: int, attempt: int, unique_id: str | None) -> str | None:
    """How ``record`` names another execution than job ``job_id``'s ``attempt``
    (``unique_id``: a uuid, dashed or hex; None: not checked), or None if it names this
    one (or there is no record)."""
    if record is None:
        return None
    if (record.get("job_id"), record.get("attempt")) != (job_id, attempt):
        return f"its record names job {record.get('job_id')} attempt {record.get('attempt')}"
    theirs = record.get("unique_id")
    if unique_id is not None and (theirs is None or _hex(theirs) != _hex(unique_id)):
        return f"its record names job {job_id} with unique id {theirs}, not {unique_id}"
    return None


def _foreign_to_token(record: dict | None, token: str) -> str | None:
    """:func:`_foreign` for the job and unique id that ``token`` names (a token of the old
    form ``<job id>-<attempt>`` names no unique id)."""
    parsed = parse_execution_token(token)
    if record is None or parsed is None:
        return None
    return _foreign(record, *parsed)


def _hex(unique_id: str) -> str:
    return unique_id.replace("-", "").lower()


def describe_exit(code: int) -> str:
    """An exit code in words (the seed's contract: 0 = do not relaunch, 2 = relaunch)."""
    if code == 0:
        return "worker exited 0"
    if code == 2:
        return "worker exited 2 (relaunch requested)"
    if code > 128:
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            name = f"signal {code - 128}"
        return f"worker killed by {name} (exit {code})"
    return f"worker exited {code}"


def _create_time(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return 0.0


def _count_exit(path: Path) -> None:
    """Append one byte to ``path``: its size counts the exits (a size never misses one,
    where a modification time of coarse granularity could)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, b".")
    finally:
        os.close(fd)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _create_exclusively(path: Path, text: str) -> bool:
    """Create ``path`` with ``text``, complete or not at all; False if it exists."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def _read_json(path: Path) -> dict | None:
    text = _read_text(path)
    return json.loads(text) if text else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
