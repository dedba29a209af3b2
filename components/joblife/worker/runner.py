"""``joblife worker run JOB_ID``: one attempt of one job, from ``queued`` to ``processed``.

1. ``queued → started`` only if the job is queued for this very attempt; a duplicate or
   outdated execution exits 0 and changes nothing.
2. A heartbeat runs while the job does.
3. ``pre_processing`` → ``job_pre_processing``, ``processing`` → ``job_processing`` (the
   science return code), ``post_processing`` → ``job_post_processing``.
4. ``processed`` with the publication messages written to the outbox in the same
   transaction, or straight on to ``done`` when the job generated no product or has
   nothing to publish. The return
   code and the step durations go into the status details.

A database outage is ridden through: each database unit (the claim, a status change with
the outcome, the final status with the outbox, a failure's record) is retried with backoff on
a new connection while the failure is the connection's, for ``worker_database_retry_seconds``
(then exit 2, relaunch); the science step is not run again. A unit whose commit the outage
may have swallowed and that then conflicts is checked: if the job is already where it was
going (at this attempt; the claim by its own nonce), it was this worker's write. No
transaction is held across a step.

The worker costs the database (or its pooler, PgBouncer in transaction mode) one
connection at most, and only while a transaction runs: the steps and the heartbeat share
one connection, opened for each transaction and closed after it
(:func:`~joblife.db.engine.worker_engine`).

Failures: :class:`~joblife.errors.ExternalJobError` → ``external_error`` and exit 2 (relaunch);
anything else → ``internal_error`` and exit 0 (do not relaunch). If the job stopped being
this attempt's (cancelled, failed by the monitor), the worker stops and exits 0. A classified
failure (a :class:`~joblife.errors.JobFailure`: a failed science step, a missing input...)
is recorded with its message alone, which says what went wrong (a science step's own last
log line included); only an unexpected exception, a bug, gets its traceback in the status
details and the log.

Every line the worker process logs, from any thread or library, carries the job's
``job_id``, ``job_type``, ``attempt`` and current ``status`` (updated at each change; see
:mod:`joblife.logs`).

The worker writes no table itself: its status changes, heartbeat, outcome (exit code,
science image, output path) and outbox go through the database's worker doors
(:mod:`joblife.db.worker_doors`), each checking the attempt and its secret, which every
transaction of the worker proves. What a step's hooks change on the job is recorded
through the outcome door before each status change; any other column a hook changes is
an internal error (a worker may not write it).

Whatever the outcome, the work dir is removed and the science logs uploaded
(:meth:`WorkerContext.close`); the figures of the download, processing and upload steps
(files, bytes, seconds) go into the status details. SIGTERM (a cancel, Nomad stopping the
allocation) unwinds the steps first, so that a running container or process is killed and
removed, then ends the process by that signal.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import SecretStr
from sqlalchemy import Engine, inspect, select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from joblife.config import Settings, get_settings
from joblife.db.engine import worker_engine
from joblife.db.status import worker_set_job_status
from joblife.db.worker_doors import (
    OUTCOME_COLUMNS,
    attempt_secret,
    attempt_secret_key,
    is_connection_failure,
    present_secret,
    retry_on_outage,
    secret_from_environment,
    worker_heartbeat,
    worker_record_outcome,
    worker_write_publications,
)
from joblife.errors import (
    ExternalJobError,
    InternalJobError,
    JobFailure,
    StatusConflict,
    StatusError,
)
from joblife.logs import JobLogger, setup_logging
from joblife.model import Job, JobStatus, JobStatusChange, JobTemplate, load_job_types
from joblife.model.status import IN_FLIGHT_STATUSES
from joblife.worker.context import WorkerContext, work_root
from joblife.worker.heartbeat import Heartbeat

log = logging.getLogger(__name__)
#: A worker's log fields: job_id, job_type, attempt, status (updated in place).
LogFields = dict[str, Any]

EXIT_DO_NOT_RELAUNCH = 0
EXIT_RELAUNCH = 2
#: SQLSTATE of a door's refusal (a wrong or missing attempt secret, an insane value).
INSUFFICIENT_PRIVILEGE = "42501"
#: Namespace of the deterministic publication message ids.
MESSAGE_NAMESPACE = uuid.UUID("6f1c3b9e-6a43-4d53-9c36-7f4a8d2b1e10")
S = JobStatus
T = TypeVar("T")


def message_id(unique_id: uuid.UUID, product: str, attempt: int) -> str:
    """The deterministic id of a product's publication message for one attempt: the version
    3 UUID of ``<unique_id>/<product>/<attempt>`` in :data:`MESSAGE_NAMESPACE`. The outbox
    door computes the same (``joblife_message_uuid`` in SQL, which has no SHA-1 for a
    version 5) and refuses any other: a worker cannot name another job's message."""
    return str(uuid.uuid3(MESSAGE_NAMESPACE, f"{unique_id}/{product}/{attempt}"))


