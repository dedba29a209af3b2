"""The database engine and sessions, from ``JOBLIFE_DATABASE_URL`` or the embedded server.

Everything here works through PgBouncer in transaction pooling mode: joblife keeps no
session state beyond a transaction (transaction-level advisory locks, ``SET LOCAL``, temp
tables ``ON COMMIT DROP``, no LISTEN, no cursor kept across transactions), psycopg2 prepares
no statement on the server, and the engines send no startup ``options`` (the worker's, which
PgBouncer may refuse, is optional: see :mod:`joblife.db.worker_doors`). Migrations connect
directly.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool

from joblife.config import Settings, get_settings
from joblife.db.embedded import embedded_database_url

#: The application names the engines give their connections (``pg_stat_activity``).
APPLICATION_NAME = "joblife"
WORKER_APPLICATION_NAME = "joblife-worker"
#: How long a worker's second user of its one connection waits for it (seconds).
WORKER_CHECKOUT_TIMEOUT = 30.0


def database_url(settings: Settings | None = None) -> str:
    """The URL of the job database: the configured one, or the embedded server's (started
    if needed). A plain ``postgresql://`` URL is given the psycopg2 driver."""
    settings = settings or get_settings()
    if settings.database_url is None:
        return embedded_database_url(settings.embedded_database_dir)
    url = make_url(settings.database_url.get_secret_value())
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg2")
    return url.render_as_string(hide_password=False)


def create_joblife_engine(
    url: str | None = None, settings: Settings | None = None, **kwargs: Any
) -> Engine:
    """An engine on the job database. Connections are checked before use, so a restarted
    database is reconnected to transparently between transactions."""
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("connect_args", {"application_name": APPLICATION_NAME, "connect_timeout": 10})
    return create_engine(url or database_url(settings), **kwargs)


class OneConnectionPool(QueuePool):
    """At most one connection at a time, opened at checkout and closed when returned: what
    a worker costs the database, or its pooler, is one connection while a transaction runs
    and none in between (the science step). A second checkout meanwhile (the heartbeat
    thread during the worker's own status change) waits for the first to be returned, at
    most ``timeout`` seconds (then ``sqlalchemy.exc.TimeoutError``)."""

    #: SQLAlchemy names a pool's logger after its class's module: under ``joblife.`` its
    #: DEBUG lines (each connection, without a job's fields) would reach the worker's log.
    _sqla_logger_namespace = "sqlalchemy.pool.impl.OneConnectionPool"

    def __init__(self, creator: Any, **kwargs: Any) -> None:
        kwargs.update(pool_size=1, max_overflow=0)
        super().__init__(creator, **kwargs)

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        record.close()  # reopened by the record at its next checkout
        super()._do_return_conn(record)


def worker_engine(settings: Settings) -> Engine:
    """The worker's engine on ``settings.database_url``: one short-lived connection at a
    time (:class:`OneConnectionPool`; no pre-ping: every connection is new)."""
    return create_joblife_engine(
        settings=settings,
        poolclass=OneConnectionPool,
        pool_timeout=WORKER_CHECKOUT_TIMEOUT,
        pool_pre_ping=False,
        connect_args={"application_name": WORKER_APPLICATION_NAME, "connect_timeout": 10},
    )


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions on ``engine``; objects stay readable after commit (no expire on commit)."""
    return sessionmaker(engine, expire_on_commit=False)
