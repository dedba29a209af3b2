"""Shared fixtures: a real PostgreSQL server, a migrated template database, and a fresh
database (cloned from the template) for every test that asks for one."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

TESTS_DIR = Path(__file__).resolve().parent

# The test job type and its migration are plugged in the way a partner's would be;
# nothing the tests run touches the user's own joblife data.
os.environ["JOBLIFE_JOB_TYPE_MODULES"] = '["tests.support.example_type"]'
os.environ["JOBLIFE_MIGRATION_LOCATIONS"] = f'["{TESTS_DIR / "support" / "migrations"}"]'
os.environ.setdefault(
    "JOBLIFE_DATA_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"joblife-tests-{os.getpid()}")
)

from joblife.config import get_settings  # noqa: E402
from joblife.db import migrate  # noqa: E402
from joblife.db.engine import create_joblife_engine  # noqa: E402

from tests.support.services import postgres_server  # noqa: E402

# Fixtures of the other services, one module each.
pytest_plugins = [
    "tests.support.amqp",
    "tests.support.containers",
    "tests.support.s3",
    "tests.support.nomad",
    "tests.support.browser",
    "tests.support.web",
]


def _with_database(url: str, name: str) -> str:
    parsed = make_url(url).set(database=name)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """Admin URL of the PostgreSQL server the tests use."""
    with postgres_server() as url:
        yield _with_database(url, make_url(url).database or "postgres")


@pytest.fixture(scope="session")
def admin_engine(pg_admin_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


def _create_database(admin_engine: Engine, name: str, template: str | None = None) -> None:
    with admin_engine.connect() as conn:
        suffix = f' TEMPLATE "{template}"' if template else ""
        conn.execute(text(f'CREATE DATABASE "{name}"{suffix}'))


def _drop_database(admin_engine: Engine, name: str) -> None:
    with admin_engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def template_database(admin_engine: Engine, pg_admin_url: str) -> Iterator[str]:
    """A database migrated to every head, cloned by :func:`db_url` for each test."""
    get_settings.cache_clear()
    name = f"jl_tmpl_{uuid.uuid4().hex[:10]}"
    _create_database(admin_engine, name)
    engine = create_joblife_engine(_with_database(pg_admin_url, name))
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    yield name
    _drop_database(admin_engine, name)


@pytest.fixture
def db_url(admin_engine: Engine, template_database: str, pg_admin_url: str) -> Iterator[str]:
    """URL of a fresh, fully migrated database of this test's own."""
    name = f"jl_test_{uuid.uuid4().hex[:12]}"
    _create_database(admin_engine, name, template=template_database)
    yield _with_database(pg_admin_url, name)
    _drop_database(admin_engine, name)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_joblife_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


@pytest.fixture
def joblife_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point joblife's settings (and so the CLI) at this test's database."""
    monkeypatch.setenv("JOBLIFE_DATABASE_URL", db_url)
    get_settings.cache_clear()
    yield db_url
    get_settings.cache_clear()


@pytest.fixture
def server_tmp_path() -> Iterator[Path]:
    """A temporary directory for an embedded PostgreSQL server's data, outside pytest's
    base directory: as root the server runs as its own system user, which must reach its
    data dir, and every pytest session (a second suite on the same machine) makes
    ``/tmp/pytest-of-<user>`` private again, cutting a running server off its files."""
    directory = Path(tempfile.mkdtemp(prefix="joblife-test-server-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
