"""The orchestrator: the life-cycle services in one process (``joblife run``).

Each cycle runs creation, configuration, dispatch and the monitor once, each in its own
error boundary: one service's failure (or one job's) never stops the others. Publication
(nothing without a broker URL or a spool) runs in :meth:`Orchestrator.run_forever` in a
thread of its own (:class:`~joblife.publication.relay.PublicationThread`, with its own
broker connection and sessions): a broker that hangs (TCP open, nothing answered) holds up
publication only, and the cycle reports the thread's last cycle. :meth:`Orchestrator.run_once`
(``--once``, the demo) publishes one batch inline instead. A cycle that
found work is followed at once by the next; an idle one waits ``loop_interval`` seconds,
or, when only the in-flight caps held dispatch back, until the executor reports that an
execution ended: that wake-up runs dispatch alone (to fill the freed slot), and the other
services keep their pace of one cycle per ``loop_interval``.
A database outage makes the loop back off (1 s doubling, up to
``outage_backoff_max_seconds``), reconnect and resume. SIGTERM or SIGINT stops it after
the current service, and the publication thread after its batches in flight (a broker that
does not answer is given up after a grace: the unconfirmed messages stay in the outbox).
The end of the first cycle is logged once ("first cycle done"): the
services are up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError

from joblife.executors.base import Executor
from joblife.lifecycle.common import ServiceContext, job_logger
from joblife.lifecycle.configuration import configure_jobs
from joblife.lifecycle.creation import create_jobs
from joblife.lifecycle.dispatch import dispatch_jobs
from joblife.lifecycle.monitor import Monitor
from joblife.ops.metrics import record_cycle
from joblife.publication.relay import PublicationService, PublicationThread

log = job_logger("orchestrator")

SERVICES = ("create", "configure", "dispatch", "monitor", "publish")
#: The first wait after a database outage is noticed (doubled per failed cycle, capped).
FIRST_BACKOFF_SECONDS = 1.0
#: What a cycle woken by a freed slot runs (the others wait for their interval).
SLOT_SERVICES = ("dispatch",)


@dataclass
class CycleReport:
    """What one cycle of the orchestrator did, per service."""

    results: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    busy: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"results": self.results, "errors": self.errors, "busy": self.busy}


class Orchestrator:
    """Runs the life-cycle services; see the module docstring."""

    def __init__(
        self,
        context: ServiceContext,
        executor: Executor,
        services: Sequence[str] = SERVICES,
        stop_event: threading.Event | None = None,
    ) -> None:
        unknown = set(services) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)} (known: {', '.join(SERVICES)})")
        self.context = context
        self.executor = executor
        self.services = [s for s in SERVICES if s in services]
        self.stop_event = stop_event or threading.Event()
        self.monitor = Monitor(context, executor)
        self.publication = PublicationService(context, stop_event=self.stop_event)
        #: Publication in its own thread, while run_forever runs (None: inline, in run_once).
        self.publication_thread: PublicationThread | None = None
        self._steps: dict[str, Callable[[], Any]] = {
            "create": lambda: [r.as_dict() for r in create_jobs(context)],
            "configure": lambda: [r.as_dict() for r in configure_jobs(context)],
            "dispatch": lambda: dispatch_jobs(context, executor).as_dict(),
            "monitor": lambda: self.monitor.run_cycle().as_dict(),
            "publish": lambda: self.publication.run_cycle().as_dict(),
        }

    def run_once(self, only: Sequence[str] | None = None) -> CycleReport:
        """One cycle of every service (of those in ``only`` if given). A database outage
        is re-raised (the loop backs off); any other error is recorded and the next
        service runs."""
        report = CycleReport()
        for name in self.services:
            if self.stop_event.is_set():
                break
            if only is not None and name not in only:
                continue
            if name == "publish" and self.publication_thread is not None:
                # The thread counts its own cycles; its work never makes this loop busy.
                report.results[name] = self._publication_status(self.publication_thread)
                continue
            try:
                result = self._steps[name]()
            except OperationalError:
                record_cycle(name, failed=True)
                raise
            except Exception as exc:
                record_cycle(name, failed=True)
                log.exception("%s cycle failed", name)
                report.errors[name] = f"{type(exc).__name__}: {exc}"
                continue
            record_cycle(name, failed=_reported_failure(result))
            report.results[name] = result
            report.busy = report.busy or _did_work(name, result, self.context.settings.batch_size)
        return report

    def run_forever(self, interval: float | None = None) -> None:
        """Cycle until the stop event is set (the publication thread is stopped and the
        broker connection closed then)."""
        try:
            if "publish" in self.services and self.publication.enabled:
                self.publication_thread = PublicationThread(self.publication, interval)
                self.publication_thread.start()
            self._cycle_forever(interval)
        finally:
            self.close()

    def _publication_status(self, thread: PublicationThread) -> dict[str, Any]:
        """The publication thread's last report; a thread that ended (it survives every
        error of a cycle, so only something like a MemoryError ends it) is started anew."""
        if not thread.alive and not self.stop_event.is_set():
            log.error("the publication thread ended: starting it again")
            self.publication_thread = PublicationThread(self.publication, thread.interval)
            self.publication_thread.start()
        return thread.status()

    def close(self) -> None:
        """Release what the services hold open (the publication thread and its broker
        connection, the executor's helper processes)."""
        thread, self.publication_thread = self.publication_thread, None
        if thread is not None:
            thread.stop()  # bounded; the thread closes its connection itself
        else:
            self.publication.close()
        close_executor = getattr(self.executor, "close", None)
        if close_executor is not None:
            close_executor()

    def _cycle_forever(self, interval: float | None) -> None:
        settings = self.context.settings
        interval = interval if interval is not None else settings.loop_interval
        # Capped low: the loop notices a database that is back within one wait, not after
        # the long waits of an uncapped doubling.
        max_backoff = settings.outage_backoff_max_seconds
        backoff = min(FIRST_BACKOFF_SECONDS, max_backoff)
        first_cycle = True
        began = time.monotonic()
        slot_freed = False
        next_full_cycle = 0.0
        while not self.stop_event.is_set():
            # A wake-up because an execution ended only needs dispatch to fill the slot;
            # the other services keep their own pace (a full cycle every interval).
            full = not slot_freed or time.monotonic() >= next_full_cycle
            # Taken before dispatch counts what runs: an execution that ends after that
            # wakes the wait below at once.
            marker = self._change_marker()
            try:
                report = self.run_once(None if full else SLOT_SERVICES)
            except (OperationalError, DBAPIError) as exc:
                if not _is_connection_problem(exc):
                    raise
                log.warning(
                    "database unavailable (%s): retrying in %.0f s", _first_line(exc), backoff
                )
                self.context.engine.dispose()
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, max_backoff)
                continue
            backoff = min(FIRST_BACKOFF_SECONDS, max_backoff)
            if first_cycle and not self.stop_event.is_set():
                first_cycle = False
                log.info("first cycle done in %.1f s%s", time.monotonic() - began, _summary(report))
            else:
                work = cycle_work(report)
                if work:
                    log.info("cycle: %s", work)
            if full:
                next_full_cycle = time.monotonic() + interval
            slot_freed = False
            if not report.busy:
                slot_freed = self._idle(report, interval, marker)

    def _change_marker(self) -> Any:
        marker = getattr(self.executor, "change_marker", None)
        return marker() if marker is not None else None

    def _idle(self, report: CycleReport, interval: float, marker: Any = None) -> bool:
        """Wait for the next cycle. When dispatch is held back only by the caps, a slot
        may free up any moment: wake as soon as the executor reports a change (an
        execution ended), if it can tell; True then. (The broker connection is served by
        the publication thread.)"""
        wait_for_change = getattr(self.executor, "wait_for_change", None)
        dispatch = report.results.get("dispatch") or {}
        if dispatch.get("capped") and wait_for_change is not None:
            return bool(wait_for_change(interval, self.stop_event, marker))
        self.stop_event.wait(interval)
        return False


