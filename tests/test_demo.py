"""``joblife demo`` (issue 7) as a user runs it: a subprocess on the embedded defaults
(embedded PostgreSQL in a temp data dir, local executor, local storage, the spool), run
twice; every demo job ends done and the database is left for ``joblife status``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from joblife.db.embedded import embedded_database_url, stop_embedded_server

JOBLIFE = [sys.executable, "-m", "joblife.cli.main"]


def demo_env(data_dir: Path) -> dict[str, str]:
    """The environment of a new user: no JOBLIFE_* setting but the data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBLIFE_")}
    env["JOBLIFE_DATA_DIR"] = str(data_dir)
    env["JOBLIFE_CONFIG"] = str(data_dir / "no-config.toml")
    return env


def run_joblife(*args: str, data_dir: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*JOBLIFE, *args],
        env=demo_env(data_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def data_dir(server_tmp_path: Path) -> Iterator[Path]:
    directory = server_tmp_path / "data"
    yield directory
    stop_embedded_server(directory / "postgres")


def test_demo_runs_every_job_to_done_twice_and_leaves_the_database(data_dir: Path):
    first = run_joblife(
        "demo", "--data-dir", str(data_dir), "--jobs-per-type", "2", data_dir=data_dir
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "every demo job is done" in first.stdout
    for job_type in ("h5repack", "image_ingest", "tile_series"):
        assert job_type in first.stdout
    assert "step durations" in first.stdout and "timeliness" in first.stdout

    second = run_joblife("demo", "--data-dir", str(data_dir), data_dir=data_dir)
    assert second.returncode == 0, second.stdout + second.stderr

    url = embedded_database_url(data_dir / "postgres").replace("+psycopg2", "")
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT job_type, status, count(*) FROM jobs GROUP BY 1, 2 ORDER BY 1")
        assert cur.fetchall() == [
            ("h5repack", 12, 5),
            ("image_ingest", 12, 5),
            ("tile_series", 12, 5),
        ]
        cur.execute("SELECT count(*) FROM publications WHERE published_at IS NULL")
        assert cur.fetchone() == (0,)
        cur.execute("SELECT count(DISTINCT input_product_id) FROM jobs")
        assert cur.fetchone() == (15,)
    spool = data_dir / "publication-spool" / "publications.jsonl"
    messages = [json.loads(line) for line in spool.read_text().splitlines()]
    assert len({m["message_id"] for m in messages}) == 15

    status = run_joblife("status", "--json", data_dir=data_dir)
    assert status.returncode == 0, status.stderr
    assert "done" in status.stdout
    show = run_joblife("jobs", "show", "1", data_dir=data_dir)
    assert show.returncode == 0, show.stderr
    assert "h5repack" in show.stdout
