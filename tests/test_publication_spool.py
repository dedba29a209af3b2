"""Publication without a broker (issue 7): the local spool. With ``amqp_url`` unset and
``publication_spool`` set, the relay appends each message as one fsynced JSON line and the
jobs go on to done exactly as with the broker; a spool that cannot be written loses
nothing and is retried."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pytest
from joblife.config import Settings
from joblife.errors import ConfigurationError
from joblife.lifecycle.common import ServiceContext
from joblife.lifecycle.orchestrator import Orchestrator
from joblife.model import Job, JobStatus
from joblife.publication.relay import PublicationService
from joblife.publication.spool import SpoolPublisher, spool_path
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.support.lifecycle import RecordingExecutor
from tests.test_publication import processed_jobs, rows, statuses

S = JobStatus


def _service(engine: Engine, spool: str | Path) -> PublicationService:
    settings = Settings(amqp_url=None, publication_spool=str(spool))
    return PublicationService(ServiceContext(engine, settings))


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_spool_path_forms(tmp_path: Path):
    assert spool_path(str(tmp_path)) == tmp_path / "publications.jsonl"
    assert spool_path(str(tmp_path / "out.jsonl")) == tmp_path / "out.jsonl"
    assert spool_path((tmp_path / "d").as_uri()) == tmp_path / "d" / "publications.jsonl"
    with pytest.raises(ConfigurationError, match="file:// URL"):
        spool_path("s3://bucket/spool")


def test_spooled_messages_take_the_jobs_to_done(session: Session, engine: Engine, tmp_path: Path):
    ids = processed_jobs(session, 3)
    settings = Settings(amqp_url=None, publication_spool=str(tmp_path / "spool"))
    orchestrator = Orchestrator(ServiceContext(engine, settings), RecordingExecutor(), ["publish"])
    try:
        cycle = orchestrator.run_once()
    finally:
        orchestrator.close()
    assert cycle.errors == {}
    assert cycle.results["publish"]["enabled"] is True
    assert cycle.results["publish"]["done"] == 3
    assert statuses(session, ids) == dict.fromkeys(ids, S.DONE)

    published = rows(session, ids)
    lines = _lines(tmp_path / "spool" / "publications.jsonl")
    assert len(lines) == len(published) == 6
    by_id = {line["message_id"]: line for line in lines}
    for row in published:
        line = by_id[row.message_id]
        assert row.published_at is not None
        assert line["body"] == row.body
        assert line["routing_key"] == row.routing_key == f"example.{row.product}"
        assert line["headers"]["job_id"] == row.job_id
    jobs = session.scalars(select(Job).where(Job.id.in_(ids))).all()
    assert all(j.output_publication_date is not None for j in jobs)

    # Nothing left: a second cycle writes nothing more.
    service = _service(engine, tmp_path / "spool")
    try:
        assert service.run_cycle().result.jobs == 0
    finally:
        service.close()
    assert len(_lines(tmp_path / "spool" / "publications.jsonl")) == 6


def test_an_unwritable_spool_loses_nothing_and_is_retried(
    session: Session, engine: Engine, tmp_path: Path
):
    ids = processed_jobs(session, 2)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spool directory should be")
    service = _service(engine, blocker / "spool")
    try:
        report = service.run_cycle()
        assert report.enabled and not report.connected
        assert "cannot open the publication spool" in (report.error or "")
        assert statuses(session, ids) == dict.fromkeys(ids, S.PROCESSED)
        assert all(r.published_at is None for r in rows(session, ids))
    finally:
        service.close()

    # A write that fails once the spool is open (a full disk: /dev/full answers ENOSPC):
    # the batch stays unconfirmed, nothing is recorded as published.
    publisher = SpoolPublisher(Path("/dev/full"), "x")
    service = PublicationService(
        ServiceContext(engine, Settings(amqp_url=None)), publisher=publisher
    )
    report = service.run_cycle()
    assert report.result.unconfirmed == 4 and report.result.done == 0
    assert statuses(session, ids) == dict.fromkeys(ids, S.START_PUBLICATION)
    assert not publisher.connected and "No space left" in (publisher.last_error or "")

    service = _service(engine, tmp_path / "spool")  # the spool works again
    try:
        service.run_cycle()
    finally:
        service.close()
    assert statuses(session, ids) == dict.fromkeys(ids, S.DONE)
    assert len(_lines(tmp_path / "spool" / "publications.jsonl")) == 4


def test_two_relays_on_one_spool_write_each_message_once(
    session: Session, engine: Engine, tmp_path: Path
):
    ids = processed_jobs(session, 40)
    settings = Settings(amqp_url=None, publication_spool=str(tmp_path), publication_batch_size=6)
    services = [PublicationService(ServiceContext(engine, settings)) for _ in range(2)]
    threads = [threading.Thread(target=s.run_cycle, kwargs={"max_batches": 0}) for s in services]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for service in services:
        service.close()
    assert statuses(session, ids) == dict.fromkeys(ids, S.DONE)
    counts = Counter(line["message_id"] for line in _lines(tmp_path / "publications.jsonl"))
    assert len(counts) == 80 and set(counts.values()) == {1}


def test_publish_command_relays_to_the_spool(
    session: Session, joblife_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from joblife.config import get_settings

    from tests.test_cli import run

    ids = processed_jobs(session, 2)
    monkeypatch.delenv("JOBLIFE_AMQP_URL", raising=False)
    monkeypatch.setenv("JOBLIFE_PUBLICATION_SPOOL", str(tmp_path / "spool"))
    get_settings.cache_clear()
    result = run("publish", "--once")
    assert result.exit_code == 0, result.output
    session.expire_all()
    assert statuses(session, ids) == dict.fromkeys(ids, S.DONE)
    assert len(_lines(tmp_path / "spool" / "publications.jsonl")) == 4
    listed = run("publications", "list")
    assert "messages go to the spool" in listed.stdout


def test_publish_once_exits_1_when_a_message_is_too_large(
    session: Session, joblife_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A message over product_message_max_bytes fails its job: a failure of the run, as a
    returned message is (the cron job that runs `publish --once` must see it)."""
    from joblife.config import get_settings

    from tests.test_cli import run

    big, small = processed_jobs(session, 2)
    row = next(r for r in rows(session, [big]) if r.product == "mask")
    row.body = {**row.body, "padding": "x" * 2000}
    session.commit()
    monkeypatch.delenv("JOBLIFE_AMQP_URL", raising=False)
    monkeypatch.setenv("JOBLIFE_PUBLICATION_SPOOL", str(tmp_path / "spool"))
    monkeypatch.setenv("JOBLIFE_PRODUCT_MESSAGE_MAX_BYTES", "1024")
    get_settings.cache_clear()
    result = run("publish", "--once", "--json")
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["too_large"] == 1
    assert statuses(session, [big, small]) == {big: S.INTERNAL_ERROR, small: S.DONE}
