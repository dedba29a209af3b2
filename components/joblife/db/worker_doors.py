"""The worker's doors, from Python: the attempt secret and thin wrappers of the SECURITY
DEFINER functions the ``joblife_worker`` role writes through (revisions 0011, 0016).

**The attempt secret.** When the dispatcher queues an attempt it derives the attempt's
secret, HMAC-SHA256 of ``<job id>:<attempt>:<unique id>`` with the services' key
(``attempt_secret_key``, or a random key kept in ``<data_dir>/attempt-secret.key``), stores
its SHA-256 in ``jobs.attempt_secret_hash`` and its proof key (below) where only the
database owner reads it (:func:`store_attempt_secrets`), and gives the secret to the
executor, which passes it to the worker (an argument or ``JOBLIFE_ATTEMPT_SECRET``
locally, the dispatch meta ``attempt_secret`` on Nomad). Deterministic, so that a
re-dispatch with the same idempotency token after a crash carries the same secret.

**How the worker presents it: a proof per transaction.** Every worker logs in as the same
database user, who reads the query text of that user's other sessions in
``pg_stat_activity``: the secret must never be in a query. And through PgBouncer in
transaction mode, consecutive transactions of one worker run on different server
connections, shared with other workers: nothing set at connection start or for a session
reaches the doors. So, in each transaction that calls a door, before the first door call,
the engine (:func:`present_secret`) reads the transaction's id and sets, for that
transaction only, ``joblife.attempt_proof`` = HMAC-SHA256 of ``joblife attempt proof:<xid>``
with the attempt's proof key (HMAC-SHA256 of :data:`PROOF_KEY_LABEL` with the secret).
The doors recompute it with the proof key the dispatcher stored. The proof is visible in
``pg_stat_activity`` while (and after) it is set, and worthless there: it opens the doors
in that one transaction, the worker's own (a transaction id is never used again,
committed or not); neither the secret nor the proof key is ever sent by the worker. The
price, in each transaction that calls a door: one round trip more (the transaction id; the
proof goes in the same query as the first door call).

**The session setting, and the upgrade.** The doors still accept the secret itself as the
session setting ``joblife.attempt_secret`` given at connection start (libpq ``options``,
never a query; ``present_secret(..., at_connection=True)``), as workers before revision
0016 presented it: an attempt queued before the upgrade has no proof key, and its worker
(of the version it was dispatched with: a Nomad child runs its parent's image of then)
finishes it on its direct connection. The worker no longer sends it: a pooler refuses
startup options (PgBouncer, logging them) or drops them, and the secret now never leaves
the worker. Every door checks a secret, whatever role the worker connects as: a wrong or
missing one is refused with ``insufficient_privilege``.

**Riding through an outage.** A worker retries its database work with backoff
(:func:`retry_on_outage`) while the failure is the connection's
(:func:`is_connection_failure`), within ``worker_database_retry_seconds``; each try takes a
new connection from the engine, and every transaction presents its proof again
(:func:`present_secret` hooks the engine, not one connection).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import psycopg2
from sqlalchemy import BigInteger, Connection, Engine, LargeBinary, bindparam, event, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from joblife.config import Settings
from joblife.db.status import translate_status_error
from joblife.keyfiles import read_key_file
from joblife.model.status import JobStatus

#: The environment variables a worker process may find its secret in (the local
#: executor's, and Nomad's rendering of the dispatch meta ``attempt_secret``).
SECRET_ENVIRONMENT = ("JOBLIFE_ATTEMPT_SECRET", "NOMAD_META_attempt_secret")
#: The session setting the doors read the secret from (a direct connection's).
SECRET_SETTING = "joblife.attempt_secret"
#: The transaction-local setting the doors read the transaction's proof from.
PROOF_SETTING = "joblife.attempt_proof"
#: What the proof key of an attempt is the HMAC of (keyed with the attempt's secret).
PROOF_KEY_LABEL = b"joblife attempt proof key"
#: What a proof is the HMAC of (keyed with the proof key), followed by the transaction id.
PROOF_MESSAGE = "joblife attempt proof:"
#: A statement calling a door: the first one of a transaction presents the proof first.
DOOR_CALL = re.compile(
    r"\bworker_(?:set_job_status|heartbeat|record_outcome|write_publications)\s*\("
)
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
#: ``Connection.info`` key: this transaction presented its proof already.
_PROVEN = "joblife_attempt_proven"

_STORE_SECRETS = text(
    "SELECT joblife_store_attempt_secrets(:ids, :hashes, :proof_keys)"
).bindparams(
    bindparam("ids", type_=ARRAY(BigInteger)),
    bindparam("hashes", type_=ARRAY(LargeBinary)),
    bindparam("proof_keys", type_=ARRAY(LargeBinary)),
)
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
    return read_key_file(settings.data_dir / KEY_FILE, create=create)


def attempt_secret(key: bytes, job_id: int, attempt: int, unique_id: uuid.UUID | str) -> str:
    """The secret of one attempt (64 hex digits)."""
    message = f"{job_id}:{attempt}:{unique_id}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def secret_hash(secret: str) -> bytes:
    """What ``jobs.attempt_secret_hash`` stores of a secret: its SHA-256."""
    return hashlib.sha256(secret.encode()).digest()


def proof_key(secret: str) -> bytes:
    """The attempt's proof key: HMAC-SHA256 of :data:`PROOF_KEY_LABEL` keyed with the
    secret (stored by the dispatcher where only the database owner reads it)."""
    return hmac.new(secret.encode(), PROOF_KEY_LABEL, hashlib.sha256).digest()


def attempt_proof(secret: str, transaction_id: int | str) -> str:
    """The proof of ``secret`` for one transaction (64 hex digits): HMAC-SHA256 of
    ``joblife attempt proof:<transaction id>`` keyed with the attempt's proof key."""
    message = f"{PROOF_MESSAGE}{transaction_id}".encode()
    return hmac.new(proof_key(secret), message, hashlib.sha256).hexdigest()


