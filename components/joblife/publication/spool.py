"""Publication without a broker: a local spool file, the embedded default.

When ``amqp_url`` is unset, the relay hands its batches to :class:`SpoolPublisher` instead
of RabbitMQ, so that jobs reach ``done`` with nothing configured. The spool is the
``publication_spool`` setting (a directory, a ``.jsonl`` file, or a ``file://`` URL of
either), by default ``<data_dir>/publication-spool/publications.jsonl``; ``none`` keeps the
messages in the outbox instead (and the jobs at ``processed``): see
:func:`effective_spool`, and :func:`publication_target` for where the messages go, in
words. Each message becomes one JSON line appended to the spool file (mode 0600, made so
if it existed with a looser one)::

    {"message_id": "...", "exchange": "joblife.products", "routing_key": "h5repack.repacked",
     "headers": {...}, "body": {...the product's publication JSON...},
     "written_at": "2026-11-22T10:00:00.123456+00:00"}

A batch is written with one ``write`` on a file opened ``O_APPEND`` (lines of concurrent
relays never interleave) and then ``fsync``-ed: the fsync is the confirmation, as the
broker's ``basic.ack`` is for :class:`~joblife.publication.broker.ConfirmingPublisher`.
After it the relay records the messages and moves the jobs exactly as with the broker.
Delivery is at least once, as with the broker: a relay that dies between the fsync and its
commit writes the batch again on the next cycle, with the same ``message_id`` (consumers
of the spool deduplicate on it). A write or fsync that fails leaves the batch
``UNCONFIRMED``: nothing is recorded, the relay backs off and tries again.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from joblife.errors import ConfigurationError
from joblife.lifecycle.common import utc_now
from joblife.publication.broker import (
    Delivery,
    FeedbackMessage,
    Outcome,
    OutgoingMessage,
    SentBatch,
    Settlement,
)
from joblife.publication.errors import BrokerUnavailable

if TYPE_CHECKING:
    from joblife.config import Settings

#: The spool file's name when ``publication_spool`` names a directory.
SPOOL_FILE_NAME = "publications.jsonl"
#: The spool's mode: it holds every product message, for its owner only.
SPOOL_MODE = 0o600
#: The spool directory under ``data_dir`` when ``publication_spool`` is unset.
DEFAULT_SPOOL_DIR = "publication-spool"
#: The ``publication_spool`` value that turns the spool off: without a broker, the
#: messages then stay in the outbox (``joblife publications list``), the jobs at processed.
NO_SPOOL = "none"


def _make_private(fd: int) -> None:
    """Give the open spool file :data:`SPOOL_MODE` if it was readable by others (a spool
    created before, or by a process with a looser umask). One owned by another user keeps
    its mode: that user chose it."""
    info = os.fstat(fd)
    if stat.S_IMODE(info.st_mode) & ~SPOOL_MODE and info.st_uid == os.geteuid():
        os.fchmod(fd, SPOOL_MODE)


def spool_path(location: str) -> Path:
    """The spool file of the ``publication_spool`` setting: a ``.jsonl`` file as given, or
    ``publications.jsonl`` in a directory; a ``file://`` URL of either."""
    if "://" in location:
        parts = urlsplit(location)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise ConfigurationError(
                f"publication_spool {location!r}: only a path or a file:// URL can be a spool"
            )
        location = unquote(parts.path)
    path = Path(location).expanduser()
    return path if path.suffix == ".jsonl" else path / SPOOL_FILE_NAME


def spool_disabled(settings: Settings) -> bool:
    """Whether ``publication_spool`` turns the spool off (:data:`NO_SPOOL`)."""
    value = settings.publication_spool
    return value is not None and value.strip().lower() == NO_SPOOL


def effective_spool(settings: Settings) -> Path | None:
    """The spool file the relay appends to, or None when it does not use one: a broker is
    configured (``amqp_url``), or ``publication_spool`` is ``none`` (the messages stay in
    the outbox). Unset (or empty) ``publication_spool`` is the embedded default,
    ``<data_dir>/publication-spool/publications.jsonl``."""
    if settings.amqp_url is not None or spool_disabled(settings):
        return None
    location = (settings.publication_spool or "").strip()
    if not location:
        return settings.data_dir / DEFAULT_SPOOL_DIR / SPOOL_FILE_NAME
    return spool_path(location)


