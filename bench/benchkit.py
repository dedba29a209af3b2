"""What the benchmark scripts share: a scratch database on an admin URL, and the table of
figures they print. Imported by the scripts in this folder (run as ``python bench/X.py``)."""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2.extensions import connection as PgConnection
from sqlalchemy.engine import URL

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def joblife_environment(database_url: str, data_dir: Path, **settings: str) -> None:
    """Point joblife's settings at a bench database through ``JOBLIFE_*`` variables (the
    workers and subprocesses a bench starts read them from the environment, as in
    production): every other ``JOBLIFE_*`` variable is removed, the data directory is
    ``data_dir``, no user configuration file is read, the log level is WARNING unless
    ``settings`` (``name=value``, without the prefix, e.g. ``amqp_url=...``) says otherwise;
    the settings cache is cleared."""
    from joblife.config import get_settings

    for name in [n for n in os.environ if n.startswith("JOBLIFE_")]:
        del os.environ[name]
    os.environ.update(
        {
            "JOBLIFE_DATABASE_URL": database_url,
            "JOBLIFE_DATA_DIR": str(data_dir),
            "JOBLIFE_LOG_LEVEL": "WARNING",
            # A config file path that does not exist: no user configuration is read.
            "JOBLIFE_CONFIG": str(data_dir / "absent-config.toml"),
            **{f"JOBLIFE_{name.upper()}": value for name, value in settings.items()},
        }
    )
    get_settings.cache_clear()


def add_database_url_argument(parser: argparse.ArgumentParser) -> None:
    """``--database-url``: the admin URL of the server the benchmark runs on."""
    parser.add_argument(
        "--database-url",
        default=os.environ.get("JOBLIFE_BENCH_DATABASE_URL", DEFAULT_ADMIN_URL),
        help="admin URL of a PostgreSQL server (env JOBLIFE_BENCH_DATABASE_URL; "
        f"default {DEFAULT_ADMIN_URL}); a scratch database is created and dropped there",
    )


def libpq_url(url: URL) -> str:
    """The URL in the form libpq (psycopg2) accepts."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def sqlalchemy_url(url: URL) -> str:
    """The URL with joblife's driver."""
    return url.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def connect(url: URL, autocommit: bool = False) -> PgConnection:
    conn = psycopg2.connect(libpq_url(url), application_name="joblife-bench")
    conn.autocommit = autocommit
    return conn


def run_admin(admin_url: URL, sql: str) -> None:
    conn = connect(admin_url, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@contextmanager
def bench_database(admin_url: URL, keep: bool) -> Iterator[URL]:
    """A fresh database on the admin URL's server, dropped on exit (unless ``keep``)."""
    name = f"joblife_bench_{uuid.uuid4().hex[:12]}"
    run_admin(admin_url, f'CREATE DATABASE "{name}"')
    print(f"database: {name} (created)")
    try:
        yield admin_url.set(database=name)
    finally:
        if keep:
            print(f"database: {name} kept (--keep)")
        else:
            run_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            print(f"database: {name} dropped")


def print_table(rows: Sequence[tuple[str, str, str, str]], figure: str = "figure") -> None:
    """Print (figure, measured, target, result) rows as an aligned table."""
    header = (figure, "measured", "target", "result")
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(4)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row).rstrip())


def no_op_test_jobs(prefix: str, count: int, first: datetime) -> list[Any]:
    """``count`` ``test`` jobs (behaviour ``succeed``) as the ``test`` type's discovery
    builds them, published a microsecond apart from ``first``."""
    from joblife.jobtypes.test_job import TestJob  # after the caller set JOBLIFE_* up

    jobs = [
        TestJob(
            input_product_id=f"{prefix}{i:07d}",
            name=f"test {prefix}{i:07d}",
            input_publication_date=first + timedelta(microseconds=i),
            behaviour="succeed",
            behaviour_attempts=None,
            sleep_seconds=0.0,
            depends_on_product=None,
            publish=False,
        )
        for i in range(count)
    ]
    for job in jobs:
        job.job_pre_insertion_setup()
    return jobs
