"""Secrets at rest (issue 13, item 12): a credentialed or presigned source URL is shown
without its secret by every ``joblife`` output and log line; the files joblife writes are
private to its user (umask ``file_umask``, the spool 0600); the metrics endpoint listens on
127.0.0.1 unless told otherwise."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from joblife.cli.main import app
from joblife.config import Settings, get_settings
from joblife.db.embedded import stop_embedded_server
from joblife.db.status import set_job_status
from joblife.logs import setup_logging
from joblife.ops.metrics import start_metrics_server
from joblife.publication.spool import SpoolPublisher
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from typer.testing import CliRunner, Result

from tests.support.example_type import ExampleJob

PASSWORD = "pw-9f8e7d6c"
SIGNATURE = "4f1c9a7b2e0d5c3a9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d"
CREDENTIAL = "AKIAIOSFODNN7EXAMPLE"
SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLETOKEN"
SAS_SIGNATURE = "sv2fZ%2BexampleSAS%3D"
S3_SECRET = "s3-secret-kw72hq"
CREDENTIALED = f"http://reader:{PASSWORD}@products.example/in/a.h5"
PRESIGNED = (
    "https://bucket.s3.eu-west-1.amazonaws.com/in/b.h5?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    f"&X-Amz-Credential={CREDENTIAL}%2F20261201%2Feu-west-1%2Fs3%2Faws4_request"
    f"&X-Amz-Date=20261201T000000Z&X-Amz-Expires=3600&X-Amz-Security-Token={SESSION_TOKEN}"
    f"&X-Amz-SignedHeaders=host&X-Amz-Signature={SIGNATURE}"
)
SAS = f"https://acct.blob.core.windows.net/in/c.tif?sv=2022-11-02&sr=b&sp=r&sig={SAS_SIGNATURE}"
SECRETS = (PASSWORD, SIGNATURE, CREDENTIAL, SESSION_TOKEN, SAS_SIGNATURE, S3_SECRET)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} printed:\n{text}"


def run(*args: str) -> Result:
    """``joblife ARGS`` in-process."""
    return CliRunner().invoke(app, list(args))


# -- what joblife prints ----------------------------------------------------------------------


@pytest.fixture
def secret_jobs(
    joblife_env: str, session: Session, monkeypatch: pytest.MonkeyPatch
) -> dict[str, int]:
    """Jobs discovered at a credentialed, a presigned and an Azure SAS URL, each with a
    status message and details quoting its URL (and the configured S3 secret)."""
    monkeypatch.setenv("JOBLIFE_S3_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("COLUMNS", raising=False)
    get_settings.cache_clear()
    urls = {"credentialed": CREDENTIALED, "presigned": PRESIGNED, "sas": SAS}
    jobs = {
        name: ExampleJob(input_product_id=f"secret-{name}", input_path=url)
        for name, url in urls.items()
    }
    session.add_all(jobs.values())
    session.commit()
    for name, job in jobs.items():
        set_job_status(
            session,
            job.id,
            "ready",
            message=f"GET {urls[name]} failed (key {S3_SECRET} refused)",
            details={"url": urls[name], "log_tail": [f"fetching {urls[name]}"]},
        )
    session.commit()
    return {name: job.id for name, job in jobs.items()}


def test_jobs_show_hides_the_credentials_of_source_urls(secret_jobs: dict[str, int]) -> None:
    for name, job_id in secret_jobs.items():
        text = run("jobs", "show", str(job_id))
        assert text.exit_code == 0, text.output
        assert_no_secret(text.output)
        as_json = run("jobs", "show", str(job_id), "--json")
        assert as_json.exit_code == 0, as_json.output
        assert_no_secret(as_json.output)
        shown = json.loads(as_json.stdout)
        path = shown["job"]["input_path"]
        message = shown["timeline"][-1]["message"]
        # What names the object stays: scheme, host, path, the harmless parameters.
        if name == "credentialed":
            assert path == "http://reader:***@products.example/in/a.h5"
            assert "http://reader:***@products.example/in/a.h5" in text.output
        elif name == "presigned":
            assert path.startswith("https://bucket.s3.eu-west-1.amazonaws.com/in/b.h5?")
            for redacted in ("X-Amz-Credential=***", "X-Amz-Signature=***"):
                assert redacted in path
            assert "X-Amz-Security-Token=***" in path and "X-Amz-Expires=3600" in path
        else:
            assert path == SAS.replace(SAS_SIGNATURE, "***")
        assert message.startswith(f"GET {path} failed")
        assert shown["timeline"][-1]["details"]["url"] == path


def test_jobs_list_json_hides_the_credentials(secret_jobs: dict[str, int]) -> None:
    result = run("jobs", "list", "--json", "--limit", "0")
    assert result.exit_code == 0, result.output
    assert {row["id"] for row in json.loads(result.stdout)} >= set(secret_jobs.values())
    assert_no_secret(result.output)


def test_a_log_line_with_a_presigned_url_is_redacted() -> None:
    for log_format in ("text", "json"):
        buffer = io.StringIO()
        setup_logging("INFO", log_format, stream=buffer, settings=Settings())
        log = logging.getLogger("joblife.test.secrets")
        log.warning("fetching %s", PRESIGNED)
        log.warning("fetching %s and %s", CREDENTIALED, SAS)
        try:
            raise RuntimeError(f"403 Forbidden for url: {PRESIGNED}")
        except RuntimeError:
            log.exception("download failed")
        out = buffer.getvalue()
        assert_no_secret(out)
        assert "X-Amz-Signature=***" in out and "sig=***" in out, out
        assert "reader:***@products.example" in out


# -- files joblife writes ---------------------------------------------------------------------


def shared_entries(root: Path, skip: set[Path]) -> list[str]:
    """Every file or directory under ``root`` (``skip`` and what is under them excepted)
    that another user or the group may read, write or enter."""
    found = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(directory, d) not in skip]
        for name in [*dirs, *files]:
            path = Path(directory, name)
            mode = stat.S_IMODE(path.lstat().st_mode)
            if mode & 0o077:
                found.append(f"{oct(mode)} {path.relative_to(root)}")
    return found


@pytest.fixture
def demo_data_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "data"
    yield directory
    stop_embedded_server(directory / "postgres")


def test_a_demo_run_leaves_only_private_files(demo_data_dir: Path) -> None:
    """``joblife demo`` as a user runs it (the umask of the process, its forked workers, the
    local executor, file storage, the spool): nothing it creates is group/other readable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBLIFE_")}
    env.update(JOBLIFE_DATA_DIR=str(demo_data_dir), JOBLIFE_CONFIG=str(demo_data_dir / "none"))
    command = ["demo", "--data-dir", str(demo_data_dir), "--jobs-per-type", "1"]
    demo = subprocess.run(
        [sys.executable, "-m", "joblife.cli.main", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    # What must be there, and private.
    for made in ("local-executor", "storage", "work", "publication-spool/publications.jsonl"):
        assert (demo_data_dir / made).exists(), made
    assert any((demo_data_dir / "local-executor").glob("*.log"))
    assert any((demo_data_dir / "storage" / "joblife-logs").rglob("science.log"))
    # The embedded server's data dir is PostgreSQL's (0700, its own user).
    assert shared_entries(demo_data_dir, {demo_data_dir / "postgres"}) == []
    spool = demo_data_dir / "publication-spool" / "publications.jsonl"
    assert stat.S_IMODE(spool.stat().st_mode) == 0o600


def test_a_command_creates_private_dirs_and_restores_the_umask(
    joblife_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The umask is the command's: the spool directory ``publish --once`` makes is 0700,
    and the caller's umask is back once the command (run in-process) has returned."""
    spool_dir = tmp_path / "spool" / "here"
    monkeypatch.setenv("JOBLIFE_PUBLICATION_SPOOL", str(spool_dir))
    monkeypatch.delenv("JOBLIFE_AMQP_URL", raising=False)
    get_settings.cache_clear()
    before = os.umask(0o022)
    try:
        result = run("publish", "--once")
        assert result.exit_code == 0, result.output
        assert os.umask(0o022) == 0o022  # restored by the command
    finally:
        os.umask(before)
    for made in (tmp_path / "spool", spool_dir):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700, made
    assert stat.S_IMODE((spool_dir / "publications.jsonl").stat().st_mode) == 0o600


def test_file_umask_setting_is_octal() -> None:
    assert Settings().file_umask == 0o077
    assert Settings(file_umask="027").file_umask == 0o027
    assert Settings(file_umask="0o022").file_umask == 0o022
    assert Settings(file_umask=0o007).file_umask == 0o007


def test_the_spool_file_is_0600_even_if_it_existed(tmp_path: Path) -> None:
    before = os.umask(0o022)  # a loose umask: the spool's mode is its own
    try:
        fresh = SpoolPublisher(tmp_path / "new" / "publications.jsonl", "x")
        fresh.connect()
        fresh.close()
        existing = tmp_path / "old.jsonl"
        existing.write_text('{"message_id": "m1"}\n')
        existing.chmod(0o644)
        old = SpoolPublisher(existing, "x")
        old.connect()
        old.close()
    finally:
        os.umask(before)
    assert stat.S_IMODE(fresh.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(existing.stat().st_mode) == 0o600
    assert existing.read_text() == '{"message_id": "m1"}\n'  # appended to, never truncated


# -- the metrics endpoint ---------------------------------------------------------------------


def test_the_metrics_endpoint_listens_on_localhost_by_default(engine: Engine) -> None:
    settings = Settings()
    assert settings.metrics_address == "127.0.0.1"
    for server in (
        start_metrics_server(engine, 0, settings.metrics_address),
        start_metrics_server(engine, 0),
    ):
        try:
            assert server.address == "127.0.0.1"
            assert server._server.server_address[0] == "127.0.0.1"
        finally:
            server.stop()
