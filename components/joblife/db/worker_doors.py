"""The worker's doors, from Python: the attempt secret and thin wrappers of the SECURITY
DEFINER functions the ``joblife_worker`` role writes through (revision 0011).

**The attempt secret.** When the dispatcher queues an attempt it derives the attempt's
secret, HMAC-SHA256 of ``<job id>:<attempt>:<unique id>`` with the services' key
(``attempt_secret_key``, or a random key kept in ``<data_dir>/attempt-secret.key``), stores
its SHA-256 in ``jobs.attempt_secret_hash`` and gives the secret to the executor, which
passes it to the worker (an argument or ``JOBLIFE_ATTEMPT_SECRET`` locally, the dispatch
meta ``attempt_secret`` on Nomad). Deterministic, so that a re-dispatch with the same
idempotency token after a crash carries the same secret.

**How the worker presents it.** As the session setting ``joblife.attempt_secret``, given at
connection start (libpq ``options``): every worker logs in as the same database user, who
sees the query text of its other sessions in ``pg_stat_activity``; a secret in a query
would be readable by every other worker. Every door checks it, whatever role the worker
connects as: a worker always needs its secret (a wrong or missing one is refused with
``insufficient_privilege``).

**Riding through an outage.** A worker retries its database work with backoff
(:func:`retry_on_outage`) while the failure is the connection's
(:func:`is_connection_failure`), within ``worker_database_retry_seconds``; each try takes a
new connection from the engine (``pool_pre_ping`` drops dead ones; a disconnect
invalidates the pool), and every new connection presents the secret again
(:func:`present_secret` hooks the engine's connection start, not one connection).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg2
from sqlalchemy import Connection, Engine, bindparam, event, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from joblife.config import Settings
from joblife.db.status import translate_status_error
from joblife.model.status import JobStatus

#: The environment variables a worker process may find its secret in (the local
#: executor's, and Nomad's rendering of the dispatch meta ``attempt_secret``).
SECRET_ENVIRONMENT = ("JOBLIFE_ATTEMPT_SECRET", "NOMAD_META_attempt_secret")
#: The session setting the doors read the secret from.
SECRET_SETTING = "joblife.attempt_secret"
#: The key file of a service without ``attempt_secret_key``, under its data dir.
KEY_FILE = "attempt-secret.key"
#: SQLSTATEs of a server that dropped or refuses connections (class 08: connection
#: exception; admin_shutdown, crash_shutdown, cannot_connect_now). None: no answer at all.
CONNECTION_SQLSTATES = ("57P01", "57P02", "57P03")
#: What a server starting, stopping or recovering answers a new connection (no SQLSTATE).
TRANSIENT_FATAL = ("the database system is", "terminating connection due to administrator")
#: The first wait between tries during an outage, and the longest (doubling in between).
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 5.0
T = TypeVar("T")

_HEARTBEAT = text("SELECT worker_heartbeat(:job_id, :attempt)")
_RECORD_OUTCOME = text(
    "SELECT worker_record_outcome(:job_id, :attempt, :exit_code, :science_image, "
    ":output_path, :output_publication_date)"
)
_WRITE_PUBLICATIONS = text(
    "SELECT worker_write_publications(:job_id, :attempt, :messages)"
).bindparams(bindparam("messages", type_=JSONB))


# -- the secret ------------------------------------------------------------------------------
def attempt_secret_key(settings: Settings, *, create: bool = True) -> bytes | None:
    """The services' key: ``attempt_secret_key``, else the key file of the data dir (made,
    0600, when ``create`` and missing). None when there is none and ``create`` is false."""
    if settings.attempt_secret_key is not None:
        return settings.attempt_secret_key.get_secret_value().encode()
    path = settings.data_dir / KEY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        if not create:
            return None
    return _create_key_file(path)


def _create_key_file(path: Path) -> bytes:
    """A new random key in ``path`` (0600); the first writer wins a race."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secrets.token_hex(32))
    try:
        os.link(tmp, path)  # never replaces a key another process made meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return bytes.fromhex(path.read_text().strip())


def attempt_secret(key: bytes, job_id: int, attempt: int, unique_id: uuid.UUID | str) -> str:
    """The secret of one attempt (64 hex digits)."""
    message = f"{job_id}:{attempt}:{unique_id}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def secret_hash(secret: str) -> bytes:
    """What ``jobs.attempt_secret_hash`` stores of a secret: its SHA-256."""
    return hashlib.sha256(secret.encode()).digest()


def issue_attempt_secret(executor: Session | Connection, settings: Settings, job_id: int) -> str:
    """Give the job's current attempt its secret, as the dispatcher does when it queues it
    (the hash stored, in the caller's transaction); the secret. For a job queued by hand
    (an owner's or a test's): without it, no worker can write the job."""
    row = executor.execute(
        text("SELECT attempt, unique_id FROM jobs WHERE id = :id"), {"id": job_id}
    ).one()
    secret = attempt_secret(attempt_secret_key(settings), job_id, row.attempt, row.unique_id)
    executor.execute(
        text("UPDATE jobs SET attempt_secret_hash = :hash WHERE id = :id"),
        {"id": job_id, "hash": secret_hash(secret)},
    )
    return secret