def publication_target(settings: Settings) -> str:
    """Where product messages go, for an operator, to follow "product messages"
    (``joblife status``): to the broker (password hidden), to the spool file, or they stay
    in the outbox."""
    if settings.amqp_url is not None:
        from joblife.logs import redact

        url = redact(settings.amqp_url.get_secret_value())
        return f"go to the broker {url} (exchange {settings.amqp_exchange})"
    spool = effective_spool(settings)
    if spool is None:
        return (
            f"stay in the outbox: no broker, publication_spool = {NO_SPOOL} "
            "(`joblife publications list`); the jobs wait at processed"
        )
    return f"go to the spool {spool} (no broker configured)"


def spool_problem(path: Path) -> str | None:
    """Why the relay could not append to the spool file ``path`` (None: it can), found
    without writing anything: the file, else the nearest directory that exists (the relay
    makes the missing ones), must be writable."""
    if path.exists():
        if not path.is_file():
            return f"{path} is not a file"
        return None if os.access(path, os.W_OK) else f"{path} is not writable"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {path}: {parent} is not writable"
    return None


class SpoolPublisher:
    """Appends product messages to a local JSON-lines file; the interface of
    :class:`~joblife.publication.broker.ConfirmingPublisher` (connect, send,
    wait_confirmed, wait, feedback), so the relay uses either. Not thread-safe: one thread
    uses it, like the broker publisher."""

    def __init__(
        self, path: Path, exchange: str, stop_event: threading.Event | None = None
    ) -> None:
        self.path = path
        self.exchange = exchange
        self.stop_event = stop_event or threading.Event()
        self._fd: int | None = None
        self._error: str | None = None

    @property
    def connected(self) -> bool:
        """Whether the spool file is open for appending."""
        return self._fd is not None and self._error is None

    @property
    def last_error(self) -> str | None:
        """Why the spool could not be opened or written (None while it works)."""
        return self._error

    def connect(self) -> None:
        """Open (create) the spool file for appending; :class:`BrokerUnavailable` if the
        directory cannot be made or the file not opened."""
        self.close()
        self._error = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, SPOOL_MODE)
            _make_private(self._fd)
        except OSError as exc:
            self._error = f"{type(exc).__name__}: {exc}"
            raise BrokerUnavailable(
                f"cannot open the publication spool {self.path}: {exc}"
            ) from exc

    def close(self) -> None:
        """Close the spool file."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):  # a failed disk may fail this too: nothing to do
                os.close(fd)

    def send(self, messages: Sequence[OutgoingMessage]) -> SentBatch:
        """Append ``messages`` (one write) and fsync; every message is then ``CONFIRMED``
        at the fsync's time. A failed write or fsync leaves them ``UNCONFIRMED`` and the
        publisher disconnected (the relay reconnects with its backoff)."""
        batch = SentBatch([Delivery() for _ in messages])
        if not messages:
            return batch
        if self._fd is None or self._error is not None:
            raise BrokerUnavailable(f"the publication spool {self.path} is not open: {self._error}")
        stamp = utc_now().isoformat()
        lines = b"".join(self._line(m, stamp) for m in messages)
        try:
            written = os.write(self._fd, lines)
            if written != len(lines):  # a short write: the line is cut, say so and retry
                raise OSError(f"short write: {written} of {len(lines)} bytes")
            os.fsync(self._fd)
        except OSError as exc:
            self._error = f"{type(exc).__name__}: {exc}"
            self.close()
            return batch
        confirmed_at = utc_now()
        for delivery in batch.deliveries:
            delivery.outcome, delivery.at = Outcome.CONFIRMED, confirmed_at
        return batch

    def wait_confirmed(self, batch: SentBatch, timeout: float) -> list[Delivery]:
        """The outcome of ``batch`` (settled by :meth:`send` already: the fsync)."""
        return batch.deliveries

    def publish(self, messages: Sequence[OutgoingMessage], timeout: float) -> list[Delivery]:
        """:meth:`send` then :meth:`wait_confirmed`."""
        return self.wait_confirmed(self.send(messages), timeout)

    def wait(self, seconds: float) -> None:
        """Wait up to ``seconds`` between cycles (nothing to serve; returns at a stop)."""
        self.stop_event.wait(max(seconds, 0.0))

    def take_feedback(self) -> list[FeedbackMessage]:
        """A spool has no consumers reporting back: always empty."""
        return []

    def settle(self, message: FeedbackMessage, settlement: Settlement) -> None:
        """Nothing to settle (there is no feedback)."""

    def _line(self, message: OutgoingMessage, stamp: str) -> bytes:
        try:
            body = json.loads(message.body)
        except ValueError:
            body = message.body.decode("utf-8", errors="replace")
        record = {
            "message_id": message.message_id,
            "exchange": self.exchange,
            "routing_key": message.routing_key,
            "headers": message.headers,
            "body": body,
            "written_at": stamp,
        }
        return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
