"""``joblife health`` against real services: every configured service answers (exit 0);
a service that is down (a closed port, a missing socket, an unwritable storage) makes the
command fail cleanly: exit 1, its line FAIL, one ``error:`` line naming it on stderr, no
password anywhere."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from joblife.cli.main import app
from joblife.config import get_settings
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner, Result

from tests.support.containers import ContainerEngine
from tests.support.s3 import S3Bucket


@pytest.fixture(autouse=True)
def _isolated(joblife_env: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This test's database, data dir and no other service unless the test names it."""
    isolate_health(tmp_path, monkeypatch)
    yield
    get_settings.cache_clear()


def isolate_health(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """For ``joblife health`` in a test: no service configured but the database (the test
    sets the one it checks), a data dir of the test's own, short timeouts, no colours."""
    for name in (
        "JOBLIFE_AMQP_URL",
        "JOBLIFE_NOMAD_ADDR",
        "JOBLIFE_STORAGE_URL",
        "JOBLIFE_CONTAINER_ENGINE_URL",
        "DOCKER_HOST",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JOBLIFE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JOBLIFE_HEALTH_TIMEOUT_SECONDS", "3")
    monkeypatch.setenv("NO_COLOR", "1")
    get_settings.cache_clear()


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def health(*args: str) -> Result:
    get_settings.cache_clear()
    return CliRunner().invoke(app, ["health", *args])


def lines(result: Result) -> dict[str, str]:
    return {line.split()[1]: line for line in result.stdout.splitlines() if line.strip()}


def assert_fails_on(result: Result, service: str, *absent: str) -> str:
    assert result.exit_code == 1, result.output
    assert lines(result)[service].startswith("FAIL")
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"error: {service} unhealthy: ")
    assert "Traceback" not in result.output
    for text_ in absent:
        assert text_ not in result.output
    return errors[0]


def test_everything_configured_answers(
    amqp_url: str,
    s3_bucket: S3Bucket,
    container_engine: ContainerEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOBLIFE_AMQP_URL", amqp_url)
    monkeypatch.setenv("JOBLIFE_STORAGE_URL", f"s3://{s3_bucket.name}/health")
    monkeypatch.setenv("JOBLIFE_S3_ENDPOINT_URL", s3_bucket.endpoint)
    monkeypatch.setenv("JOBLIFE_CONTAINER_ENGINE_URL", container_engine.base_url)
    result = health()
    assert result.exit_code == 0, result.output
    found = lines(result)
    for name in ("database", "broker", "container_engine", "storage"):
        assert found[name].startswith("ok"), result.stdout
    assert found["nomad"].startswith("skip")
    assert "migrated" in found["database"]
    # The probe object is gone again.
    assert s3_bucket.list_keys() == []
    password = make_url(amqp_url).password
    if password:
        assert f":{password}@" not in result.output


def test_nomad_leader_through_the_api_double(nomad_double: Any, monkeypatch) -> None:
    monkeypatch.setenv("JOBLIFE_NOMAD_ADDR", nomad_double.address)
    result = health("--check", "nomad", "--json")
    assert result.exit_code == 0, result.output
    (check,) = json.loads(result.stdout)["checks"]
    assert check["state"] == "ok" and "leader" in check["detail"]


@pytest.mark.parametrize(
    ("service", "variable", "value"),
    [
        ("broker", "JOBLIFE_AMQP_URL", "amqp://joblife:s3cr3t-pw@127.0.0.1:{port}/%2F"),
        ("nomad", "JOBLIFE_NOMAD_ADDR", "http://127.0.0.1:{port}"),
        ("container_engine", "JOBLIFE_CONTAINER_ENGINE_URL", "tcp://127.0.0.1:{port}"),
    ],
)
def test_a_service_on_a_closed_port_fails_cleanly(
    service: str, variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value.format(port=closed_port()))
    result = health()
    line = assert_fails_on(result, service, "s3cr3t-pw")
    assert "refused" in line.lower() or "connect" in line.lower(), line
    # The other checks still ran and answered.
    assert lines(result)["database"].startswith("ok")
    assert lines(result)["storage"].startswith("ok")


def test_database_down_or_not_migrated(
    admin_engine: Engine, pg_admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = make_url(pg_admin_url).set(port=closed_port(), password="db-s3cr3t")
    monkeypatch.setenv("JOBLIFE_DATABASE_URL", down.render_as_string(hide_password=False))
    assert_fails_on(health("--check", "database"), "database", "db-s3cr3t")

    name = "jl_health_empty_" + str(closed_port())
    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        empty = make_url(pg_admin_url).set(database=name)
        monkeypatch.setenv("JOBLIFE_DATABASE_URL", empty.render_as_string(hide_password=False))
        line = assert_fails_on(health("-c", "database"), "database")
        assert "not migrated" in line and "joblife db upgrade" in line
    finally:
        with admin_engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_unwritable_storage_fails(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("JOBLIFE_STORAGE_URL", (blocker / "storage").as_uri())
    assert_fails_on(health("-c", "storage"), "storage")


def test_unknown_check_is_a_usage_error() -> None:
    result = health("--check", "kafka")
    assert result.exit_code == 2
    msg = " ".join(result.stderr.replace("│", " ").split())
    assert "'kafka' is not one of" in msg