def secret_from_environment(environ: dict[str, str] | None = None) -> str | None:
    """The attempt secret the executor put in the environment, removed from it (so that
    no child process, the science step included, inherits it)."""
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    found = None
    for name in SECRET_ENVIRONMENT:
        value = environ.pop(name, None)
        found = found or value
    return found or None


def present_secret(engine: Engine, secret: str | None) -> None:
    """Make every connection ``engine`` opens from now on carry ``secret`` as the session
    setting the doors check (given at connection start: never in a query's text)."""
    if not secret:
        return
    if not all(c in "0123456789abcdefABCDEF" for c in secret):
        raise ValueError("an attempt secret is hexadecimal")

    @event.listens_for(engine, "do_connect")
    def _options(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        option = f"-c {SECRET_SETTING}={secret}"
        cparams["options"] = f"{cparams['options']} {option}" if cparams.get("options") else option


# -- outages ---------------------------------------------------------------------------------
def is_connection_failure(error: BaseException) -> bool:
    """Whether ``error`` is the database connection failing (a server down, restarting or
    unreachable): worth another try on a new connection. A refusal (a status conflict, a
    wrong secret, a constraint) is not: it would answer the same again."""
    if isinstance(error, DBAPIError):
        if error.connection_invalidated:
            return True
        error = error.orig  # type: ignore[assignment]
    if not isinstance(error, psycopg2.OperationalError):
        return False
    code = error.pgcode
    if code is not None:
        return code.startswith("08") or code in CONNECTION_SQLSTATES
    # No SQLSTATE: libpq's own failure to connect or to read (refused, closed, timed out),
    # or the server's FATAL answer to the connection start: only a server starting up or
    # shutting down is an outage; a login refused (no such role or database, a wrong
    # password, no room left) would answer the same again.
    message = str(error)
    return "FATAL:" not in message or any(sign in message for sign in TRANSIENT_FATAL)


def retry_on_outage(
    operation: Callable[[], T],
    budget: float,
    on_retry: Callable[[BaseException, float], None] | None = None,
    *,
    sleep: Callable[[float], Any] = time.sleep,
) -> T:
    """``operation()``, tried again with backoff (0.5 s doubling up to 5 s) while it fails
    with a connection failure, for at most ``budget`` seconds from the first failure; then
    that failure is raised. ``operation`` must be a whole unit (its own transaction, rolled
    back on failure) so that a new try starts clean. ``on_retry(error, wait)`` before each
    wait (to log it)."""
    deadline: float | None = None
    wait = RETRY_FIRST_SECONDS
    while True:
        try:
            return operation()
        except Exception as error:
            if not is_connection_failure(error):
                raise
            now = time.monotonic()
            deadline = now + budget if deadline is None else deadline
            if now >= deadline:
                raise
            wait = min(wait, deadline - now)
            if on_retry is not None:
                on_retry(error, wait)
            sleep(wait)
            wait = min(wait * 2, RETRY_MAX_SECONDS)


# -- the doors -------------------------------------------------------------------------------
def _call(executor: Session | Connection, statement: Any, params: dict[str, Any]) -> Any:
    try:
        return executor.execute(statement, params).scalar()
    except DBAPIError as error:
        typed = translate_status_error(error)
        if typed is None:
            raise
        raise typed from error


def worker_heartbeat(executor: Session | Connection, job_id: int, attempt: int) -> JobStatus | None:
    """Stamp the job's heartbeat (the server's clock) if it is in flight at ``attempt``;
    its status, or None if the job is no longer at ``attempt``."""
    status = _call(executor, _HEARTBEAT, {"job_id": job_id, "attempt": attempt})
    return None if status is None else JobStatus.parse(status)


#: The jobs columns a worker records through :func:`worker_record_outcome`.
OUTCOME_COLUMNS = ("exit_code", "science_image", "output_path", "output_publication_date")


def worker_record_outcome(
    executor: Session | Connection,
    job_id: int,
    attempt: int,
    *,
    exit_code: int | None = None,
    science_image: str | None = None,
    output_path: str | None = None,
    output_publication_date: datetime | None = None,
) -> None:
    """Record a running attempt's outcome (None: left as it is). The output path is set
    once (while the job has none); :class:`~joblife.errors.StatusConflict` if the job is
    not running at ``attempt``; a refused value raises ``DBAPIError`` (42501)."""
    _call(
        executor,
        _RECORD_OUTCOME,
        {
            "job_id": job_id,
            "attempt": attempt,
            "exit_code": exit_code,
            "science_image": science_image,
            "output_path": output_path,
            "output_publication_date": output_publication_date,
        },
    )


def worker_write_publications(
    executor: Session | Connection,
    job_id: int,
    attempt: int,
    messages: Iterable[Mapping[str, Any]],
) -> int:
    """Write the attempt's outbox (each message ``{product, body}``, and optionally the
    ``message_id`` the caller expects) while the job is processed at ``attempt``; how many
    rows. The door computes each message id itself (the job's unique id, the product, the
    attempt) and refuses a ``message_id`` that is not that one."""
    payload = [
        {
            "product": m["product"],
            "body": m["body"],
            **({"message_id": m["message_id"]} if m.get("message_id") is not None else {}),
        }
        for m in messages
    ]
    return int(
        _call(
            executor,
            _WRITE_PUBLICATIONS,
            {"job_id": job_id, "attempt": attempt, "messages": payload},
        )
    )
