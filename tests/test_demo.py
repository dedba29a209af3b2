"""``joblife demo`` (issue 7) as a user runs it: a subprocess on the embedded defaults
(embedded PostgreSQL in a temp data dir, local executor, local storage, the spool), run
twice; every demo job ends done, in the demo's own database (issue 17: emptied at each
run), which the demo's printed commands look at. ``joblife status`` on the fresh data dir
says what to run first (issue 17, item 15)."""

from __future__ import annotations

import json
import os
import shlex
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


def run_joblife(
    *args: str, data_dir: Path, timeout: float = 120, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*JOBLIFE, *args],
        env={**demo_env(data_dir), **(extra or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def printed_command(stdout: str, command: str) -> tuple[dict[str, str], list[str]]:
    """The ``VAR=value`` assignments and the arguments of the printed ``joblife <command>``
    line (the demo's "next:" lines, shell-quoted)."""
    for line in stdout.splitlines():
        try:
            words = shlex.split(line.removeprefix("next:"), comments=True)
        except ValueError:  # prose ("the demo's jobs ..."), not a command
            continue
        if "joblife" not in words:
            continue
        at = words.index("joblife")
        if words[at + 1 : at + 1 + len(command.split())] == command.split():
            assignments = dict(word.split("=", 1) for word in words[:at])
            return assignments, words[at + 1 :]
    raise AssertionError(f"no `joblife {command}` line in:\n{stdout}")


@pytest.fixture
def data_dir(server_tmp_path: Path) -> Iterator[Path]:
    directory = server_tmp_path / "data"
    yield directory
    stop_embedded_server(directory / "postgres")


def test_demo_runs_every_job_to_done_twice_and_leaves_its_database(data_dir: Path):
    # A fresh data dir: status starts the embedded server, and says what to run first.
    fresh = run_joblife("status", data_dir=data_dir)
    assert fresh.returncode == 1, fresh.stdout + fresh.stderr
    assert "not migrated" in fresh.stderr
    for hint in ("joblife db upgrade", "joblife demo", "joblife db stop"):
        assert hint in fresh.stderr, fresh.stderr

    first = run_joblife(
        "demo", "--data-dir", str(data_dir), "--jobs-per-type", "2", data_dir=data_dir
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "every demo job is done" in first.stdout
    for job_type in ("h5repack", "image_ingest", "tile_series"):
        assert job_type in first.stdout
    assert "step durations" in first.stdout and "timeliness" in first.stdout
    assert "joblife db stop" in first.stdout

    second = run_joblife("demo", "--data-dir", str(data_dir), data_dir=data_dir)
    assert second.returncode == 0, second.stdout + second.stderr

    # The printed commands name the demo's own database, on the embedded server.
    env, _ = printed_command(second.stdout, "status")
    assert env["JOBLIFE_DATA_DIR"] == str(data_dir.resolve())
    demo_url = env["JOBLIFE_DATABASE_URL"]
    assert "/joblife_demo?host=" in demo_url
    for command in ("jobs show", "web"):
        assert printed_command(second.stdout, command)[0] == env

    # Only the second run's jobs: the database is emptied at each run.
    with psycopg2.connect(demo_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT job_type, status, count(*) FROM jobs GROUP BY 1, 2 ORDER BY 1")
        assert cur.fetchall() == [
            ("h5repack", 12, 3),
            ("image_ingest", 12, 3),
            ("tile_series", 12, 3),
        ]
        cur.execute("SELECT count(*) FROM publications WHERE published_at IS NULL")
        assert cur.fetchone() == (0,)
        cur.execute("SELECT count(DISTINCT input_product_id) FROM jobs")
        assert cur.fetchone() == (9,)
    # Nothing in the user's own embedded database.
    url = embedded_database_url(data_dir / "postgres").replace("+psycopg2", "")
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'jobs'")
        assert cur.fetchone() == (0,)
    spool = data_dir / "publication-spool" / "publications.jsonl"
    messages = [json.loads(line) for line in spool.read_text().splitlines()]
    assert len({m["message_id"] for m in messages}) == 6 + 9  # both runs' messages

    status = run_joblife("status", "--json", data_dir=data_dir, extra=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["totals"] == {"done": 9}
    _, show_args = printed_command(second.stdout, "jobs show")
    show = run_joblife(*show_args, data_dir=data_dir, extra=env)
    assert show.returncode == 0, show.stderr
    assert show_args == ["jobs", "show", "1"]  # the first job of a fresh database
    assert any(t in show.stdout for t in ("h5repack", "image_ingest", "tile_series"))

    # Without the prefix, status (on the user's empty database) points at the demo's.
    plain = run_joblife("status", data_dir=data_dir)
    assert plain.returncode == 1
    assert f"JOBLIFE_DATABASE_URL={shlex.quote(demo_url)} joblife status" in plain.stderr


def test_demo_web_serves_the_dashboard_on_the_demo_jobs(data_dir: Path) -> None:
    """`joblife demo --web`: the demo, then the dashboard on its own database; the admin
    created at first start logs in and sees the demo's jobs."""
    import re

    from tests.support.services import free_port
    from tests.support.web import login_over_http, wait_until_serving

    port = free_port()
    env = {**demo_env(data_dir), "JOBLIFE_WEB_PORT": str(port)}
    process = subprocess.Popen(
        [*JOBLIFE, "demo", "--data-dir", str(data_dir), "--jobs-per-type", "1", "--web"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines: list[str] = []
        for line in process.stdout:  # until the dashboard says where it listens
            lines.append(line)
            if "joblife web: http://" in line:
                break
        output = "".join(lines)
        assert "every demo job is done" in output, output
        password = re.search(r"with password: (\S+)", output).group(1)
        base = f"http://127.0.0.1:{port}"
        wait_until_serving(process, base)
        session, _ = login_over_http(base, "admin", password)
        jobs = session.get(f"{base}/jobs", timeout=10)
        assert jobs.status_code == 200
        rows = re.findall(
            r'data-testid="job-row-\d+">.*?<td class="num">.*?</td>\s*<td>([^<]+)</td>',
            jobs.text,
            re.DOTALL,
        )
        assert sorted(rows) == ["h5repack", "image_ingest", "tile_series"]
    finally:
        process.terminate()
        process.wait(timeout=30)
