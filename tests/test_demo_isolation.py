"""``joblife demo`` touches only its own jobs (issue 17, item 2): it runs in a database of
its own on the embedded server, so the jobs already in the user's database (another run's,
another type's, in any status) are left as they are; a configured database is refused
unless ``--allow-configured-database`` is given. An interrupted demo says what it left and
how to finish or clean it (issue 17, item 17)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from joblife.cli.main import app
from joblife.config import get_settings
from joblife.db import migrate
from joblife.db.embedded import embedded_database_url, stop_embedded_server
from joblife.db.engine import create_joblife_engine
from joblife.jobtypes.h5repack import H5RepackJob
from joblife.model import JobStatus
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from tests.support.factories import make_jobs, move_to
from tests.support.lifecycle import wait_for
from tests.test_demo import JOBLIFE, printed_command
from tests.test_publication import processed_jobs

S = JobStatus


def user_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """A user's environment: no JOBLIFE_* setting but the data dir, and the tests' example
    job type (its migration is in the database the leftovers are made in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBLIFE_")}
    for name in ("JOBLIFE_JOB_TYPE_MODULES", "JOBLIFE_MIGRATION_LOCATIONS"):
        env[name] = os.environ[name]
    env.update(JOBLIFE_DATA_DIR=str(data_dir), JOBLIFE_CONFIG=str(data_dir / "none.toml"))
    env.update(extra)
    return env


def demo(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*JOBLIFE, "demo", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def snapshot(engine: Engine) -> dict[str, Any]:
    """Everything a service would change about the jobs: their rows, history and outbox."""
    with engine.connect() as conn:
        return {
            "jobs": conn.execute(
                text(
                    "SELECT id, job_type, input_product_id, status, attempt, status_changed_at, "
                    "nomad_job_id, heartbeat_at FROM jobs ORDER BY id"
                )
            ).all(),
            "history": conn.execute(text("SELECT count(*) FROM job_status_changes")).scalar(),
            "outbox": conn.execute(
                text("SELECT id, published_at, error FROM publications ORDER BY id")
            ).all(),
        }


@pytest.fixture
def data_dir(server_tmp_path: Path) -> Iterator[Path]:
    directory = server_tmp_path / "data"
    yield directory
    stop_embedded_server(directory / "postgres")


@pytest.fixture
def users_database(data_dir: Path) -> Iterator[Engine]:
    """The user's own embedded database, migrated, with jobs in it: leftovers of another
    demo run (h5repack, ready and initialized), and jobs of another type (ready, and
    processed with unpublished outbox rows)."""
    engine = create_joblife_engine(embedded_database_url(data_dir / "postgres"))
    try:
        migrate.upgrade(engine)
        with Session(engine, expire_on_commit=False) as session:
            leftovers = [
                H5RepackJob(input_product_id=name, file_name=name)
                for name in ("recording_old-run_00.h5", "recording_old-run_01.h5")
            ]
            session.add_all(leftovers)
            session.commit()
            move_to(session, [leftovers[0].id], S.READY)
            ready = [job.id for job in make_jobs(session, 2, prefix="OTHER")]
            move_to(session, ready, S.READY)
            processed_jobs(session, 1, prefix="SENT")
        yield engine
    finally:
        engine.dispose()


def test_a_demo_run_leaves_the_jobs_of_the_user_s_database_alone(
    data_dir: Path, users_database: Engine
):
    before = snapshot(users_database)
    assert len(before["jobs"]) == 5 and len(before["outbox"]) == 2

    result = demo("--jobs-per-type", "1", env=user_env(data_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every demo job is done" in result.stdout

    assert snapshot(users_database) == before
    # The demo's jobs are in its own database: this run's, and nothing else.
    env, _ = printed_command(result.stdout, "status")
    with psycopg2.connect(env["JOBLIFE_DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT job_type, input_product_id, status FROM jobs ORDER BY job_type")
        jobs = cur.fetchall()
    assert [job_type for job_type, _, _ in jobs] == ["h5repack", "image_ingest", "tile_series"]
    run_id = re.search(r"joblife demo (\S+):", result.stdout).group(1)  # type: ignore[union-attr]
    assert all(run_id.rsplit("-", 1)[-1][:4].upper() in product.upper() for _, product, _ in jobs)
    assert {status for _, _, status in jobs} == {int(S.DONE)}


@pytest.fixture
def configured(joblife_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A configured database_url (this test's database), the data dir the test's own."""
    monkeypatch.setenv("JOBLIFE_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield joblife_env
    get_settings.cache_clear()


def test_a_configured_database_is_refused_without_the_flag(
    configured: str, engine: Engine, session: Session, tmp_path: Path
):
    ready = [job.id for job in make_jobs(session, 1, prefix="THEIRS")]
    move_to(session, ready, S.READY)
    before = snapshot(engine)

    result = CliRunner().invoke(app, ["demo", "--jobs-per-type", "1"])

    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: database_url is configured")
    assert "every job of that database" in line and "--allow-configured-database" in line
    assert snapshot(engine) == before
    assert not (tmp_path / "data" / "storage").exists()  # no input written either
    help_text = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"}).stdout
    assert "--allow-configured-database" in help_text and "joblife_demo" in help_text


def test_the_flag_runs_the_demo_in_the_configured_database(
    configured: str, engine: Engine, tmp_path: Path
):
    env = user_env(tmp_path / "data", JOBLIFE_DATABASE_URL=configured)
    result = demo("--jobs-per-type", "1", "--allow-configured-database", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the configured database (--allow-configured-database" in result.stdout
    # No database of its own to point at: the printed commands carry no URL.
    env_printed, _ = printed_command(result.stdout, "status")
    assert "JOBLIFE_DATABASE_URL" not in env_printed
    with engine.connect() as conn:
        done = conn.execute(
            text("SELECT count(*) FROM jobs WHERE status = :done"), {"done": int(S.DONE)}
        ).scalar()
    assert done == 3


def test_an_interrupted_demo_says_what_it_left_and_how_to_finish_or_clean_it(data_dir: Path):
    process = subprocess.Popen(
        [*JOBLIFE, "demo", "--jobs-per-type", "3"],
        env=user_env(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        head = [process.stdout.readline() for _ in range(2)]
        assert head[1].startswith("generated 9 input products"), head
        demo_url = f"postgresql://postgres@/joblife_demo?host={data_dir / 'postgres'}"
        outbox: list[Any] = []

        def hold_the_outbox() -> bool:
            """Once the demo's database is migrated, lock its outbox against writes: no
            job can reach processed, so the demo cannot end before it is interrupted."""
            assert process.poll() is None, "the demo ended before it was interrupted"
            try:
                conn = psycopg2.connect(demo_url)
            except psycopg2.Error:  # its database not made yet
                return False
            try:
                with conn.cursor() as cur:
                    cur.execute("LOCK TABLE publications IN EXCLUSIVE MODE")
            except psycopg2.Error:  # not migrated yet
                conn.close()
                return False
            outbox.append(conn)
            return True

        def demo_jobs() -> int:  # interrupted once its services made jobs, not at a time
            assert process.poll() is None, "the demo ended before it was interrupted"
            with psycopg2.connect(demo_url) as conn, conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM jobs")
                return cur.fetchone()[0]

        wait_for(hold_the_outbox, timeout=60, message="the demo to migrate its database")
        wait_for(demo_jobs, timeout=60, message="the demo to create its jobs")
        process.send_signal(signal.SIGINT)
        outbox.pop().close()  # its workers may go on while the demo stops
        rest, errors = process.communicate(timeout=60)
    finally:
        for conn in outbox:
            conn.close()
        if process.poll() is None:
            process.kill()
    out = "".join(head) + rest
    assert process.returncode == 130, out + errors
    found = re.search(r"demo interrupted after [\d.]+ s: (\d+) of its 9 jobs are in the demo", out)
    assert found is not None, out
    # How to finish: joblife run, with the demo's database and its run's inputs.
    env, args = printed_command(out, "run")
    assert args == ["run"]
    assert env["JOBLIFE_DATABASE_URL"].startswith("postgresql://postgres@/joblife_demo?host=")
    run_id = head[0].split()[2].rstrip(":")
    assert env["JOBLIFE_TILE_SERIES_INPUT_PREFIX"] == f"demo/{run_id}/tile_series"
    assert "to clean up: the next `joblife demo` starts over" in out
    # The count it reports is the demo database's (the services stopped with the demo).
    with psycopg2.connect(env["JOBLIFE_DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM jobs")
        assert cur.fetchone() == (int(found.group(1)),)
