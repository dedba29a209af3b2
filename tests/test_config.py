"""Configuration from JOBLIFE_* variables and the optional TOML file."""

from __future__ import annotations

from pathlib import Path

import pytest
from joblife.config import Settings, get_settings
from joblife.db.engine import database_url


def test_environment_overrides_file_and_file_overrides_defaults(tmp_path: Path, monkeypatch):
    config = tmp_path / "joblife.toml"
    config.write_text(
        'nomad_addr = "http://nomad.example:4646"\n'
        'log_level = "DEBUG"\n'
        "[worker_flavors.gpu]\nvcpus = 8\nmemory_mib = 32768\ndisk_gib = 100\n"
    )
    monkeypatch.setenv("JOBLIFE_CONFIG", str(config))
    monkeypatch.setenv("JOBLIFE_LOG_LEVEL", "WARNING")
    settings = Settings()
    assert settings.nomad_addr == "http://nomad.example:4646"
    assert settings.log_level == "WARNING"
    assert settings.worker_flavors["gpu"].memory_mib == 32768


def test_defaults_are_embedded(monkeypatch, tmp_path: Path):
    for name in (
        "JOBLIFE_DATABASE_URL",
        "JOBLIFE_AMQP_URL",
        "JOBLIFE_NOMAD_ADDR",
        "JOBLIFE_STORAGE_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JOBLIFE_CONFIG", str(tmp_path / "absent.toml"))
    settings = Settings()
    assert settings.database_url is None and settings.amqp_url is None
    assert settings.nomad_addr is None and settings.storage_url is None


def test_secrets_are_masked_and_driver_is_added(monkeypatch):
    monkeypatch.setenv("JOBLIFE_DATABASE_URL", "postgresql://jl:s3cret@db.example:5432/jobs")
    settings = Settings()
    assert "s3cret" not in repr(settings)
    assert database_url(settings) == "postgresql+psycopg2://jl:s3cret@db.example:5432/jobs"


def test_invalid_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(
        "JOBLIFE_WORKER_FLAVORS", '{"x": {"vcpus": -1, "memory_mib": 1, "disk_gib": 1}}'
    )
    with pytest.raises(ValueError, match="vcpus"):
        Settings()
    get_settings.cache_clear()
