"""Every setting has a range or a format, checked at start (issue 14, item 10): a value that
would break a service later is refused by any command with one line naming the setting, the
value (a secret's password hidden) and what is allowed, exit status 2; the defaults pass."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from joblife.cli.main import app
from joblife.config import (
    InvalidSettingError,
    Settings,
    _range_of,
    check_cron,
    describe_settings_error,
    get_settings,
)
from pydantic import ValidationError
from typer.testing import CliRunner, Result


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No configuration file, this test's data dir, no service of the environment."""
    monkeypatch.setenv("JOBLIFE_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("JOBLIFE_DATA_DIR", str(tmp_path / "data"))
    for name in ("JOBLIFE_DATABASE_URL", "JOBLIFE_AMQP_URL", "JOBLIFE_NOMAD_ADDR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("JOBLIFE_STORAGE_URL", raising=False)
    monkeypatch.delenv("JOBLIFE_DEBUG", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def run(*args: str) -> Result:
    """Invoke ``joblife ARGS`` in-process."""
    get_settings.cache_clear()
    return CliRunner().invoke(app, list(args))


#: (setting, value given in the environment, a fragment of what is allowed)
BAD = [
    ("loop_interval", "inf", "must be a finite number between 0.01 and 3600"),
    ("loop_interval", "nan", "finite number"),
    ("loop_interval", "0", "between 0.01 and 3600"),
    ("queued_deadline_seconds", "inf", "finite number between 1 and"),
    ("discovery_lookback_hours", "1e12", "at most 87840"),
    ("retry_backoff_seconds", "1e308", "between 0 and 2592000"),
    ("retry_backoff_max_seconds", "-1", "between 0 and"),
    ("heartbeat_interval_seconds", "-inf", "finite number"),
    ("heartbeat_timeout_seconds", "1e9", "between 0.1 and 86400"),
    ("heartbeat_interval_seconds", "300", "less than heartbeat_timeout_seconds (120)"),
    ("redispatch_grace_seconds", "-5", "between 0 and 86400"),
    ("configure_recheck_seconds", "NaN", "finite number"),
    ("science_timeout_seconds", "0", "between 1 and"),
    ("amqp_confirm_timeout_seconds", "1e400", "finite number"),
    ("health_timeout_seconds", "0", "between 0.1 and 600"),
    ("batch_size", "0", "an integer between 1 and 100000"),
    ("max_in_flight", "-1", "an integer between 1 and"),
    ("publication_batch_size", "10000000", "between 1 and 100000"),
    ("nomad_retries", "-1", "between 0 and 100"),
    ("metrics_port", "70000", "between 0 and 65535"),
    ("amqp_heartbeat_seconds", "70000", "between 0 and 65535"),
    ("max_in_flight_per_flavor", '{"small": -1}', "an integer between 0 and"),
    ("max_in_flight_per_type", '{"test": -3}', "an integer between 0 and"),
    ("local_slots", '{"small": -1}', "an integer between 0 and"),
    ("stale_after_seconds", '{"ready": -1}', "a finite number between 0 and"),
    ("stale_after_seconds", '{"ready": "inf"}', "finite number"),
    ("worker_flavors", '{"gpu": {"vcpus": 0, "memory_mib": 1, "disk_gib": 1}}', "between 1"),
    ("log_level", "LOUD", "must be a log level: DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ("nomad_service_cron", "* * *", "5-field cron expression"),
    ("nomad_service_cron", "61 * * * *", "minute field '61' is not in 0-59"),
    ("nomad_service_cron", "* * * 13 *", "month field"),
    ("nomad_service_cron", "*/0 * * * *", "minute field"),
    ("h5repack_input_pattern", "(*.h5", "must be a valid regular expression"),
    ("image_ingest_filter", "[png", "must be a valid regular expression"),
    ("metrics_address", "not an address!", "an IP address"),
    ("metrics_address", "", "an IP address"),
    ("job_type_modules", '["partner-jobs"]', "importable module names"),
    ("job_type_modules", '["partner.class"]', "importable module names"),
    ("amqp_url", "amqp//guest:guest@localhost", "starting with amqp:// or amqps://"),
    ("amqp_url", "http://broker:5672", "starting with amqp:// or amqps://"),
    ("amqp_url", "amqp://", "naming a host"),
    ("amqp_url", "amqp://broker:99999/", "valid port"),
    ("database_url", "not a url", "must be a PostgreSQL URL"),
    ("database_url", "mysql://u:pw@db/x", "other databases and drivers are not supported"),
    ("database_url", "postgresql+asyncpg://u:pw@db/x", "postgresql+psycopg2://"),
    ("storage_url", "/srv/storage", "starting with s3:// or file://"),
    ("storage_url", "s3:///prefix", "must name a bucket"),
    ("nomad_addr", "nomad.example:4646", "starting with http:// or https://"),
    ("nomad_addr", "http://:4646", "naming a host"),
    ("s3_endpoint_url", "minio:9000", "starting with http:// or https://"),
]


@pytest.mark.parametrize(("setting", "value", "allowed"), BAD, ids=lambda v: str(v)[:30])
def test_an_invalid_setting_is_refused_at_start_in_one_line(
    setting: str, value: str, allowed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"JOBLIFE_{setting.upper()}", value)
    result = run("health", "--check", "storage")
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: setting {setting}"), lines[0]
    assert allowed in lines[0], lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("setting", "value", "secret"),
    [
        ("amqp_url", "amqp//joblife:pw-s3cr3t@broker", "pw-s3cr3t"),
        ("database_url", "mysql://ops:db-s3cr3t@db/x", "db-s3cr3t"),
        ("worker_database_url", "not a url db-s3cr3t", "db-s3cr3t"),
    ],
)
def test_a_secret_value_is_not_printed(
    setting: str, value: str, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"JOBLIFE_{setting.upper()}", value)
    for debug in ([], ["--debug"]):
        result = run(*debug, "health", "--check", "storage")
        assert result.exit_code == 2, result.output
        assert f"setting {setting}=" in result.stderr
        assert secret not in result.output


def test_the_defaults_and_good_values_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("health", "--check", "storage").exit_code == 0
    good = {
        "JOBLIFE_AMQP_URL": "amqps://joblife:pw@broker.example:5671/vhost",
        "JOBLIFE_DATABASE_URL": "postgresql+psycopg2://jl:pw@db.example:5432/jobs",
        "JOBLIFE_NOMAD_ADDR": "https://nomad.example:4646",
        "JOBLIFE_STORAGE_URL": "s3://bucket/prefix",
        "JOBLIFE_METRICS_ADDRESS": "::",
        "JOBLIFE_LOG_LEVEL": "debug",
        "JOBLIFE_NOMAD_SERVICE_CRON": "*/5 8-18 ? JAN-MAR,DEC MON-FRI",
        "JOBLIFE_MAX_IN_FLIGHT_PER_TYPE": '{"test": 0}',
        "JOBLIFE_JOB_TYPE_MODULES": '["tests.support.example_type", "partner_jobs.types"]',
    }
    for name, value in good.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    settings = get_settings()
    assert settings.log_level == "DEBUG"
    assert settings.max_in_flight_per_type == {"test": 0}


def test_every_numeric_setting_has_a_finite_range() -> None:
    """A new numeric setting without bounds fails here: give it ge/le (or gt/lt)."""
    for name in Settings.model_fields:
        allowed = _range_of((name,))
        if allowed is None:
            continue  # not a number (a dict of numbers is checked through its values)
        assert "between" in allowed or "at most" in allowed or "less than" in allowed, name
        with pytest.raises(ValidationError) as refused:
            Settings(**{name: math.inf})
        assert describe_settings_error(refused.value).startswith(f"setting {name}=inf: ")
    for name in ("max_in_flight_per_flavor", "local_slots", "stale_after_seconds"):
        assert "between 0 and" in (_range_of((name, "any")) or ""), name


def test_get_settings_raises_one_line_naming_the_setting(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("JOBLIFE_LOOP_INTERVAL", "inf")
    monkeypatch.setenv("JOBLIFE_BATCH_SIZE", "0")
    get_settings.cache_clear()
    with pytest.raises(InvalidSettingError) as refused:
        get_settings()
    message = str(refused.value)
    assert "\n" not in message and "(and 1 more invalid)" in message


@pytest.mark.parametrize(
    "expression", ["* * * * *", "0 3 * * *", "*/15 * * * *", "0 0 1,15 * ?", "@hourly"]
)
def test_cron_expressions_nomad_accepts_pass(expression: str) -> None:
    assert check_cron(expression) == expression
