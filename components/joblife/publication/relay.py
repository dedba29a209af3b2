"""The publication service (``joblife publish``, and the ``publish`` service of
``joblife run``): relays the outbox to RabbitMQ with publisher confirms.

Each batch is one database transaction: claim jobs and their unpublished rows
(:func:`~joblife.publication.outbox.claim`, ``SKIP LOCKED``), processed →
start_publication, publish them as one confirm window, record the answers and move the
jobs (:func:`~joblife.publication.outbox.record`), commit. Batches are pipelined (see
:meth:`PublicationService._publish`). Any number of services can run at once: a job is
published by the one that holds it. A message over ``product_message_max_bytes`` is never
sent (RabbitMQ closes the channel on a message over its ``max_message_size``, losing the
messages sent with it, and the relay would send it again at every reconnection, holding up
the outbox): its job goes to internal_error alone, the other messages are published.

Without a broker URL, :class:`~joblife.publication.spool.SpoolPublisher` appends the
messages to a local JSON-lines file (fsync = confirmation; ``publication_spool``, by default
``<data_dir>/publication-spool``) and the jobs go on to ``done`` as with a broker; with
``publication_spool = none`` the service does nothing and the messages wait in the outbox
(``joblife publications list`` shows them). See
:func:`~joblife.publication.spool.effective_spool`. When the broker is
down the rows stay unpublished and the jobs wait; the connection is retried with an
exponential backoff (up to ``amqp_reconnect_max_seconds``) and everything resumes when it is
back. A database outage is raised to the loop, which backs off (up to
``outage_backoff_max_seconds``).

In ``joblife run`` the service runs in a thread of its own (:class:`PublicationThread`), with
its own broker connection and its own sessions: a broker that does not answer (connection,
confirmations) holds up publication only, never the other services of the process.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from joblife.lifecycle.common import ServiceContext, job_logger, utc_now
from joblife.logs import describe_jobs
from joblife.ops.metrics import record_cycle
from joblife.publication import outbox
from joblife.publication.broker import (
    ConfirmingPublisher,
    Delivery,
    Outcome,
    OutgoingMessage,
    SentBatch,
    Settlement,
)
from joblife.publication.errors import BrokerUnavailable
from joblife.publication.feedback import MalformedFeedback, apply_feedback, parse_feedback
from joblife.publication.publisher import Publisher
from joblife.publication.spool import SpoolPublisher, effective_spool
from joblife.publication.topology import Topology

log = job_logger("publication")
FIRST_BACKOFF_SECONDS = 0.5
#: Batches in flight at once (one being confirmed while the next is claimed and sent).
PIPELINE_DEPTH = 2
#: Confirmed messages whose recording failed, remembered at most (not to resend them).
MAX_REMEMBERED = 100_000
#: After a stop, how long the thread may finish the batches in flight before its waits for
#: the broker are interrupted (their unconfirmed messages stay in the outbox).
STOP_GRACE_SECONDS = 2.0
#: How long a stop then waits for the thread to record what it has and end.
STOP_TIMEOUT_SECONDS = 10.0


@dataclass
class _Batch:
    """A batch sent and not recorded yet: its open transaction, its jobs, what was sent,
    and the answers already known for the messages that were not sent again (confirmed
    by the broker before, their recording lost: row index → answer)."""

    session: Session
    jobs: list[outbox.ClaimedJob]
    sent: SentBatch
    known: dict[int, Delivery] = field(default_factory=dict)

    def answers(self, deliveries: list[Delivery]) -> list[Delivery]:
        """The answers for every row of the batch, in row order: the known ones, and
        ``deliveries`` (the broker's, for what was sent) for the others."""
        if not self.known:
            return deliveries
        sent = iter(deliveries)
        total = len(self.known) + len(deliveries)
        return [self.known[i] if i in self.known else next(sent) for i in range(total)]


@dataclass
class PublicationReport:
    """What one cycle of the publication service did."""

    enabled: bool = True
    connected: bool = False
    batches: int = 0
    result: outbox.BatchResult = field(default_factory=outbox.BatchResult)
    feedback: int = 0
    error: str | None = None

    @property
    def busy(self) -> bool:
        """Whether the cycle found work (the next one should follow at once)."""
        return bool(self.result.jobs or self.feedback)

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "result"}
        return {**data, **asdict(self.result)}


