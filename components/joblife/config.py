"""Configuration: one settings object, read from ``JOBLIFE_*`` environment variables.

Values come, highest priority first, from the environment (``JOBLIFE_DATABASE_URL``...),
then from an optional TOML file (``JOBLIFE_CONFIG``, default ``<user config dir>/joblife/
config.toml``), then from the defaults below. With nothing set, every part uses its
embedded default: an embedded PostgreSQL under the user's data directory, the local
executor, local file storage and publication kept in the outbox. See docs/configuration.md.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, Field, PositiveInt, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

APP_NAME = "joblife"


def default_data_dir() -> Path:
    """The per-user data directory that holds the embedded database and local storage."""
    return Path(platformdirs.user_data_dir(APP_NAME))


def default_config_file() -> Path:
    """The config file read when ``JOBLIFE_CONFIG`` is not set (it need not exist)."""
    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


class FlavorOverride(BaseModel):
    """A worker flavor given in configuration (replaces or extends the built-in catalogue)."""

    vcpus: PositiveInt
    memory_mib: PositiveInt
    disk_gib: PositiveInt


class Settings(BaseSettings):
    """All of joblife's configuration. Construct through :func:`get_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="JOBLIFE_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of the job database; unset = embedded PostgreSQL.",
    )
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where embedded defaults keep their data (embedded database, local storage).",
    )
    migration_locations: list[Path] = Field(
        default_factory=list,
        description="Extra Alembic version directories (job types outside installed packages).",
    )
    job_type_modules: list[str] = Field(
        default_factory=list,
        description="Extra modules to import for job types, besides the entry points.",
    )
    worker_flavors: dict[str, FlavorOverride] = Field(
        default_factory=dict,
        description="Worker flavors to add or override in the built-in catalogue.",
    )
    nomad_addr: str | None = Field(default=None, description="Nomad HTTP API address.")
    nomad_token: SecretStr | None = Field(default=None, description="Nomad ACL token.")
    nomad_namespace: str | None = None
    nomad_region: str | None = None
    amqp_url: SecretStr | None = Field(
        default=None, description="RabbitMQ URL; unset = messages stay in the outbox."
    )
    storage_url: str | None = Field(
        default=None, description="s3://bucket/prefix or file:///path; unset = local storage."
    )
    log_level: str = "INFO"

    # -- the life-cycle services (see docs/configuration.md) -------------------------------
    batch_size: PositiveInt = Field(500, description="Jobs one service cycle handles at most.")
    loop_interval: float = Field(5.0, gt=0, description="Seconds between idle service cycles.")
    max_in_flight: PositiveInt = Field(1000, description="Cap on jobs queued...post_processing.")
    max_in_flight_per_flavor: dict[str, int] = Field(default_factory=dict)
    max_in_flight_per_type: dict[str, int] = Field(default_factory=dict)
    discovery_lookback_hours: float = Field(
        24.0, gt=0, description="First discovery window of a type with no job yet."
    )
    configure_recheck_seconds: float = Field(
        60.0, gt=0, description="How often a job waiting for a dependency is re-checked."
    )
    heartbeat_interval_seconds: float = Field(10.0, gt=0)
    heartbeat_timeout_seconds: float = Field(
        120.0, gt=0, description="A running job without a heartbeat for this long has failed."
    )
    redispatch_grace_seconds: float = Field(
        30.0, ge=0, description="Age of a queued job without reference before re-dispatch."
    )
    retry_backoff_seconds: float = Field(
        30.0, ge=0, description="Wait before the first automatic retry; doubles each attempt."
    )
    retry_backoff_max_seconds: float = Field(3600.0, ge=0)
    local_slots: dict[str, int] = Field(
        default_factory=dict, description="Local executor: concurrent workers per flavor."
    )
    local_default_slots: PositiveInt = Field(
        default_factory=lambda: os.cpu_count() or 1,
        description="Local executor: concurrent workers of a flavor not in local_slots.",
    )
    local_start_method: Literal["fork", "exec"] = Field(
        "fork",
        description="Local executor: fork the worker from the orchestrator (fast) or exec "
        "`joblife worker run` (a clean interpreter per job).",
    )
    test_products_dir: Path | None = Field(
        default=None, description="Where the `test` job type discovers its products."
    )

    # -- the worker runtime: storage, runners (issue 5) --------------------------------------

    # -- publication over RabbitMQ (issue 6) ------------------------------------------------

    # -- Nomad executor (issue 4) -----------------------------------------------------------

    # -- operations: metrics, logging (issue 8) ---------------------------------------------

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = Path(os.environ.get("JOBLIFE_CONFIG") or default_config_file())
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=config_file),
        )

    @property
    def embedded_database_dir(self) -> Path:
        """Data directory of the embedded PostgreSQL server."""
        return self.data_dir / "postgres"

    @property
    def local_executor_dir(self) -> Path:
        """Where the local executor keeps the state of its executions."""
        return self.data_dir / "local-executor"

    @property
    def test_products_path(self) -> Path:
        """Where the ``test`` job type discovers its products."""
        return self.test_products_dir or self.data_dir / "test-products"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests call ``get_settings.cache_clear()``."""
    return Settings()
