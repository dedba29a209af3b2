"""The worker's heartbeat: proof of life for the monitor, and the way a worker learns that
its job was cancelled (or taken over) while it runs."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine

from joblife.db.worker_doors import worker_heartbeat
from joblife.logs import JobLogger
from joblife.model.status import IN_FLIGHT_STATUSES, JobStatus

log = logging.getLogger(__name__)


class Heartbeat:
    """Stamps ``jobs.heartbeat_at`` every ``interval`` seconds from a daemon thread, through
    the door ``worker_heartbeat`` (the server's clock; ``engine``'s transactions prove the
    attempt's secret, see :func:`joblife.db.worker_doors.present_secret`). A beat is one
    door call in a transaction of its own, committed at once: it holds no lock and no
    connection between beats. If the
    job is no longer this attempt's (cancelled, failed by the monitor, another attempt), the
    worker process is terminated: nothing it would still do could be recorded. ``log_fields``:
    the job fields of its log lines (the worker's, kept current by the worker)."""

    def __init__(
        self,
        engine: Engine,
        job_id: int,
        attempt: int,
        interval: float,
        log_fields: Mapping[str, Any] | None = None,
    ) -> None:
        self.engine = engine
        self.job_id = job_id
        self.attempt = attempt
        self.interval = interval
        self.log = JobLogger(log, log_fields or {"job_id": job_id, "attempt": attempt})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating (the monitor then sees the worker as stale after its timeout). Waits
        for a beat under way, so that none reacts to a status the worker itself just set."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    def beat(self) -> JobStatus | None:
        """One heartbeat, one door call in its own short transaction; returns the job's
        status, None if it is no longer this attempt's."""
        with self.engine.begin() as conn:
            return worker_heartbeat(conn, self.job_id, self.attempt)

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.interval):
            try:
                status = self.beat()
            except Exception as exc:
                # A database outage (or any hiccup) never ends the worker: the beat is tried
                # again at the next interval, on a new connection (the worker's engine opens
                # one per transaction), until the database answers or the monitor's timeout decides.
                if not failing:
                    self.log.warning("job %s: heartbeat failed: %s", self.job_id, exc)
                else:
                    self.log.debug("job %s: heartbeat failed again: %s", self.job_id, exc)
                failing = True
                continue
            if failing:
                self.log.info("job %s: heartbeat recorded again", self.job_id)
                failing = False
            if status not in IN_FLIGHT_STATUSES and not self._stop.is_set():
                self.log.warning(
                    "job %s attempt %s is now %s: stopping this execution",
                    self.job_id,
                    self.attempt,
                    status or "another attempt's",
                    extra={"status": status} if status is not None else None,
                )
                os.kill(os.getpid(), signal.SIGTERM)
                return