class PublicationService:
    """Relays the outbox; see the module docstring. ``publisher`` (the broker's
    :class:`ConfirmingPublisher` or a :class:`SpoolPublisher`) is made from the settings
    unless given; the service owns it and closes it in :meth:`close`."""

    def __init__(
        self,
        context: ServiceContext,
        publisher: Publisher | None = None,
        stop_event: threading.Event | None = None,
    ) -> None:
        settings = context.settings
        self.context = context
        self.topology = Topology.from_settings(settings)
        self.stop_event = stop_event or threading.Event()
        url = settings.amqp_url.get_secret_value() if settings.amqp_url else None
        if publisher is None and url:
            publisher = ConfirmingPublisher(
                url,
                self.topology,
                heartbeat=settings.amqp_heartbeat_seconds,
                connect_timeout=settings.amqp_connect_timeout_seconds,
                feedback_queue=settings.amqp_feedback_queue,
            )
        elif publisher is None and (spool := effective_spool(settings)) is not None:
            # No broker: the local spool, the embedded default (unless publication_spool
            # is "none": the messages then stay in the outbox).
            publisher = SpoolPublisher(spool, self.topology.exchange, self.stop_event)
        self.publisher: Publisher | None = publisher
        #: What confirms this relay's messages, for the ``published`` status message.
        self.confirmed_by = (
            outbox.by_the_spool(publisher.path)
            if isinstance(publisher, SpoolPublisher)
            else outbox.BY_THE_BROKER
        )
        self._backoff = 0.0
        self._next_connect = 0.0  # time.monotonic() before which no connection is tried
        self._messages_per_job = 1.0  # seen in the last claim
        #: Messages the broker confirmed whose recording failed (the commit): message_id →
        #: confirmation time. They are not sent again; their next claim records them.
        self._confirmed_unrecorded: dict[str, Any] = {}
        self._memo_lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether a broker (or a spool) is configured (else the messages stay in the
        outbox)."""
        return self.publisher is not None

    def close(self) -> None:
        """Close the broker connection."""
        if self.publisher is not None:
            self.publisher.close()

    # -- one cycle -------------------------------------------------------------------------
    def run_cycle(self, max_batches: int = 1) -> PublicationReport:
        """Handle the feedback received, then publish up to ``max_batches`` batches (0:
        until the outbox has nothing left to claim)."""
        report = PublicationReport(enabled=self.enabled)
        if self.publisher is None or not self._ensure_connected(report):
            return report
        self._handle_feedback(report)
        self._publish(report, max_batches)
        report.connected = self.publisher.connected
        if report.connected:
            self._handle_feedback(report)
        return report

    def _ensure_connected(self, report: PublicationReport) -> bool:
        assert self.publisher is not None
        if self.publisher.connected:
            report.connected = True
            return True
        wait = self._next_connect - time.monotonic()
        if wait > 0:
            report.error = (
                f"broker unavailable ({self.publisher.last_error}); next try in {wait:.1f} s"
            )
            return False
        try:
            self.publisher.connect()
        except BrokerUnavailable as exc:
            max_backoff = self.context.settings.amqp_reconnect_max_seconds
            self._backoff = min(max(self._backoff * 2, FIRST_BACKOFF_SECONDS), max_backoff)
            self._next_connect = time.monotonic() + self._backoff
            report.error = f"{exc}; next try in {self._backoff:.1f} s"
            log.warning("%s", report.error)
            return False
        self._backoff, self._next_connect = 0.0, 0.0
        report.connected = True
        return True

    def _publish(self, report: PublicationReport, max_batches: int) -> None:
        """Publish batches as a pipeline: while the broker confirms one batch, the next is
        claimed and sent (another transaction; SKIP LOCKED keeps them apart), and the
        batch confirmed before is recorded and committed by a second thread. The broker,
        the database and this thread work at the same time; pika is used by this thread
        only."""
        assert self.publisher is not None
        in_flight: deque[_Batch] = deque()
        recording: deque[Future[outbox.BatchResult]] = deque()
        more = True
        with ThreadPoolExecutor(1, thread_name_prefix="joblife-publication") as recorder:
            try:
                while in_flight or more:
                    can_start = (
                        more
                        and len(in_flight) < PIPELINE_DEPTH
                        and self.publisher.connected
                        and not self.stop_event.is_set()
                        and (not max_batches or report.batches + len(in_flight) < max_batches)
                    )
                    if can_start:
                        batch = self._start_batch()
                        if batch is None:
                            more = False
                        else:
                            in_flight.append(batch)
                            if len(in_flight) < PIPELINE_DEPTH:
                                continue
                    elif more:
                        more = False  # the limit, a lost connection or a stop: finish
                    if in_flight:
                        batch = in_flight.popleft()
                        deliveries = self.publisher.wait_confirmed(
                            batch.sent, self.context.settings.amqp_confirm_timeout_seconds
                        )
                        recording.append(recorder.submit(self._record, batch, deliveries))
                        report.batches += 1
                    while recording and (len(recording) > 1 or recording[0].done()):
                        result = recording.popleft().result()
                        report.result.add(result)
                        if result.nacked:
                            more = False  # the broker refuses messages: not again this cycle
                while recording:
                    report.result.add(recording.popleft().result())
            finally:
                for batch in in_flight:  # only after an error: nothing of theirs is recorded
                    batch.session.close()
        if not self.publisher.connected:
            report.error = f"broker connection lost: {self.publisher.last_error}"

    def _start_batch(self) -> _Batch | None:
        """Claim jobs, processed → start_publication, send their messages; the transaction
        stays open (holding the jobs) until :meth:`_record` commits it."""
        assert self.publisher is not None
        session = self.context.session()
        try:
            limit = self.context.settings.publication_batch_size
            jobs = outbox.claim(
                session,
                limit,
                self.topology,
                self.context.job_types,
                jobs_limit=int(limit / self._messages_per_job),
            )
            if not jobs:
                session.close()
                return None
            messages_found = sum(len(job.rows) for job in jobs)
            if messages_found:  # how many jobs to lock next time for about `limit` messages
                self._messages_per_job = messages_found / len(jobs)
            outbox.start_publication(session, jobs)
            session.flush()
            messages = [row.message for row in _sent_rows(jobs)]
            with self._memo_lock:
                known = {
                    index: Delivery(Outcome.CONFIRMED, self._confirmed_unrecorded[m.message_id])
                    for index, m in enumerate(messages)
                    if m.message_id in self._confirmed_unrecorded
                }
            known = {**self._too_large(messages), **known}
            sent = self.publisher.send([m for i, m in enumerate(messages) if i not in known])
        except BaseException:
            session.close()
            raise
        return _Batch(session, jobs, sent, known)

    def _too_large(self, messages: list[OutgoingMessage]) -> dict[int, Delivery]:
        """The answers for the messages over ``product_message_max_bytes`` (by index),
        which are never sent: the broker would close the channel on such a message
        (RabbitMQ's ``max_message_size``), losing the batch's other messages with it,
        batch after batch. Recorded, they fail their job alone."""
        limit = self.context.settings.product_message_max_bytes
        return {
            index: Delivery(
                Outcome.TOO_LARGE,
                utc_now(),
                f"not sent: {len(message.body)} bytes, over product_message_max_bytes ({limit})",
            )
            for index, message in enumerate(messages)
            if len(message.body) > limit
        }

    def _record(self, batch: _Batch, deliveries: list[Delivery]) -> outbox.BatchResult:
        """Record the broker's answers for the batch, move its jobs, commit (runs in the
        recording thread; touches the database only)."""
        answers = batch.answers(deliveries)
        rows = _sent_rows(batch.jobs)
        with batch.session as session:
            try:
                result = outbox.record(
                    session, batch.jobs, answers, self.context.job_types, self.confirmed_by
                )
                session.commit()
            except BaseException:
                # The broker has these messages: never send them again (at most a crash
                # of this process between the confirmation and the commit resends them).
                # Remembered before the session lets go of the jobs' locks.
                self._remember_confirmed(
                    {
                        row.message.message_id: answer.at
                        for row, answer in zip(rows, answers, strict=True)
                        if answer.outcome is Outcome.CONFIRMED
                    }
                )
                raise
        if batch.known:  # recorded now: forget what an earlier failed commit remembered
            with self._memo_lock:
                for index in batch.known:
                    self._confirmed_unrecorded.pop(rows[index].message.message_id, None)
        if result.unconfirmed or result.returned or result.nacked or result.too_large:
            ids = [job.id for job in batch.jobs]
            log.jobs(ids).warning("publication batch of %s: %s", describe_jobs(ids), asdict(result))
        return result

    def _remember_confirmed(self, confirmed: dict[str, Any]) -> None:
        """Remember confirmed messages whose recording failed; the oldest are forgotten
        past :data:`MAX_REMEMBERED` (a commit that failed on the client but went through
        leaves entries no claim returns again)."""
        with self._memo_lock:
            self._confirmed_unrecorded.update(confirmed)
            excess = len(self._confirmed_unrecorded) - MAX_REMEMBERED
            for message_id in list(self._confirmed_unrecorded)[: max(0, excess)]:
                del self._confirmed_unrecorded[message_id]

    def _handle_feedback(self, report: PublicationReport) -> None:
        assert self.publisher is not None
        for message in self.publisher.take_feedback():
            try:
                message_id, error = parse_feedback(message.properties.correlation_id, message.body)
            except MalformedFeedback as exc:
                log.error("feedback message rejected: %s", exc)
                self.publisher.settle(message, Settlement.REJECT)
                continue
            try:
                with self.context.session() as session:
                    settlement = apply_feedback(session, message_id, error)
                    session.commit()
            except (OperationalError, DBAPIError):
                self.publisher.settle(message, Settlement.REQUEUE)
                raise
            self.publisher.settle(message, settlement)
            report.feedback += 1

    # -- the loop --------------------------------------------------------------------------
    def run_forever(
        self,
        interval: float | None = None,
        on_cycle: Callable[[PublicationReport | None, BaseException | None], None] | None = None,
    ) -> None:
        """Cycle until the stop event is set; an idle cycle waits ``interval`` seconds
        (default ``loop_interval``) while serving the broker connection. With ``on_cycle``
        (``joblife run``), it is called after every cycle with the report or the error,
        and an unexpected error is logged and the loop goes on after an idle wait; without
        it (``joblife publish``) the error ends the loop."""
        settings = self.context.settings
        interval = interval if interval is not None else settings.loop_interval
        max_backoff = settings.outage_backoff_max_seconds
        db_backoff = min(1.0, max_backoff)
        try:
            while not self.stop_event.is_set():
                try:
                    report = self.run_cycle()
                except (OperationalError, DBAPIError) as exc:
                    if not isinstance(exc, OperationalError) and not exc.connection_invalidated:
                        if on_cycle is None:
                            raise
                        self._survive(exc, on_cycle, interval)
                        continue
                    if on_cycle is not None:
                        on_cycle(None, exc)
                    log.warning("database unavailable (%s): retrying in %.0f s", exc, db_backoff)
                    self.context.engine.dispose()
                    self.stop_event.wait(db_backoff)
                    db_backoff = min(db_backoff * 2, max_backoff)
                    continue
                except Exception as exc:
                    if on_cycle is None:
                        raise
                    self._survive(exc, on_cycle, interval)
                    continue
                db_backoff = min(1.0, max_backoff)
                if on_cycle is not None:
                    on_cycle(report, None)
                if not report.busy:
                    self.idle(interval)
        finally:
            self.close()

    def _survive(
        self,
        exc: BaseException,
        on_cycle: Callable[[PublicationReport | None, BaseException | None], None],
        interval: float,
    ) -> None:
        """An unexpected error of a cycle in ``joblife run``: logged and reported; the
        next cycle follows an idle wait (as the other services' next cycle would)."""
        log.error("publish cycle failed", exc_info=exc)
        on_cycle(None, exc)
        self.stop_event.wait(interval)

    def idle(self, seconds: float) -> None:
        """Wait up to ``seconds`` (less if a reconnection is due), serving the connection."""
        if self.publisher is not None and self.publisher.connected:
            self.publisher.wait(seconds)
        else:
            due = self._next_connect - time.monotonic()
            self.stop_event.wait(max(0.0, min(seconds, due)) if self.enabled else seconds)


def _sent_rows(jobs: list[outbox.ClaimedJob]) -> list[outbox.OutboxRow]:
    """The rows of a batch whose messages it publishes, in the order they were sent."""
    return [row for job in jobs if job.status is outbox.S.START_PUBLICATION for row in job.rows]


class PublicationThread:
    """The ``publish`` service of ``joblife run``: :meth:`PublicationService.run_forever` in
    a thread of its own, so that a broker that does not answer (a connection that hangs,
    confirmations that do not come) holds up publication only. The service's publisher
    (its own connection) is used by that thread alone, and each batch has its own session
    (the engine is shared: it is thread-safe). The orchestrator reads :meth:`status`."""

    def __init__(self, service: PublicationService, interval: float | None = None) -> None:
        self.service = service
        self.interval = interval
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {"cycles": 0}
        self._thread = threading.Thread(target=self._run, name="joblife-publish", daemon=True)

    def start(self) -> None:
        """Start publishing (in the background)."""
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        """The last cycle's report (or error) and how many cycles the thread has run."""
        with self._lock:
            return dict(self._status)

    def stop(
        self, grace: float = STOP_GRACE_SECONDS, timeout: float = STOP_TIMEOUT_SECONDS
    ) -> bool:
        """Stop the thread: it finishes the batches in flight for up to ``grace`` seconds,
        then its waits for the broker are interrupted (their unconfirmed messages stay
        unpublished, to be sent again), and it records what it has, closes and ends
        within ``timeout`` more seconds. Each batch is one transaction: whatever is not
        committed is rolled back. True if the thread ended."""
        self.service.stop_event.set()
        self._thread.join(grace)
        if self._thread.is_alive():
            interrupt = getattr(self.service.publisher, "interrupt", None)
            if interrupt is not None:
                interrupt()
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the publication thread did not end within %.0f s", grace + timeout)
            return False
        return True

    def _run(self) -> None:
        try:
            self.service.run_forever(self.interval, self._on_cycle)
        except BaseException:  # a thread's end is logged here; the orchestrator restarts it
            log.exception("the publication thread ended")

    def _on_cycle(self, report: PublicationReport | None, error: BaseException | None) -> None:
        # Counted here, per cycle of this thread, not per cycle of the orchestrator.
        failed = error is not None or bool(report is not None and report.error)
        record_cycle("publish", failed=failed)
        with self._lock:
            cycles = self._status["cycles"] + 1
            if report is not None:
                self._status = {**report.as_dict(), "cycles": cycles}
            else:
                self._status = {
                    "enabled": True,
                    "connected": False,
                    "error": f"{type(error).__name__}: {error}",
                    "cycles": cycles,
                }
