"""With nothing configured, jobs finish (issue 17, item 3): without a broker and without
``publication_spool``, the relay appends the messages to the spool in the data directory
and the jobs go on to done; ``publication_spool = none`` keeps them in the outbox.
``joblife status`` and ``joblife health`` say where the messages go."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from joblife.cli.main import app
from joblife.config import Settings, get_settings
from joblife.lifecycle.common import ServiceContext
from joblife.model import JobStatus
from joblife.publication.relay import PublicationService
from joblife.publication.spool import effective_spool, publication_target, spool_problem
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from typer.testing import CliRunner, Result

from tests.test_publication import processed_jobs, rows, statuses

S = JobStatus


def nothing_configured(data_dir: Path, **values: str) -> Settings:
    """Settings with no broker and, unless ``values`` set one, no spool."""
    values = {"publication_spool": None, **values}  # type: ignore[dict-item]
    return Settings(amqp_url=None, data_dir=data_dir, **values)  # type: ignore[arg-type]


def test_with_nothing_configured_the_relay_spools_in_the_data_dir_and_jobs_end_done(
    session: Session, engine: Engine, tmp_path: Path
):
    ids = processed_jobs(session, 2)
    settings = nothing_configured(tmp_path / "data")
    service = PublicationService(ServiceContext(engine, settings))
    try:
        assert service.enabled
        report = service.run_cycle()
    finally:
        service.close()
    assert report.error is None and report.result.done == 2
    assert statuses(session, ids) == dict.fromkeys(ids, S.DONE)
    spool = tmp_path / "data" / "publication-spool" / "publications.jsonl"
    lines = [json.loads(line) for line in spool.read_text().splitlines()]
    assert sorted(line["message_id"] for line in lines) == sorted(
        r.message_id for r in rows(session, ids)
    )


def test_publication_spool_none_keeps_the_messages_in_the_outbox(
    session: Session, engine: Engine, tmp_path: Path
):
    ids = processed_jobs(session, 1)
    settings = nothing_configured(tmp_path / "data", publication_spool="none")
    service = PublicationService(ServiceContext(engine, settings))
    try:
        assert not service.enabled
        assert service.run_cycle().result.jobs == 0
    finally:
        service.close()
    assert statuses(session, ids) == {ids[0]: S.PROCESSED}
    assert not (tmp_path / "data" / "publication-spool").exists()


def test_effective_spool(tmp_path: Path):
    default = tmp_path / "publication-spool" / "publications.jsonl"
    assert effective_spool(nothing_configured(tmp_path)) == default
    assert effective_spool(nothing_configured(tmp_path, publication_spool="")) == default
    assert effective_spool(nothing_configured(tmp_path, publication_spool=" None ")) is None
    other = tmp_path / "elsewhere.jsonl"
    assert effective_spool(nothing_configured(tmp_path, publication_spool=str(other))) == other
    broker = Settings(amqp_url=SecretStr("amqp://u:pw-s3cr3t@mq/%2F"), data_dir=tmp_path)
    assert effective_spool(broker) is None
    assert publication_target(broker) == (
        "go to the broker amqp://u:***@mq/%2F (exchange joblife.products)"
    )


def test_spool_problem(tmp_path: Path):
    assert spool_problem(tmp_path / "new" / "dirs" / "publications.jsonl") is None
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    problem = spool_problem(blocker / "spool" / "publications.jsonl")
    assert problem == f"{blocker} is not a directory"
    assert spool_problem(tmp_path) == f"{tmp_path} is not a file"


@pytest.fixture
def cli_env(joblife_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This test's database, a data dir of its own, no broker and no spool configured."""
    for name in ("JOBLIFE_AMQP_URL", "JOBLIFE_PUBLICATION_SPOOL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JOBLIFE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JOBLIFE_HEALTH_TIMEOUT_SECONDS", "3")
    get_settings.cache_clear()
    yield tmp_path / "data"
    get_settings.cache_clear()


def invoke(*args: str) -> Result:
    get_settings.cache_clear()
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})


def test_status_and_health_say_where_the_messages_go(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
):
    spool = cli_env / "publication-spool" / "publications.jsonl"
    status = invoke("status")
    assert status.exit_code == 0, status.output
    assert f"product messages go to the spool {spool} (no broker configured)" in status.stdout
    health = invoke("health", "--check", "broker", "--json")
    assert health.exit_code == 0, health.output
    [check] = json.loads(health.stdout)["checks"]
    assert (check["state"], check["target"]) == ("ok", str(spool))
    assert "no broker configured" in check["detail"]

    monkeypatch.setenv("JOBLIFE_PUBLICATION_SPOOL", "none")
    status = invoke("status")
    assert "product messages stay in the outbox: no broker, publication_spool = none" in (
        status.stdout
    )
    [check] = json.loads(invoke("health", "-c", "broker", "--json").stdout)["checks"]
    assert check["state"] == "skip" and "stay in the outbox" in check["detail"]

    blocker = cli_env.parent / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("JOBLIFE_PUBLICATION_SPOOL", str(blocker / "spool"))
    health = invoke("health", "-c", "broker", "--json")
    assert health.exit_code == 1
    [check] = json.loads(health.stdout)["checks"]
    assert check["state"] == "FAIL" and "is not a directory" in check["detail"]

    monkeypatch.setenv("JOBLIFE_AMQP_URL", "amqp://relay:pw-s3cr3t@mq.example/%2F")
    status = invoke("status")
    assert "product messages go to the broker amqp://relay:***@mq.example/%2F" in status.stdout
    assert "pw-s3cr3t" not in status.output
