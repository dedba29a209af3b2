"""The status history's monthly partitions (revision 0015): what they are, creating the
months ahead, and keeping them ahead from a long-running service.

``job_status_changes`` is partitioned by RANGE (time), one partition per UTC month
(``job_status_changes_YYYYMM``), plus ``job_status_changes_legacy`` (the rows from before
revision 0015, attached in place) and ``job_status_changes_default`` (rows of a month that
has no partition yet: an insert never fails). The SQL side is
database/sql/v0015_history_partitions.sql; ``joblife cleanup`` drops whole months
(:mod:`joblife.ops.cleanup`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

HISTORY_TABLE = "job_status_changes"
DEFAULT_PARTITION = "job_status_changes_default"
#: How long creating partitions may wait for a lock (it waits behind long readers of the
#: history, and new readers would queue behind it) before it gives up until next time.
LOCK_TIMEOUT_MS = 5000
#: A long-running service checks the partitions at most this often.
CHECK_INTERVAL_SECONDS = 3600.0

# Partitions, and the tables that exist only inside the transactions that make them.
_PARTITION_NAME = re.compile(r"^job_status_changes_(\d{6}|legacy|default)(_kept|_moving)?$")

_LIST = text(
    """
    SELECT p.partition::text AS name,
           CASE WHEN p.lower_bound > '-infinity' THEN p.lower_bound END AS lower,
           CASE WHEN p.upper_bound < 'infinity' THEN p.upper_bound END AS upper,
           p.is_default
      FROM joblife_history_partitions() p
    """
)
_ENSURE = text("SELECT name FROM joblife_ensure_history_partitions(:ahead) AS name")


@dataclass(frozen=True)
class HistoryPartition:
    """One partition of the history: [lower, upper) in time; ``lower`` None for the legacy
    partition (MINVALUE); both None for the DEFAULT partition."""

    name: str
    lower: datetime | None
    upper: datetime | None
    is_default: bool

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "from": self.lower, "to": self.upper}


def is_history_partition(name: str) -> bool:
    """Whether ``name`` is a partition of the history (by its name)."""
    return _PARTITION_NAME.match(name) is not None


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic's ``include_name`` hook: leave the history's partitions out of autogenerate
    comparisons (the models describe the partitioned table, not its months)."""
    return not (type_ == "table" and name is not None and is_history_partition(name))


def history_partitions(conn: Connection) -> list[HistoryPartition]:
    """The history's partitions, oldest first, the DEFAULT partition last."""
    return [
        HistoryPartition(row.name, row.lower, row.upper, row.is_default)
        for row in conn.execute(_LIST)
    ]


def ensure_history_partitions(conn: Connection, months_ahead: int) -> list[str]:
    """Create the partitions of this UTC month and of the ``months_ahead`` next ones that
    are missing (and the month of every row of the DEFAULT partition, moving the row into
    it), in the caller's transaction; return the names of those created. Waits at most
    :data:`LOCK_TIMEOUT_MS` for a lock (then raises)."""
    before = conn.execute(text("SHOW lock_timeout")).scalar_one()
    conn.execute(text(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}"))
    created = list(conn.execute(_ENSURE, {"ahead": months_ahead}).scalars())
    conn.execute(text("SELECT set_config('lock_timeout', :value, true)"), {"value": before})
    return created


class PartitionKeeper:
    """Keeps the history's partitions ahead from a service that runs for months: call
    :meth:`maybe_run` every cycle; it checks at most every ``interval`` seconds (the check
    is a catalog read when nothing is missing). A failure (a lock not granted in time, the
    database away) is logged and tried again at the next interval; it never raises."""

    def __init__(self, interval: float = CHECK_INTERVAL_SECONDS) -> None:
        self.interval = interval
        self._next = 0.0
        self._lock = threading.Lock()

    def maybe_run(self, engine: Engine, months_ahead: int) -> list[str] | None:
        """Check (if due) and return the partitions created, or None if not checked or
        the check failed."""
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                return None
            self._next = now + self.interval
        try:
            with engine.begin() as conn:
                created = ensure_history_partitions(conn, months_ahead)
        except DBAPIError as exc:
            log.warning(
                "could not check the history's partitions (next try in %.0f s): %s",
                self.interval,
                str(exc.orig or exc).strip().splitlines()[0],
            )
            return None
        if created:
            log.info("history partitions created: %s", ", ".join(created))
        return created


_KEEPERS: dict[str, PartitionKeeper] = {}
_KEEPERS_LOCK = threading.Lock()


def keep_history_partitions(engine: Engine, months_ahead: int) -> list[str] | None:
    """:meth:`PartitionKeeper.maybe_run` with one keeper per database (for the services'
    cycles: at most one check per :data:`CHECK_INTERVAL_SECONDS` and database)."""
    key = engine.url.render_as_string(hide_password=True)
    with _KEEPERS_LOCK:
        keeper = _KEEPERS.setdefault(key, PartitionKeeper())
    return keeper.maybe_run(engine, months_ahead)