def _summary(report: CycleReport) -> str:
    """What the log line of the first cycle says besides its time: the failed services,
    and how many in-flight jobs the monitor checked (a restarted orchestrator reconciles
    the executions it finds)."""
    parts = [f"{name} failed" for name in report.errors]
    monitor = report.results.get("monitor")
    if monitor is not None:
        parts.append(f"monitor checked {monitor['checked']} in-flight jobs")
    return ": " + ", ".join(parts) if parts else ""


def cycle_work(report: CycleReport) -> str:
    """One line of what a cycle changed (``created 12, dispatched 4, ended 3``); empty for
    a cycle that changed nothing, which is not logged. (Publication runs in its own
    thread, which logs its own work.)"""
    results = report.results
    counts = {
        "created": sum(r["inserted"] for r in results.get("create") or []),
        "cancelled at creation": sum(r["cancelled"] for r in results.get("create") or []),
        "rejected": sum(r.get("rejected", 0) for r in results.get("create") or []),
        "configured": sum(r["examined"] for r in results.get("configure") or []),
    }
    dispatch = results.get("dispatch") or {}
    counts["dispatched"] = dispatch.get("dispatched", 0)
    counts["dispatch failed"] = dispatch.get("failed", 0)
    monitor = results.get("monitor") or {}
    for key in ("ended", "stale", "never_started", "redispatched", "retried", "exhausted"):
        name = {"exhausted": "out of attempts", "never_started": "never started"}.get(key, key)
        counts[name] = monitor.get(key, 0)
    parts = [f"{name} {count}" for name, count in counts.items() if count]
    parts += [f"{name} failed" for name in report.errors]
    return ", ".join(parts)


def _did_work(name: str, result: Any, batch_size: int) -> bool:
    if name == "create":
        return any(r["inserted"] or r["cancelled"] for r in result)
    if name == "configure":
        return any(r["examined"] for r in result)
    if name == "dispatch":
        # A dispatch held back by the caps with room for less than a batch has nothing
        # more to start until an execution ends; a full batch may have more behind it.
        started = result["dispatched"] + result["failed"]
        return started > 0 and (started >= batch_size or not result["capped"])
    if name == "publish":
        return bool(result["jobs"] or result["feedback"])
    return bool(result["ended"] or result["stale"] or result["redispatched"] or result["retried"])


def _reported_failure(result: Any) -> bool:
    """Whether a service reported an error in its result instead of raising it (a job
    type whose cycle failed, a broker it could not reach)."""
    reports = result if isinstance(result, list) else [result]
    return any(isinstance(r, dict) and r.get("error") for r in reports)


def _is_connection_problem(exc: DBAPIError) -> bool:
    return isinstance(exc, OperationalError) or exc.connection_invalidated


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