def store_attempt_secrets(executor: Session | Connection, secrets: Mapping[int, str]) -> None:
    """Store each job's attempt secret as the doors check it (``{job id: secret}``, one
    statement, in the caller's transaction): its SHA-256 in ``jobs.attempt_secret_hash``
    and its proof key in ``attempt_proof_keys`` (through ``joblife_store_attempt_secrets``,
    the one writer, granted to the services)."""
    if not secrets:
        return
    executor.execute(
        _STORE_SECRETS,
        {
            "ids": list(secrets),
            "hashes": [secret_hash(s) for s in secrets.values()],
            "proof_keys": [proof_key(s) for s in secrets.values()],
        },
    )


def issue_attempt_secret(executor: Session | Connection, settings: Settings, job_id: int) -> str:
    """Give the job's current attempt its secret, as the dispatcher does when it queues it
    (stored, in the caller's transaction); the secret. For a job queued by hand (an
    owner's or a test's): without it, no worker can write the job."""
    row = executor.execute(
        text("SELECT attempt, unique_id FROM jobs WHERE id = :id"), {"id": job_id}
    ).one()
    secret = attempt_secret(attempt_secret_key(settings), job_id, row.attempt, row.unique_id)
    store_attempt_secrets(executor, {job_id: secret})
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


def present_secret(engine: Engine, secret: str | None, *, at_connection: bool = True) -> None:
    """Make ``engine`` present ``secret`` to the doors from now on: each transaction that
    calls a door proves it first (:func:`present_proof`, before its first door call; the
    transaction must not be in autocommit mode). ``at_connection``: each new connection
    also gives the secret itself as the session setting :data:`SECRET_SETTING` (libpq
    ``options``, never in a query), which the doors accept without a proof key (an attempt
    queued before revision 0016). Only for a direct connection: PgBouncer refuses startup
    options (and logs them) or drops them; the worker never uses it."""
    if not secret:
        return
    if not all(c in "0123456789abcdefABCDEF" for c in secret):
        raise ValueError("an attempt secret is hexadecimal")

    if at_connection:

        @event.listens_for(engine, "do_connect")
        def _options(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
            option = f"-c {SECRET_SETTING}={secret}"
            given = cparams.get("options")
            cparams["options"] = f"{given} {option}" if given else option

    @event.listens_for(engine, "begin")
    def _begun(conn: Connection) -> None:
        conn.info.pop(_PROVEN, None)

    @event.listens_for(engine, "rollback_savepoint")
    def _undone(conn: Connection, name: str, context: Any) -> None:
        conn.info.pop(_PROVEN, None)  # the proof may have been set inside the savepoint

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def _prove(
        conn: Connection, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> tuple[str, Any]:
        if conn.info.get(_PROVEN) or not DOOR_CALL.search(statement):
            return statement, params
        cursor.execute("SELECT pg_current_xact_id()::text")
        (xid,) = cursor.fetchone()
        proof = attempt_proof(secret, xid)  # 64 hex digits: safe as a literal
        setting = f"SELECT set_config('{PROOF_SETTING}', '{proof}', true)"
        conn.info[_PROVEN] = True
        if many:
            cursor.execute(setting)
            return statement, params
        # Sent with the door call in one query (one round trip): the result is the door's.
        return f"{setting}; {statement}", params


def present_proof(executor: Session | Connection, secret: str) -> str:
    """Prove ``secret`` for the caller's transaction (what :func:`present_secret`'s engines
    do before a transaction's first door call): read the transaction's id, set
    :data:`PROOF_SETTING` for the transaction. The proof."""
    xid = executor.execute(text("SELECT pg_current_xact_id()::text")).scalar_one()
    proof = attempt_proof(secret, xid)
    executor.execute(
        text("SELECT set_config(:name, :proof, true)"), {"name": PROOF_SETTING, "proof": proof}
    )
    return proof


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