class _Refused(Exception):
    """The database refused this worker its attempt (a wrong or missing secret): nothing
    can be recorded; the worker exits asking for a relaunch (a new attempt, a new secret)."""


class WorkerTerminated(BaseException):
    """SIGTERM reached the worker: unwind (cleaning up as the stack unwinds), then die of
    it. A BaseException, so that no step's ``except Exception`` swallows it."""


def _terminate(signum: int, frame: Any) -> None:
    raise WorkerTerminated(f"signal {signum}")


#: prctl(2) options: whether the process's /proc files belong to its user or to root.
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4


def forbid_inspection() -> bool:
    """Make this process not dumpable (Linux ``prctl(PR_SET_DUMPABLE, 0)``): its /proc files
    (``environ``, ``mem``, ...) then belong to root and it cannot be ptraced, so a process
    step running as the same non-root user cannot read the attempt secret or the database
    URL from the environment block the worker started with (removing them from
    ``os.environ`` does not change that block). A step started by exec is dumpable again:
    it runs as usual. Whether it took effect (False off Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc prctl: not Linux
        return False


def run_worker_process(
    job_id: int,
    attempt: int | None,
    *,
    attempt_secret: str | None = None,
    database_url: str | None = None,
) -> int:
    """Entry point of a worker process: configure logging (every line of the process with
    the job's fields, kept current by the attempt), run, return the exit code.
    ``attempt_secret``: the attempt's secret (default: from the environment, see
    :func:`run_worker`); ``database_url``: instead of the configured one (the local
    executor's ``worker_database_url``). Without it, the worker's database URL is the
    setting ``worker_database_url`` when set (a pooler's, or the worker role's login),
    else ``database_url``."""
    inspectable = not forbid_inspection()  # first: before anything reads a secret
    settings = get_settings()
    if not database_url and settings.worker_database_url is not None:
        database_url = settings.worker_database_url.get_secret_value()
    if database_url:
        settings = settings.model_copy(update={"database_url": SecretStr(database_url)})
    fields: LogFields = {"job_id": job_id, "attempt": attempt}
    setup_logging(settings=settings, context=fields)
    if inspectable:
        JobLogger(log, fields).warning(
            "job %s: could not make the worker process undumpable (not Linux?): a process "
            "step running as this user may read its environment",
            job_id,
        )
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return run_worker(
            job_id, attempt, settings, log_fields=fields, attempt_secret=attempt_secret
        )
    except WorkerTerminated:
        JobLogger(log, fields).warning("job %s: terminated by SIGTERM (cleaned up)", job_id)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)  # exit as the signal would have
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_worker(
    job_id: int,
    attempt: int | None = None,
    settings: Settings | None = None,
    log_fields: LogFields | None = None,
    attempt_secret: str | None = None,
) -> int:
    """Run one attempt of ``job_id`` (``attempt`` None: whatever attempt is queued).
    ``log_fields``: the job fields of the worker's log lines, updated in place as the
    attempt goes on (:func:`run_worker_process` passes the mapping its log handler reads).
    ``attempt_secret``: the secret the executor gave the attempt; default: the environment
    (``JOBLIFE_ATTEMPT_SECRET``, ``NOMAD_META_attempt_secret``), else derived when this
    process holds the services' key (one machine: the same user and data dir)."""
    settings = settings or get_settings()
    fields = log_fields if log_fields is not None else {"job_id": job_id, "attempt": attempt}
    # One short-lived connection at a time, shared by the steps and the heartbeat.
    engine = worker_engine(settings)
    try:
        secret = attempt_secret or secret_from_environment()
        if secret is None:
            secret = retry_on_outage(
                lambda: _derived_secret(engine, settings, job_id, attempt),
                settings.worker_database_retry_seconds,
            )
        present_secret(engine, secret, at_connection=False)  # proofs only: pooler-proof
        return _Attempt(engine, settings, job_id, attempt, fields).run()
    except DBAPIError as exc:
        if not (isinstance(exc, OperationalError) or is_connection_failure(exc)):
            raise
        # The database stayed unreachable past the retries: nothing can be recorded; the
        # monitor will see this exit code with the job still in flight and fail it as external.
        JobLogger(log, fields).error("job %s: database unavailable: %s", job_id, exc)
        return EXIT_RELAUNCH
    except _Refused as exc:
        JobLogger(log, fields).error("%s", exc)
        return EXIT_RELAUNCH
    finally:
        engine.dispose()


def _derived_secret(
    engine: Engine, settings: Settings, job_id: int, attempt: int | None
) -> str | None:
    """The attempt's secret derived from the services' key, if this process has it (never
    made here); None otherwise (the doors will refuse the worker)."""
    key = attempt_secret_key(settings, create=False)
    if key is None:
        return None
    try:
        with engine.connect() as conn:
            row = conn.execute(
                select(Job.attempt, Job.unique_id).where(Job.id == job_id)
            ).one_or_none()
    finally:
        engine.dispose()  # the connections from now on carry the secret
    if row is None:
        return None
    return attempt_secret(key, job_id, row.attempt if attempt is None else attempt, row.unique_id)


class _Attempt:
    """One attempt of one job; ``fields`` are its log fields, kept current (the status
    changes the attempt makes, the job type and attempt once claimed)."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        job_id: int,
        attempt: int | None,
        fields: LogFields,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.job_id = job_id
        self.attempt = attempt
        self.fields = fields
        self.log = JobLogger(log, fields)
        self.timings: dict[str, float] = {}
        self.job: JobTemplate | None = None
        self.context: WorkerContext | None = None

    def _write(
        self,
        session: Session,
        unit: Callable[[], T],
        applied: Callable[[], bool] | None = None,
    ) -> T | None:
        """``unit()`` (a whole transaction on ``session``), retried through a database outage
        (:func:`~joblife.db.worker_doors.retry_on_outage`), rolled back after each failure.
        A :class:`StatusConflict` after a failed try may be the unit's own commit whose
        answer the outage lost: if ``applied()`` says the job is where the unit took it,
        that is success (None); otherwise the conflict is raised as usual."""
        failed = False

        def once() -> T | None:
            nonlocal failed
            try:
                return unit()
            except StatusConflict:
                session.rollback()
                if failed and applied is not None and applied():
                    self.log.info("job %s: the write lost to the outage was done", self.job_id)
                    return None
                raise
            except Exception as exc:
                failed = failed or is_connection_failure(exc)
                with contextlib.suppress(DBAPIError):  # a connection gone: nothing to undo
                    session.rollback()
                raise

        def retrying(error: BaseException, wait: float) -> None:
            self.log.warning(
                "job %s: database unreachable (%s): trying again in %.1f s",
                self.job_id,
                getattr(error, "orig", None) or error,
                wait,
            )

        return retry_on_outage(once, self.settings.worker_database_retry_seconds, retrying)

    def _now_at(self, session: Session, statuses: set[JobStatus]) -> bool:
        """Whether the job is at this attempt in one of ``statuses`` (read, then the
        transaction ended)."""
        row = session.execute(
            select(Job.attempt, Job.status_id).where(Job.id == self.job_id)
        ).one_or_none()
        session.rollback()
        return row is not None and row.attempt == self.attempt and row.status_id in statuses

    def run(self) -> int:
        load_job_types(self.settings)
        # No autoflush: what a hook changes on the job is recorded through the outcome door
        # (_record_outcome), never flushed (the worker may write no table).
        with Session(self.engine, expire_on_commit=False, autoflush=False) as session:
            if not self._claim(session):
                return EXIT_DO_NOT_RELAUNCH
            assert self.attempt is not None
            heartbeat = Heartbeat(
                self.engine,
                self.job_id,
                self.attempt,
                self.settings.heartbeat_interval_seconds,
                log_fields=self.fields,
            ).start()
            try:
                return self._steps(session, heartbeat)
            finally:
                heartbeat.stop()

    def _claim(self, session: Session) -> bool:
        """queued → started for this attempt, or nothing at all. The door locks the row and
        decides between duplicates: one gets started, the others StatusConflict. The change
        carries a nonce: a claim whose commit an outage may have swallowed is this worker's
        only if the job's last ``started`` change carries it (never two executions)."""

        def read() -> Any:
            row = session.execute(
                select(Job.attempt, Job.status_id, Job.job_type).where(Job.id == self.job_id)
            ).one_or_none()
            session.rollback()  # no transaction stays open on a read
            return row

        row = self._write(session, read)
        if row is None:
            self.log.error("job %s does not exist: nothing to do", self.job_id)
            return False
        if self.attempt is None:
            self.attempt = row.attempt
        self.fields.update(
            job_type=row.job_type, attempt=self.attempt, status=JobStatus(row.status_id)
        )
        if row.attempt != self.attempt or row.status_id != S.QUEUED:
            self.log.warning(
                "job %s is %s at attempt %s, not queued for attempt %s: duplicate or "
                "outdated execution, nothing done",
                self.job_id,
                JobStatus(row.status_id),
                row.attempt,
                self.attempt,
            )
            return False
        nonce = uuid.uuid4().hex

        def claim() -> None:
            worker_set_job_status(
                session,
                self.job_id,
                self.attempt,  # type: ignore[arg-type]
                S.STARTED,
                expected=S.QUEUED,
                message=f"attempt {self.attempt} started",
                details={"host": socket.gethostname(), "pid": os.getpid(), "claim": nonce},
            )
            worker_heartbeat(session, self.job_id, self.attempt)  # type: ignore[arg-type]
            session.commit()

        def claimed() -> bool:
            details = session.execute(
                select(JobStatusChange.details)
                .where(JobStatusChange.job_id == self.job_id, JobStatusChange.status == S.STARTED)
                .order_by(JobStatusChange.id.desc())
                .limit(1)
            ).scalar_one_or_none()
            session.rollback()
            return bool(details) and details.get("claim") == nonce

        try:
            self._write(session, claim, claimed)
        except StatusConflict as exc:
            session.rollback()
            self.log.warning(
                "job %s changed before this worker started (%s): duplicate or outdated "
                "execution, nothing done",
                self.job_id,
                exc,
            )
            return False
        except DBAPIError as exc:
            if getattr(exc.orig, "pgcode", None) != INSUFFICIENT_PRIVILEGE:
                raise
            raise _Refused(
                f"job {self.job_id}: the database refused this worker ({exc.orig}): it "
                "needs the attempt's secret the executor gave it"
            ) from exc
        self.fields["status"] = S.STARTED
        self.log.info("job %s: attempt %s started", self.job_id, self.attempt)
        return True

    def _steps(self, session: Session, heartbeat: Heartbeat) -> int:
        job: JobTemplate | None = None
        try:
            job = self._write(session, lambda: self._load_job(session))  # type: ignore[assignment]
            if not isinstance(job, JobTemplate):
                raise RuntimeError(f"job {self.job_id} has no registered job type")
            self.job = job
            self.context = WorkerContext(
                job_id=self.job_id,
                attempt=self.attempt,  # type: ignore[arg-type]
                settings=self.settings,
                work_dir=work_root(self.settings) / str(job.unique_id),
                heartbeat=heartbeat,
                log=JobLogger(logging.getLogger("joblife.worker"), self.fields),
            )
            context = self.context
            self._step(session, S.PRE_PROCESSING, S.STARTED)
            self._timed("pre_processing", job.job_pre_processing, context)
            self._step(session, S.PROCESSING, S.PRE_PROCESSING)
            return_code = self._timed("processing", job.job_processing, context)
            job.exit_code = return_code
            self._step(session, S.POST_PROCESSING, S.PROCESSING, {"return_code": return_code})
            self._timed("post_processing", job.job_post_processing, context, return_code)
            heartbeat.stop()  # the final status is this worker's own: no beat may react
            self._close()
            self._finish(session, job, return_code)
            return EXIT_DO_NOT_RELAUNCH
        except StatusConflict as exc:
            session.rollback()
            self.fields["status"] = exc.actual
            self.log.warning("job %s changed under this worker (%s): stopping", self.job_id, exc)
            return EXIT_DO_NOT_RELAUNCH
        except ExternalJobError as exc:
            heartbeat.stop()
            self._close()
            self._fail(session, S.EXTERNAL_ERROR, exc)
            return EXIT_RELAUNCH
        except Exception as exc:
            if is_connection_failure(exc):
                raise  # the database stayed unreachable past the retries: exit 2 (relaunch)
            heartbeat.stop()
            self._close()
            self._fail(session, S.INTERNAL_ERROR, exc)
            return EXIT_DO_NOT_RELAUNCH
        finally:
            self._close()  # every path: no work dir is left behind

    def _close(self) -> None:
        """Upload the logs and remove the work dir (once; a no-op afterwards)."""
        if self.context is not None:
            self.context.close()

    def _figures(self) -> dict[str, Any]:
        return self.context.details() if self.context is not None else {}

    def _step(
        self,
        session: Session,
        status: JobStatus,
        expected: JobStatus,
        details: dict[str, Any] | None = None,
    ) -> None:
        outcome = self._outcome_changes()

        def change() -> None:
            self._record_outcome(session, outcome)
            worker_set_job_status(
                session,
                self.job_id,
                self.attempt,  # type: ignore[arg-type]
                status,
                expected=expected,
                details=details,
            )
            session.commit()

        self._write(session, change, lambda: self._now_at(session, {status}))
        self.fields["status"] = status
        self.log.debug("job %s: %s", self.job_id, status)
        # Load every column (the type's own included) and end the transaction: a hook
        # reading an attribute must not open a transaction that stays idle while it runs.
        self._write(session, lambda: self._load_job(session))

    def _load_job(self, session: Session) -> JobTemplate | None:
        """The job with every column loaded (refreshed once known), the transaction ended."""
        job = session.get(Job, self.job_id) if self.job is None else self.job
        if job is not None:
            session.refresh(job)
        session.commit()
        return job  # type: ignore[return-value]

    def _timed(self, name: str, function: Any, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args)
        finally:
            self.timings[name] = round(time.perf_counter() - start, 6)

    def _finish(self, session: Session, job: JobTemplate, return_code: int) -> None:
        produced = job.generated_a_product()
        details = {
            "return_code": return_code,
            "durations": self.timings,
            "attempt": self.attempt,
            "product": produced,
            **self._figures(),
        }
        # The messages first: what their hook changes on the job is recorded by the outcome
        # door, which takes it only while the job runs (before processed); a change made
        # after it would be flushed by the commit as a direct write (refused to a worker).
        messages = job.get_products_publication_jsons() if produced else []
        outcome = self._outcome_changes()
        rows = self._outbox_rows(job, messages)

        def finish() -> None:
            self._record_outcome(session, outcome)
            worker_set_job_status(
                session,
                self.job_id,
                self.attempt,  # type: ignore[arg-type]
                S.PROCESSED,
                expected=S.POST_PROCESSING,
                details=details,
            )
            if rows:  # the publication service takes over
                worker_write_publications(session, self.job_id, self.attempt, rows)  # type: ignore[arg-type]
            else:
                worker_set_job_status(
                    session,
                    self.job_id,
                    self.attempt,  # type: ignore[arg-type]
                    S.DONE,
                    expected=S.PROCESSED,
                    message="nothing to publish" if produced else "no product",
                )
            session.commit()

        # Lost to an outage, the commit may be found already taken further by the publisher.
        after = {S.PROCESSED, S.START_PUBLICATION, S.PUBLISHED, S.DONE} if rows else {S.DONE}
        self._write(session, finish, lambda: self._now_at(session, after))
        self.fields["status"] = S.PROCESSED if rows else S.DONE
        self.log.info(
            "job %s: attempt %s %s (return code %s)",
            self.job_id,
            self.attempt,
            self.fields["status"],
            return_code,
        )

    def _outbox_rows(
        self, job: JobTemplate, messages: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The outbox door's rows of the attempt's publication messages."""
        assert self.attempt is not None
        products = type(job).OUTPUT_PRODUCTS_LIST or []
        rows = []
        for index, body in enumerate(messages):
            product = str(body.get("product") or products[index])
            rows.append(
                {
                    "product": product,
                    "message_id": message_id(job.unique_id, product, self.attempt),
                    "body": body,
                }
            )
        return rows

    def _outcome_changes(self) -> dict[str, Any]:
        """What the hooks changed on the job (exit code, science image, output path, output
        publication date), taken off the ORM's pending writes (the values are read back from
        the database once recorded, and a retried write sends them again: a rollback would
        lose them). A hook that changed another column is an internal error: a worker may
        not write it."""
        job = self.job
        if job is None:
            return {}
        state = inspect(job)
        changed = {
            key
            for key in state.mapper.column_attrs.keys()  # noqa: SIM118 - not a dict
            if state.attrs[key].history.has_changes()
        }
        if not changed:
            return {}
        others = sorted(changed - set(OUTCOME_COLUMNS))
        if others:
            raise InternalJobError(
                f"job type {job.job_type} changed {', '.join(others)} of job {self.job_id} "
                f"in a worker step: a worker records only {', '.join(OUTCOME_COLUMNS)}"
            )
        values = {key: getattr(job, key) for key in changed}
        inspect(job).session.expire(job, list(changed))  # type: ignore[union-attr]
        return values

    def _record_outcome(self, session: Session, values: dict[str, Any]) -> None:
        """Send the hooks' changes through the outcome door (in the caller's transaction)."""
        if values:
            worker_record_outcome(session, self.job_id, self.attempt, **values)  # type: ignore[arg-type]

    def _fail(self, session: Session, status: JobStatus, error: BaseException) -> None:
        """Record ``error`` as this attempt's ``status`` (an error status), with its details:
        the attempt's figures, and the end of the traceback only for an unexpected exception
        (not a :class:`~joblife.errors.JobFailure`, whose message is the whole story).

        A failure to record the failure is itself recorded: if the first try raises
        anything but a :class:`StatusConflict` (the job is no longer this attempt's:
        nothing to record), it is rolled back and a second try records the same message
        with minimal details (the attempt, the error, and what went wrong recording it),
        so that the real reason is never lost to an unstorable detail."""
        session.rollback()
        kind = "external" if status is S.EXTERNAL_ERROR else "internal"
        message = f"{type(error).__name__}: {error}"
        previous = self.fields.get("status")
        self.fields["status"] = status  # the line reports the move to it
        unexpected = not isinstance(error, JobFailure)
        self.log.error(
            "job %s: %s error: %s",
            self.job_id,
            kind,
            message,
            exc_info=error if unexpected else None,
        )

        def record(details: dict[str, Any]) -> None:
            worker_set_job_status(
                session,
                self.job_id,
                self.attempt,
                status,
                expected=IN_FLIGHT_STATUSES - {S.QUEUED},
                message=message,
                details=details,
            )
            session.commit()

        try:  # gathering the details may fail too (a figure that cannot be read)
            details = {"attempt": self.attempt, "durations": self.timings, **self._figures()}
            if unexpected:
                details["traceback"] = traceback.format_exception(error)[-5:]
            self._write(session, lambda: record(details))
            return
        except StatusConflict as exc:
            session.rollback()
            self.fields["status"] = exc.actual
            self.log.warning("job %s changed under this worker (%s): stopping", self.job_id, exc)
            return
        except Exception as exc:  # the details, the door, the database: try once more
            session.rollback()
            if is_connection_failure(exc):  # unreachable past the retries: nothing recorded
                self.log.error("job %s: could not record the %s error: %s", self.job_id, kind, exc)
                return
            cause = getattr(exc, "orig", None) or exc  # a DBAPIError without its SQL
            problem = f"{type(exc).__name__}: {cause}"
        self.log.error(
            "job %s: could not record the %s error with its details (%s); recording it "
            "with minimal details",
            self.job_id,
            kind,
            problem,
        )
        minimal = {
            "attempt": self.attempt,
            "error": {"class": type(error).__name__, "message": message},
            "recording_error": problem,
        }
        try:
            record(minimal)
        except (StatusError, DBAPIError) as exc:  # minimal details: nothing else to expect
            session.rollback()
            self.fields["status"] = getattr(exc, "actual", previous)
            self.log.error("job %s: could not record the %s error: %s", self.job_id, kind, exc)
