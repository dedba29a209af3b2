"""A private PgBouncer in transaction pooling mode in front of the tests' PostgreSQL.

:func:`running_pgbouncer` starts Debian's ``pgbouncer`` (1.18 here) as a child process with
its own configuration in a temporary directory: it listens on a free 127.0.0.1 port and
forwards every database name (``* = host=… port=…``), so each test's own database is
reachable through it; ``auth_type = trust`` with an auth file listing the users it admits
(:meth:`PgBouncer.add_user` adds one and reloads). It is stopped (SIGINT, then SIGKILL) at
the end. As root it drops to the ``postgres`` user (or ``nobody``): PgBouncer refuses to
run as root.

The fixtures :func:`pgbouncer` (one per test session, pools of 4 server connections) and
:func:`pgbouncer_factory` (one per test, any pool size) skip the test on a machine without
the binary and fail it in CI (:func:`tests.support.services.unavailable`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from sqlalchemy.engine import URL, make_url

from tests.support.services import free_port, unavailable

#: Where Debian installs it (not on a non-root user's PATH).
CANDIDATES = ("pgbouncer", "/usr/sbin/pgbouncer")
#: How long PgBouncer may take to listen, and to stop (seconds).
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def pgbouncer_binary() -> str | None:
    """The ``pgbouncer`` executable, or None."""
    for candidate in CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def _run_as() -> pwd.struct_passwd | None:
    """The user PgBouncer runs as when the tests run as root (it refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and neither a postgres nor a nobody user exists")


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


@dataclass
class PgBouncer:
    """A running PgBouncer: its port, its directory (configuration, auth file, log) and the
    server it forwards to (``server``: an admin URL of it)."""

    server: URL
    directory: Path
    port: int
    process: subprocess.Popen
    users: dict[str, str] = field(default_factory=dict)

    @property
    def auth_file(self) -> Path:
        return self.directory / "users.txt"

    @property
    def log_file(self) -> Path:
        return self.directory / "pgbouncer.log"

    def url(self, database_url: str | URL, username: str | None = None) -> str:
        """``database_url`` (any database of the server, any admitted user) through the
        pooler: same user, password and database, the pooler's host and port."""
        url = make_url(database_url).set(host="127.0.0.1", port=self.port)
        if username is not None:
            url = url.set(username=username, password=None)
        return url.render_as_string(hide_password=False)

    def add_user(self, name: str, password: str = "") -> None:
        """Admit ``name`` (PgBouncer logs in to the server with ``password``), reloaded."""
        self.users[name] = password
        self._write_auth_file()
        self.reload()

    def reload(self) -> None:
        """Re-read the configuration and the auth file (SIGHUP), and wait until it did."""
        marker = self.log_file.stat().st_size if self.log_file.exists() else 0
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + START_TIMEOUT
        while "got SIGHUP" not in self._log_since(marker):
            if time.monotonic() > deadline:
                raise AssertionError(f"pgbouncer did not reload:\n{self.log_tail()}")
            time.sleep(0.02)

    def admin(self, command: str) -> list[dict[str, Any]]:
        """A command of the admin console (``SHOW POOLS``...) as the server's admin user:
        its rows as dicts."""
        conn = psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            dbname="pgbouncer",
            user=self.server.username,
            password=self.server.password or None,
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(command)
                names = [column.name for column in cursor.description or ()]
                return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        finally:
            conn.close()

    def pools(self, database: str) -> list[dict[str, Any]]:
        """``SHOW POOLS`` rows of ``database`` (one per user)."""
        return [row for row in self.admin("SHOW POOLS") if row["database"] == database]

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _log_since(self, offset: int) -> str:
        if not self.log_file.exists():
            return ""
        with self.log_file.open("rb") as file:
            file.seek(offset)
            return file.read().decode(errors="replace")

    def _write_auth_file(self) -> None:
        lines = [f"{_quote(user)} {_quote(password)}" for user, password in self.users.items()]
        tmp = self.auth_file.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.chmod(0o644)
        tmp.replace(self.auth_file)

    def stop(self) -> None:
        """SIGINT (a safe shutdown), SIGKILL if it lingers; then wait for it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)


def _config(
    server: URL, port: int, directory: Path, pool_size: int, max_client_conn: int, extra: str
) -> str:
    host = server.host or "127.0.0.1"
    return f"""[databases]
* = host={host} port={server.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {directory / "users.txt"}
admin_users = {server.username}
pool_mode = transaction
max_client_conn = {max_client_conn}
default_pool_size = {pool_size}
min_pool_size = 0
reserve_pool_size = 0
; the shared server has max_connections = 100: give connections back quickly
server_idle_timeout = 5
server_lifetime = 60
logfile = {directory / "pgbouncer.log"}
log_connections = 0
log_disconnections = 0
{extra}
"""


@contextlib.contextmanager
def running_pgbouncer(
    server_url: str | URL,
    pool_size: int = 4,
    extra: str = "",
    binary: str | None = None,
    max_client_conn: int = 2000,
) -> Iterator[PgBouncer]:
    """A PgBouncer in transaction mode in front of ``server_url``'s server (its user, with
    its password, admitted), pools of ``pool_size`` server connections per database and
    user, at most ``max_client_conn`` clients; ``extra``: more ``[pgbouncer]`` settings.
    Stopped and removed on exit."""
    binary = binary or pgbouncer_binary()
    if binary is None:
        raise FileNotFoundError("pgbouncer")
    server = make_url(server_url)
    directory = Path(tempfile.mkdtemp(prefix="joblife-pgbouncer-"))
    account = _run_as()
    try:
        directory.chmod(0o755)
        if account is not None:
            os.chown(directory, account.pw_uid, account.pw_gid)
        bouncer = _start(binary, server, directory, account, pool_size, max_client_conn, extra)
        try:
            yield bouncer
        finally:
            bouncer.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _start(
    binary: str,
    server: URL,
    directory: Path,
    account: pwd.struct_passwd | None,
    pool_size: int,
    max_client_conn: int,
    extra: str,
) -> PgBouncer:
    """Start PgBouncer on a free port (another free port if that one was taken meanwhile)."""
    for _ in range(5):
        port = free_port()
        ini = directory / "pgbouncer.ini"
        ini.write_text(_config(server, port, directory, pool_size, max_client_conn, extra))
        ini.chmod(0o644)
        command = [binary, *(["-u", account.pw_name] if account else []), str(ini)]
        users = {server.username or "postgres": server.password or ""}
        PgBouncer(server, directory, port, None, users)._write_auth_file()  # type: ignore[arg-type]
        # In the foreground it logs to stderr too: into a file, never a pipe nobody reads
        # (a full pipe would block it).
        stderr = directory / "pgbouncer.stderr"
        with stderr.open("wb") as output:
            process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=output, cwd=directory
            )
        bouncer = PgBouncer(server, directory, port, process, users)
        if _wait_listening(bouncer):
            return bouncer
        bouncer.stop()
        said = stderr.read_text(errors="replace")[-4000:]
        if "Address already in use" not in bouncer.log_tail() + said:
            raise RuntimeError(
                f"pgbouncer did not start ({' '.join(command)}):\n{bouncer.log_tail()}\n{said}"
            )
    raise RuntimeError("pgbouncer found no free port")


def _wait_listening(bouncer: PgBouncer) -> bool:
    """Wait until PgBouncer accepts connections (True) or exits (False)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if bouncer.process.poll() is not None:
            return False
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", bouncer.port), timeout=1),
        ):
            return True
        time.sleep(0.02)
    return False


def _require_binary() -> str:
    binary = pgbouncer_binary()
    if binary is None:
        unavailable(
            "pgbouncer is not installed (Debian: apt-get install pgbouncer; "
            "scripts/system-packages.sh installs it)"
        )
    assert binary is not None
    return binary


@pytest.fixture(scope="session")
def pgbouncer(pg_admin_url: str) -> Iterator[PgBouncer]:
    """A PgBouncer for the whole test session in front of the tests' server."""
    binary = _require_binary()
    with running_pgbouncer(pg_admin_url, binary=binary) as bouncer:
        yield bouncer


@pytest.fixture
def pgbouncer_factory(pg_admin_url: str) -> Iterator[Callable[..., PgBouncer]]:
    """Start PgBouncers of this test's own: ``pgbouncer_factory(pool_size=1)``."""
    binary = _require_binary()
    with contextlib.ExitStack() as stack:

        def start(pool_size: int = 4, extra: str = "") -> PgBouncer:
            return stack.enter_context(
                running_pgbouncer(pg_admin_url, pool_size, extra, binary=binary)
            )

        yield start
