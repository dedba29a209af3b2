"""Logging: text and JSON lines with the job fields, secrets redacted, and the CLI's set-up
(services at log_level, one-shot commands at warnings); then the lines real services and a
real worker write about a job, parsed as a log collector would."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from joblife.config import Settings, get_settings
from joblife.executors.local import LocalExecutor
from joblife.jobtypes.test_job import TestJob
from joblife.lifecycle.common import job_logger, utc_now
from joblife.logs import command_log_level, describe_jobs, redact, setup_logging
from joblife.model import JobStatus, Publication
from joblife.publication.broker import Delivery, FeedbackMessage, Outcome, SentBatch, Settlement
from joblife.publication.feedback import apply_feedback
from joblife.publication.relay import PublicationService
from joblife.worker.runner import EXIT_DO_NOT_RELAUNCH, run_worker_process
from pydantic import SecretStr
from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url

from tests.support.lifecycle import Lifecycle, RecordingExecutor

S = JobStatus
FIELDS = ("job_id", "job_type", "attempt", "status")
#: The password given to the database URL when the test server's has none.
DB_PASSWORD = "db-s3cret-pa55word"


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
    context: dict[str, Any] = {"job_id": 9}
    setup_logging("INFO", "text", stream=buffer, settings=settings, context=context)
    logging.getLogger("joblife.worker").info("step done")
    context.update(attempt=1, status=JobStatus.PROCESSING)  # the worker moves on: kept, not copied
    logging.getLogger("some.library").info("retrying")
    job_logger("worker").job(9, attempt=1, status="started").info("claimed")
    first, second, third = buffer.getvalue().splitlines()
    assert "joblife.worker [job=9]: step done" in first
    assert "some.library [job=9 attempt=1 status=processing]: retrying" in second
    assert "[job=9 attempt=1 status=started]: claimed" in third


def test_summary_lines_about_several_jobs(captured: tuple[io.StringIO, Settings]) -> None:
    buffer, settings = captured
    setup_logging("INFO", "json", stream=buffer, settings=settings)
    log = job_logger("configuration")
    ids = list(range(100, 125))
    log.jobs(ids, job_type="test", status=JobStatus.READY).info(
        "test: %s now ready", describe_jobs(ids)
    )
    log.jobs([7], job_type="test").info("test: %s now ready", describe_jobs([7]))
    log.warning("jobs %s: %s", [3, 4], "configure_batch_jobs failed")  # the guessed fallback
    many, one, guessed = (json.loads(line) for line in buffer.getvalue().splitlines())
    assert many["job_ids"] == ids and "job_id" not in many
    assert (many["job_type"], many["status"]) == ("test", "ready")
    assert (
        many["message"]
        == "test: jobs 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, ... (+15 more) now ready"
    )
    assert (one["job_ids"], one["job_id"], one["message"]) == ([7], 7, "test: job 7 now ready")
    assert guessed["job_ids"] == [3, 4] and "job_id" not in guessed


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


#: Texts each pattern of redact() would retry from many starts: quadratic if a repeat that
#: follows a start were unbounded (a run of scheme letters, a long parameter name...).
ADVERSARIAL = [
    ("a.", "x://"),  # a scheme of 64 KiB (the old one: 2 s)
    ("a+", "://"),
    ("b", "http://a:"),
    ("http://a:", ""),  # URL heads with no "@"
    ("token", "=&"),  # one parameter name of 64 KiB (the old one: 3.6 s)
    ("&token", "="),
    ("?x", "="),
    ("password", ""),  # keywords with no "="
    ("password ", ":"),
    (" ", "password:"),
    (" ", "bearer"),
    ("bearer ", ""),
]


def _seconds(text: str) -> float:
    """The fastest of three redactions of ``text`` (the least disturbed by other work)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        redact(text)
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize(("unit", "prefix"), ADVERSARIAL)
def test_redaction_is_linear_in_the_text(unit: str, prefix: str) -> None:
    """Four times the text takes about four times as long, not sixteen (quadratic): the
    ratio leaves room for noise (both times are minima of three) and none for a square."""
    size = 16 * 1024  # and 64 KiB

    def text(n: int) -> str:
        return prefix + (unit * (n // len(unit) + 1))[:n] + prefix

    small, large = _seconds(text(size)), _seconds(text(4 * size))
    assert large < 8 * small + 0.005, (unit, prefix, small, large)


def test_the_bounded_patterns_still_redact_real_names() -> None:
    """Long real parameter names and schemes are within the bounds; one past them still
    loses its value when it is a URL password (the match starts inside the scheme)."""
    name = "X-Amz-Security-Token-With-A-Realistically-Long-Vendor-Prefix-Name"
    assert redact(f"https://h/k?{name}=secret1&b=2") == f"https://h/k?{name}=***&b=2"
    assert redact("&X-Goog-Credential=c/2&sig=s") == "&X-Goog-Credential=***&sig=***"
    long_scheme = "vendor+" + "x" * 60 + "://u:hunter22@h/p"
    assert redact(long_scheme) == long_scheme.replace("hunter22", "***")
    assert redact("xpostgresql+psycopg://u:pw12@h") == "xpostgresql+psycopg://u:***@h"


def test_command_levels() -> None:
    settings = Settings(log_level="INFO")
    assert command_log_level("run", False, settings) == "INFO"
    assert command_log_level("status", False, settings) == logging.WARNING
    assert command_log_level("status", True, settings) == logging.INFO
    assert command_log_level("status", False, Settings(log_level="ERROR")) == logging.ERROR


# == the lines real services and a real worker write ===========================================
def with_password(url: str) -> tuple[str, str]:
    """``url`` with a password, and that password: the server's own if it checks them, else
    one the (trusting) test server ignores."""
    parsed = make_url(url)
    if parsed.password:
        return url, str(parsed.password)
    return parsed.set(password=DB_PASSWORD).render_as_string(hide_password=False), DB_PASSWORD


class JsonLines:
    """What the processes of a test wrote to stderr, as a log collector parses it."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.all: list[dict[str, Any]] = []

    def take(self) -> list[dict[str, Any]]:
        """The lines written since the last call (every one must be a JSON object)."""
        lines = [json.loads(line) for line in self.capsys.readouterr().err.splitlines() if line]
        self.all += lines
        return lines


@pytest.fixture
def logged(
    engine: Engine,
    joblife_env: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[tuple[Lifecycle, JsonLines, str]]:
    """A life-cycle world whose services and worker log JSON lines to stderr at DEBUG, with
    a password in the database URL; yields it, the lines and the password. The root logger
    is restored afterwards."""
    url, password = with_password(joblife_env)
    data_dir = tmp_path / "data"
    for name, value in {
        "JOBLIFE_DATABASE_URL": url,
        "JOBLIFE_DATA_DIR": str(data_dir),
        "JOBLIFE_LOG_FORMAT": "json",
        "JOBLIFE_LOG_LEVEL": "DEBUG",
        "JOBLIFE_HEARTBEAT_INTERVAL_SECONDS": "60",  # no beat during the in-process worker
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    lc = Lifecycle(engine, get_settings(), LocalExecutor(tmp_path / "exec", default_slots=1))
    setup_logging(settings=lc.settings)  # the services' process
    yield lc, JsonLines(capsys), password
    root.handlers[:] = handlers
    root.setLevel(level)
    get_settings.cache_clear()


def about(lines: Sequence[dict[str, Any]], job_id: int) -> list[dict[str, Any]]:
    """The lines about job ``job_id``: its own and the summaries naming it."""
    return [
        line for line in lines if line.get("job_id") == job_id or job_id in line.get("job_ids", ())
    ]


def job_fields(line: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(line.get(name) for name in FIELDS)


def assert_no_secret(lines: Sequence[dict[str, Any]], password: str) -> None:
    """The password appears in no line's text (message, exception)."""
    for line in lines:
        text = line["message"] + line.get("exception", "")
        assert password not in text, line


class UnroutablePublisher:
    """A broker on which no queue is bound: every message comes back unroutable; one
    consumer's failure report waits in the feedback queue once set."""

    connected = True
    last_error: str | None = None

    def __init__(self) -> None:
        self.feedback: list[FeedbackMessage] = []

    def connect(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, messages: Sequence[Any]) -> SentBatch:
        return SentBatch([Delivery(Outcome.RETURNED, utc_now(), "312 NO_ROUTE") for _ in messages])

    def wait_confirmed(self, batch: SentBatch, timeout: float) -> list[Delivery]:
        return batch.deliveries

    def wait(self, seconds: float) -> None:
        pass

    def take_feedback(self) -> list[FeedbackMessage]:
        taken, self.feedback = self.feedback, []
        return taken

    def settle(self, message: FeedbackMessage, settlement: Settlement) -> None:
        pass


def logging_hooks(monkeypatch: pytest.MonkeyPatch, secret_url: str, password: str) -> None:
    """The test type's worker hooks log as a partner's might: through ``context.log``, a
    library's logger and a thread of their own, the database URL and password included."""

    def wrap(name: str) -> None:
        original: Callable[..., Any] = getattr(TestJob, name)

        def hook(self: TestJob, context: Any, *args: Any) -> Any:
            context.log.info("%s of %s", name, self.input_product_id)
            if name == "job_processing":
                logging.getLogger("partner.lib").warning("connecting to %s", secret_url)
                worker = threading.Thread(
                    target=logging.getLogger("partner.pool").info,
                    args=("raw password %s, password=%s", password, password),
                )
                worker.start()
                worker.join()
            return original(self, context, *args)

        monkeypatch.setattr(TestJob, name, hook)

    for name in ("job_pre_processing", "job_processing", "job_post_processing"):
        wrap(name)


def test_a_job_s_life_in_the_logs(
    logged: tuple[Lifecycle, JsonLines, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creation, configuration, the worker process and publication log JSON lines about a
    job with its id, type, attempt and status (the one it is in or moves to); summaries
    list their jobs in ``job_ids``; the database password appears nowhere."""
    lc, lines, password = logged
    secret_url = lc.settings.database_url.get_secret_value()  # type: ignore[union-attr]
    now = utc_now()
    for index, (product, fields) in enumerate(
        {
            "GOOD": {"publish": True},
            "ALSO": {},
            "WAIT": {"depends_on_product": "NEVER"},
            "BAD": {},
        }.items()
    ):
        lc.product(product, now - timedelta(minutes=10 - index), **fields)

    # -- creation: one summary line for the type ------------------------------------------
    assert lc.create(now)["test"].inserted == 4
    [created] = [line for line in lines.take() if line["logger"] == "joblife.creation"]
    assert created["job_type"] == "test" and "job_id" not in created and "job_ids" not in created
    ids = {p: lc.job_by_product(p).id for p in ("GOOD", "ALSO", "WAIT", "BAD")}

    # -- configuration: a summary per outcome, a line per failed job ------------------------
    configure_single_job = TestJob.configure_single_job

    def configure(self: TestJob, session: Any) -> JobStatus:
        if self.input_product_id == "BAD":
            raise RuntimeError(f"catalogue at {secret_url} refused")
        return configure_single_job(self, session)

    monkeypatch.setattr(TestJob, "configure_single_job", configure)
    assert lc.configure(now)["test"].examined == 4
    configured = [line for line in lines.take() if line["logger"] == "joblife.configuration"]
    [ready] = [line for line in configured if line.get("status") == "ready"]
    assert sorted(ready["job_ids"]) == sorted([ids["GOOD"], ids["ALSO"]])
    assert ready["job_type"] == "test" and "job_id" not in ready
    [waiting] = about(configured, ids["WAIT"])
    assert (waiting["job_ids"], waiting["job_id"], waiting["status"]) == (
        [ids["WAIT"]],
        ids["WAIT"],
        "configured",
    )
    [failed] = about(configured, ids["BAD"])
    assert job_fields(failed) == (ids["BAD"], "test", 0, "internal_error")
    assert failed["level"] == "WARNING" and "refused" in failed["message"]

    # -- the worker process: every line carries the job's current fields ----------------------
    lc.walk([ids["ALSO"]], [S.CANCELLED])  # one job to run
    assert lc.dispatch(RecordingExecutor()).dispatched == 1
    lines.take()
    logging_hooks(monkeypatch, secret_url, password)
    assert run_worker_process(ids["GOOD"], 1) == EXIT_DO_NOT_RELAUNCH
    assert lc.status(ids["GOOD"]) is S.PROCESSED
    worker = lines.take()
    assert worker, "the worker logged nothing"
    for line in worker:  # from the runner, the hooks, a library, a thread
        assert job_fields(line)[:3] == (ids["GOOD"], "test", 1), line
    steps = [line["status"] for line in worker]
    assert [s for i, s in enumerate(steps) if i == 0 or s != steps[i - 1]] == [
        "started",
        "pre_processing",
        "processing",
        "post_processing",
        "processed",
    ]
    by_logger = {line["logger"]: line for line in worker}
    assert by_logger["partner.lib"]["status"] == by_logger["partner.pool"]["status"] == "processing"
    assert by_logger["partner.lib"]["message"].startswith("connecting to ")
    assert "***" in by_logger["partner.pool"]["message"]
    assert worker[-1]["logger"] == "joblife.worker.runner" and worker[-1]["level"] == "INFO"

    # -- publication: the broker returns the product; a consumer then reports a failure ------
    setup_logging(settings=lc.settings)  # back in the services' process
    publisher = UnroutablePublisher()
    service = PublicationService(lc.context, publisher=publisher)
    assert service.run_cycle().result.returned == 1
    assert lc.status(ids["GOOD"]) is S.EXTERNAL_ERROR
    published = about(lines.take(), ids["GOOD"])
    [unroutable] = [line for line in published if line["level"] == "ERROR"]
    assert job_fields(unroutable) == (ids["GOOD"], "test", 1, "external_error")
    [batch] = [line for line in published if line["level"] == "WARNING"]
    assert batch["job_ids"] == [ids["GOOD"]]

    with lc.session() as session:
        message_id = session.scalar(
            select(Publication.message_id).where(Publication.job_id == ids["GOOD"])
        )
        assert apply_feedback(session, message_id, "checksum mismatch") is Settlement.ACK
        session.commit()
    feedback = about(lines.take(), ids["GOOD"])
    assert len(feedback) == 2  # recorded on the publication only, and the consumer's report
    for line in feedback:
        assert job_fields(line) == (ids["GOOD"], "test", 1, "external_error")

    assert_no_secret(lines.all, password)
