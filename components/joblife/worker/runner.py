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

Failures: :class:`~joblife.errors.ExternalJobError` → ``external_error`` and exit 2 (relaunch);
anything else → ``internal_error`` and exit 0 (do not relaunch). If the job stopped being
this attempt's (cancelled, failed by the monitor), the worker stops and exits 0.

Every line the worker process logs, from any thread or library, carries the job's
``job_id``, ``job_type``, ``attempt`` and current ``status`` (updated at each change; see
:mod:`joblife.logs`).

Whatever the outcome, the work dir is removed and the science logs uploaded
(:meth:`WorkerContext.close`); the figures of the download, processing and upload steps
(files, bytes, seconds) go into the status details. SIGTERM (a cancel, Nomad stopping the
allocation) unwinds the steps first, so that a running container or process is killed and
removed, then ends the process by that signal.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
import traceback
import uuid
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from joblife.config import Settings, get_settings
from joblife.db.engine import create_joblife_engine
from joblife.db.status import worker_set_job_status
from joblife.errors import ExternalJobError, StatusConflict, StatusError
from joblife.logs import JobLogger, setup_logging
from joblife.model import Job, JobStatus, JobTemplate, Publication, load_job_types
from joblife.model.status import IN_FLIGHT_STATUSES
from joblife.worker.context import WorkerContext, work_root
from joblife.worker.heartbeat import Heartbeat

log = logging.getLogger(__name__)
#: A worker's log fields: job_id, job_type, attempt, status (updated in place).
LogFields = dict[str, Any]

EXIT_DO_NOT_RELAUNCH = 0
EXIT_RELAUNCH = 2
#: Namespace of the deterministic publication message ids.
MESSAGE_NAMESPACE = uuid.UUID("6f1c3b9e-6a43-4d53-9c36-7f4a8d2b1e10")
S = JobStatus


def message_id(unique_id: uuid.UUID, product: str, attempt: int) -> str:
    """The deterministic id of a product's publication message for one attempt."""
    return str(uuid.uuid5(MESSAGE_NAMESPACE, f"{unique_id}/{product}/{attempt}"))


class WorkerTerminated(BaseException):
    """SIGTERM reached the worker: unwind (cleaning up as the stack unwinds), then die of
    it. A BaseException, so that no step's ``except Exception`` swallows it."""


def _terminate(signum: int, frame: Any) -> None:
    raise WorkerTerminated(f"signal {signum}")


def run_worker_process(job_id: int, attempt: int | None) -> int:
    """Entry point of a worker process: configure logging (every line of the process with
    the job's fields, kept current by the attempt), run, return the exit code."""
    settings = get_settings()
    fields: LogFields = {"job_id": job_id, "attempt": attempt}
    setup_logging(settings=settings, context=fields)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return run_worker(job_id, attempt, settings, log_fields=fields)
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
) -> int:
    """Run one attempt of ``job_id`` (``attempt`` None: whatever attempt is queued).
    ``log_fields``: the job fields of the worker's log lines, updated in place as the
    attempt goes on (:func:`run_worker_process` passes the mapping its log handler reads)."""
    settings = settings or get_settings()
    fields = log_fields if log_fields is not None else {"job_id": job_id, "attempt": attempt}
    engine = create_joblife_engine(settings=settings, pool_size=2, max_overflow=0)
    try:
        return _Attempt(engine, settings, job_id, attempt, fields).run()
    except OperationalError as exc:
        # The database is unreachable: nothing can be recorded; the monitor will see this
        # exit code with the job still in flight and fail it as external.
        JobLogger(log, fields).error("job %s: database unavailable: %s", job_id, exc)
        return EXIT_RELAUNCH
    finally:
        engine.dispose()


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

    def run(self) -> int:
        load_job_types(self.settings)
        with Session(self.engine, expire_on_commit=False) as session:
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
        """queued → started for this attempt, or nothing at all."""
        row = session.execute(
            select(Job.attempt, Job.status_id, Job.job_type)
            .where(Job.id == self.job_id)
            .with_for_update()
        ).one_or_none()
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
        worker_set_job_status(
            session,
            self.job_id,
            self.attempt,
            S.STARTED,
            expected=S.QUEUED,
            message=f"attempt {self.attempt} started",
            details={"host": socket.gethostname(), "pid": os.getpid()},
        )
        self.fields["status"] = S.STARTED
        session.execute(update(Job).where(Job.id == self.job_id).values(heartbeat_at=_now()))
        session.commit()
        self.log.info("job %s: attempt %s started", self.job_id, self.attempt)
        return True

    def _steps(self, session: Session, heartbeat: Heartbeat) -> int:
        job: JobTemplate | None = None
        try:
            job = session.get(Job, self.job_id)  # type: ignore[assignment]
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
        except OperationalError:
            raise
        except Exception as exc:
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
        worker_set_job_status(
            session, self.job_id, self.attempt, status, expected=expected, details=details
        )
        session.commit()
        self.fields["status"] = status
        self.log.debug("job %s: %s", self.job_id, status)
        # Load every column (the type's own included) and end the transaction: a hook
        # reading an attribute must not open a transaction that stays idle while it runs.
        session.refresh(self.job)
        session.commit()

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
        worker_set_job_status(
            session,
            self.job_id,
            self.attempt,
            S.PROCESSED,
            expected=S.POST_PROCESSING,
            details=details,
        )
        self.fields["status"] = S.PROCESSED
        messages = job.get_products_publication_jsons() if produced else []
        if messages:
            self._write_outbox(session, job, messages)  # the publication service takes over
        else:
            worker_set_job_status(
                session,
                self.job_id,
                self.attempt,
                S.DONE,
                expected=S.PROCESSED,
                message="nothing to publish" if produced else "no product",
            )
            self.fields["status"] = S.DONE
        session.commit()
        self.log.info(
            "job %s: attempt %s %s (return code %s)",
            self.job_id,
            self.attempt,
            self.fields["status"],
            return_code,
        )

    def _write_outbox(
        self, session: Session, job: JobTemplate, messages: list[dict[str, Any]]
    ) -> None:
        products = type(job).OUTPUT_PRODUCTS_LIST or []
        for index, body in enumerate(messages):
            product = str(body.get("product") or products[index])
            session.add(
                Publication(
                    job_id=self.job_id,
                    attempt=self.attempt,
                    product=product,
                    message_id=message_id(job.unique_id, product, self.attempt),  # type: ignore[arg-type]
                    body=body,
                )
            )

    def _fail(self, session: Session, status: JobStatus, error: BaseException) -> None:
        session.rollback()
        kind = "external" if status is S.EXTERNAL_ERROR else "internal"
        message = f"{type(error).__name__}: {error}"
        previous = self.fields.get("status")
        self.fields["status"] = status  # the line reports the move to it
        self.log.error("job %s: %s error: %s", self.job_id, kind, message)
        details = {
            "attempt": self.attempt,
            "durations": self.timings,
            **self._figures(),
            "traceback": traceback.format_exception(error)[-5:],
        }
        try:
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
        except (StatusError, DBAPIError) as exc:
            session.rollback()
            self.fields["status"] = getattr(exc, "actual", previous)
            self.log.error("job %s: could not record the %s error: %s", self.job_id, kind, exc)


def _now() -> Any:
    from sqlalchemy import func

    return func.now()
