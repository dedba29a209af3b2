"""Logging: text and JSON lines with the job fields, secrets redacted, and the CLI's set-up
(services at log_level, one-shot commands at warnings)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from joblife.config import Settings
from joblife.lifecycle.common import job_logger
from joblife.logs import command_log_level, redact, setup_logging
from joblife.model import JobStatus
from pydantic import SecretStr


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, Settings]]:
    """A log set-up writing to a buffer; the root logger is restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    settings = Settings(
        database_url=SecretStr("postgresql://svc:db-pa55word@db.example/jobs"),
        amqp_url=SecretStr("amqp://relay:mq-pa55word@mq.example/%2F"),
        nomad_token=SecretStr("0b7e6f3c-nomad-token"),
    )
    buffer = io.StringIO()
    yield buffer, settings
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_job_fields(captured: tuple[io.StringIO, Settings]) -> None:
    buffer, settings = captured
    setup_logging("INFO", "json", stream=buffer, settings=settings)
    log = job_logger("monitor")
    log.job(42, job_type="test", attempt=2, status=JobStatus.PROCESSING).warning(
        "heartbeat stale for %s s", 130
    )
    log.warning("job %s: dispatch failed: %s", 7, "no node")  # a service's existing style
    log.info("cycle done")
    first, second, third = (json.loads(line) for line in buffer.getvalue().splitlines())
    assert first["message"] == "heartbeat stale for 130 s"
    assert (first["job_id"], first["job_type"], first["attempt"], first["status"]) == (
        42,
        "test",
        2,
        "processing",
    )
    assert first["level"] == "WARNING" and first["logger"] == "joblife.monitor"
    assert second["job_id"] == 7 and "job_type" not in second
    assert not {"job_id", "job_type", "attempt", "status"} & set(third)


def test_text_lines_and_a_worker_context(captured: tuple[io.StringIO, Settings]) -> None:
    buffer, settings = captured
    setup_logging("INFO", "text", stream=buffer, settings=settings, context={"job_id": 9})
    logging.getLogger("joblife.worker").info("step done")
    job_logger("worker").job(9, attempt=1, status="started").info("claimed")
    first, second = buffer.getvalue().splitlines()
    assert "joblife.worker [job=9]: step done" in first
    assert "[job=9 attempt=1 status=started]: claimed" in second


def test_secrets_are_redacted_everywhere(captured: tuple[io.StringIO, Settings]) -> None:
    buffer, settings = captured
    setup_logging("INFO", "json", stream=buffer, settings=settings)
    log = logging.getLogger("joblife.test")
    log.error("connecting to %s", "postgresql://svc:db-pa55word@db.example/jobs")
    log.error("raw password db-pa55word and token 0b7e6f3c-nomad-token in a message")
    log.error("request failed: X-Nomad-Token: abc123secret, Authorization: Bearer eyJhbGciOi.x")
    try:
        raise RuntimeError("amqp://relay:mq-pa55word@mq.example/%2F refused")
    except RuntimeError:
        log.exception("publish failed")
    out = buffer.getvalue()
    for secret in ("db-pa55word", "mq-pa55word", "0b7e6f3c-nomad-token", "abc123secret", "eyJ"):
        assert secret not in out, out
    assert "postgresql://svc:***@db.example/jobs" in out
    assert "amqp://relay:***@mq.example" in out


def test_redact_keeps_what_is_not_secret() -> None:
    assert redact("http://nomad.example:4646/v1/jobs") == "http://nomad.example:4646/v1/jobs"
    assert redact("s3://bucket/prefix password=hunter22 x") == "s3://bucket/prefix password=*** x"


def test_command_levels() -> None:
    settings = Settings(log_level="INFO")
    assert command_log_level("run", False, settings) == "INFO"
    assert command_log_level("status", False, settings) == logging.WARNING
    assert command_log_level("status", True, settings) == logging.INFO
    assert command_log_level("status", False, Settings(log_level="ERROR")) == logging.ERROR
