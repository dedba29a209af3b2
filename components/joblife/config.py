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
from typing import Annotated, Literal

import platformdirs
from pydantic import BaseModel, BeforeValidator, Field, PositiveInt, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

#: How a reference type runs its science step (see joblife.jobtypes.science_runner).
RunnerMode = Literal["auto", "docker", "process"]

APP_NAME = "joblife"


def default_data_dir() -> Path:
    """The per-user data directory that holds the embedded database and local storage."""
    return Path(platformdirs.user_data_dir(APP_NAME))


def default_config_file() -> Path:
    """The config file read when ``JOBLIFE_CONFIG`` is not set (it need not exist)."""
    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


def _octal(value: object) -> object:
    """A umask given as text is octal (``"077"``, ``"0o027"``); a number is taken as is
    (TOML's ``0o077``)."""
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        return int(text or "0", 8)
    return value


#: A file-creation mask (0 to 0o777), octal when given as text.
FileUmask = Annotated[int, BeforeValidator(_octal), Field(ge=0, le=0o777)]


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
    worker_database_url: SecretStr | None = Field(
        default=None,
        description="Database URL the local executor gives its workers (the joblife_worker "
        "role's login) as JOBLIFE_DATABASE_URL; unset = the services' database_url.",
    )
    attempt_secret_key: SecretStr | None = Field(
        default=None,
        description="Key the services derive each attempt's secret from (HMAC-SHA256); "
        "every service that dispatches must have the same one. Required with the Nomad "
        "executor; unset with the local one = a random key kept in "
        "<data_dir>/attempt-secret.key (0600), made on first use.",
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
    nomad_namespace: str | None = Field(
        default=None, description="Nomad namespace of the processing and service jobs."
    )
    nomad_region: str | None = Field(default=None, description="Nomad region to talk to.")
    amqp_url: SecretStr | None = Field(
        default=None, description="RabbitMQ URL; unset = messages stay in the outbox."
    )
    storage_url: str | None = Field(
        default=None, description="s3://bucket/prefix or file:///path; unset = local storage."
    )
    log_level: str = Field(
        "INFO", description="Log level of the services and workers (DEBUG, INFO, WARNING...)."
    )

    # -- the life-cycle services (see docs/configuration.md) -------------------------------
    batch_size: PositiveInt = Field(500, description="Jobs one service cycle handles at most.")
    loop_interval: float = Field(5.0, gt=0, description="Seconds between idle service cycles.")
    max_in_flight: PositiveInt = Field(1000, description="Cap on jobs queued...post_processing.")
    max_in_flight_per_flavor: dict[str, int] = Field(
        default_factory=dict, description="Cap on jobs in flight per worker flavor (0 pauses)."
    )
    max_in_flight_per_type: dict[str, int] = Field(
        default_factory=dict, description="Cap on jobs in flight per job type (0 pauses)."
    )
    creation_parallelism: int = Field(
        2,
        ge=1,
        le=8,  # each range holds a connection of the engine's pool (5 + 10) until all end
        description="Connections a large creation cycle inserts over at once (one range "
        "per 10,000 jobs at most, committed in publication order).",
    )
    discovery_lookback_hours: float = Field(
        24.0, gt=0, description="First discovery window of a type with no job yet."
    )
    configure_recheck_seconds: float = Field(
        60.0, gt=0, description="How often a job waiting for a dependency is re-checked."
    )
    heartbeat_interval_seconds: float = Field(
        10.0, gt=0, description="How often a running worker stamps its heartbeat."
    )
    heartbeat_timeout_seconds: float = Field(
        120.0, gt=0, description="A running job without a heartbeat for this long has failed."
    )
    redispatch_grace_seconds: float = Field(
        30.0, ge=0, description="Age of a queued job without reference before re-dispatch."
    )
    queued_deadline_seconds: float = Field(
        3600.0,
        gt=0,
        description="A queued job whose execution the executor accepted this long ago and "
        "that never started (e.g. an unplaceable Nomad child) is stopped and fails "
        "(external_error).",
    )
    retry_backoff_seconds: float = Field(
        30.0, ge=0, description="Wait before the first automatic retry; doubles each attempt."
    )
    retry_backoff_max_seconds: float = Field(
        3600.0, ge=0, description="Longest wait before an automatic retry."
    )
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
    work_root: Path | None = Field(
        default=None,
        description="Where workers make each job's work dir (<work_root>/<unique_id>/); "
        "unset = <data_dir>/work.",
    )
    storage_transfer_concurrency: PositiveInt = Field(
        4, description="Files a worker downloads or uploads at the same time."
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint (any S3-compatible server); unset = AWS."
    )
    s3_region: str | None = Field(default=None, description="S3 region name.")
    s3_access_key_id: SecretStr | None = Field(
        default=None, description="S3 access key; unset = boto3's own chain (AWS_* env...)."
    )
    s3_secret_access_key: SecretStr | None = Field(
        default=None, description="S3 secret key; unset = boto3's own chain."
    )
    s3_max_attempts: PositiveInt = Field(
        5, description="Attempts per S3 request (botocore standard retry mode)."
    )
    s3_multipart_threshold_mib: PositiveInt = Field(
        16, description="Files from this size on are transferred in parts."
    )
    s3_multipart_chunksize_mib: PositiveInt = Field(16, description="Size of one part.")
    s3_part_concurrency: PositiveInt = Field(
        8, description="Parts of one file transferred at the same time."
    )
    container_engine_url: str | None = Field(
        default=None,
        description="Docker API of the container engine (docker or podman); unset = "
        "DOCKER_HOST, else the docker default socket.",
    )
    container_pull_missing: bool = Field(
        True, description="Pull a science image the engine does not have before running it."
    )
    container_resource_limits: bool = Field(
        True, description="Apply the flavor's CPU and memory limits to science containers."
    )
    container_pids_limit: int = Field(
        1024,
        ge=-1,
        description="Most processes in a science container (-1: no limit); a job type may "
        "set its own.",
    )
    container_unprivileged_user: str = Field(
        "65534:65534",
        pattern=r"^\d+:\d+$",
        description="uid:gid a science container runs as instead of root when the worker "
        "runs as root (the work dir is handed to it for the step).",
    )
    science_timeout_seconds: float = Field(
        6 * 3600.0,
        gt=0,
        description="Science step time limit of job types that declare none.",
    )
    science_log_tail_lines: PositiveInt = Field(
        40, description="Last science log lines kept in the status details of a failure."
    )
    science_log_tail_max_bytes: PositiveInt = Field(
        64 * 1024,
        description="Most bytes of science log lines kept in the status details.",
    )
    science_log_line_max_bytes: PositiveInt = Field(
        4096,
        description="A science log line longer than this is cut in the status details "
        "(the log file keeps it whole).",
    )
    science_log_max_bytes: PositiveInt = Field(
        64 * 1024 * 1024,
        description="Most bytes of the uploaded science log; output past it is dropped and "
        "the drop recorded in the status details.",
    )
    logs_upload_max_bytes: PositiveInt = Field(
        256 * 1024 * 1024,
        description="Most bytes of an attempt's logs/ uploaded (science.log first, then the "
        "files the science step wrote there, by name); files past it are skipped, logged and "
        "counted in the status details (logs_skipped).",
    )

    # -- publication over RabbitMQ (issue 6) ------------------------------------------------
    amqp_exchange: str = Field(
        "joblife.products", min_length=1, description="Exchange the product messages go to."
    )
    amqp_exchange_type: Literal["topic", "direct", "fanout", "headers"] = Field(
        "topic", description="Type of the exchange (declared durable)."
    )
    amqp_routing_key_template: str = Field(
        "{job_type}.{product}",
        description="Routing key of a product message; placeholders: {job_type}, {product}, "
        "{input_product_type}, {tile_id}.",
    )
    amqp_declare_topology: bool = Field(
        True,
        description="Declare the exchange (durable) at connection; false: only check that it "
        "exists (the broker's topology is managed elsewhere).",
    )
    amqp_heartbeat_seconds: int = Field(
        60, ge=0, description="AMQP heartbeat negotiated with the broker (0: none)."
    )
    amqp_confirm_timeout_seconds: float = Field(
        30.0, gt=0, description="How long a batch waits for the broker's confirmations."
    )
    amqp_reconnect_max_seconds: float = Field(
        60.0, gt=0, description="Longest wait between two connection attempts (backoff)."
    )
    amqp_feedback_queue: str | None = Field(
        default=None,
        description="Queue of failure reports from the consumers (JSON with message_id and "
        "error); unset = not consumed.",
    )
    publication_batch_size: PositiveInt = Field(
        1000, description="Messages published per confirm window (whole jobs)."
    )
    timeliness_target_hours: float = Field(
        3.0, gt=0, description="Default target of `joblife timeliness` (input to output)."
    )

    # -- Nomad executor (issue 4) -----------------------------------------------------------
    nomad_connect_timeout_seconds: float = Field(
        3.0, gt=0, description="Nomad API: seconds to wait for a connection."
    )
    nomad_read_timeout_seconds: float = Field(
        15.0, gt=0, description="Nomad API: seconds to wait for an answer."
    )
    nomad_retries: int = Field(
        2,
        ge=0,
        description="Nomad API: retries of a request that found no answer, or a 500/502/503/504 "
        "(dispatch is idempotent through its token, so it is retried too).",
    )
    nomad_retry_backoff_seconds: float = Field(
        0.2, ge=0, description="Nomad API: first wait between retries (doubles each retry)."
    )
    nomad_unavailable_retry_seconds: float = Field(
        10.0,
        gt=0,
        description="After Nomad did not answer: dispatch pauses (jobs stay ready) and Nomad is "
        "probed again after this many seconds.",
    )
    nomad_dispatch_rate: float = Field(
        50.0, ge=0, description="Most dispatches per second to Nomad (0: no limit)."
    )
    nomad_tls_ca_cert: Path | None = Field(
        default=None, description="CA bundle to verify Nomad's TLS certificate (https)."
    )
    nomad_datacenters: list[str] = Field(
        default_factory=lambda: ["*"], description="Datacenters of the rendered job specs."
    )
    nomad_node_pool: str | None = Field(
        default=None, description="Node pool of the rendered processing jobs (Nomad 1.6+)."
    )
    nomad_task_driver: Literal["docker", "raw_exec"] = Field(
        "docker",
        description="Task driver of the rendered specs: docker (the worker runtime image) or "
        "raw_exec (joblife installed on the clients).",
    )
    nomad_worker_image: str = Field(
        "joblife/worker:latest",
        description="Worker runtime image of the rendered specs (docker driver).",
    )
    nomad_joblife_command: str = Field(
        "joblife", description="The joblife command on the clients (raw_exec driver)."
    )
    nomad_variables_path: str = Field(
        "nomad/jobs/joblife",
        description="Nomad variable holding the services' and workers' secrets "
        "(database_url, worker_database_url, amqp_url, nomad_token, storage keys); each "
        "task's template reads only the keys its part needs.",
    )
    nomad_service_cron: str = Field(
        "* * * * *", description="Cron of the periodic service jobs (prohibit_overlap)."
    )

    # -- operations: metrics, logging (issue 8) ---------------------------------------------
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text (people) or JSON objects (log collectors)."
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Port of the Prometheus endpoint of `joblife run` (0: any free port); "
        "unset = `joblife run` serves no metrics. `joblife metrics serve` defaults to 9464.",
    )
    metrics_address: str = Field(
        "127.0.0.1",
        description="Address the Prometheus endpoint listens on: this host only by default; "
        "0.0.0.0 (or the allocation's address) for a scraper on another host.",
    )
    file_umask: FileUmask = Field(
        0o077,
        description="umask of every joblife process (octal: 077, 0o027): the files and "
        "directories it creates (work dirs, local executor state and logs, file storage, "
        "the publication spool) are private to its user by default; 027 lets a group read "
        "the products of a shared file storage (NFS).",
    )
    health_timeout_seconds: float = Field(
        5.0, gt=0, description="How long `joblife health` waits for each service."
    )
    cleanup_batch_size: PositiveInt = Field(
        1000, description="Jobs `joblife cleanup` removes per transaction."
    )
    stale_after_seconds: dict[str, float] = Field(
        default_factory=lambda: {
            "initialized": 3600.0,
            "ready": 6 * 3600.0,
            "processed": 3600.0,
            "start_publication": 3600.0,
            "published": 3600.0,
        },
        description="`joblife jobs stale`: deadline per status (seconds) of the statuses no "
        "service polices by time (running statuses use heartbeat_timeout_seconds, queued "
        "redispatch_grace_seconds and queued_deadline_seconds, configured its type's "
        "DEPENDENCY_TIMEOUT, external_error the retry backoff).",
    )

    # -- reference job types and demo (issue 7) ---------------------------------------------
    h5repack_input_prefix: str | None = Field(
        default=None,
        description="Where the h5repack type discovers HDF5 recordings: a key prefix of the "
        "configured storage or a URL (file://, s3://); unset = it discovers nothing.",
    )
    h5repack_input_pattern: str = Field(
        r".*\.h5",
        description="Regular expression the key (relative to h5repack_input_prefix) of a "
        "recording must fully match.",
    )
    h5repack_runner: RunnerMode = Field(
        "auto",
        description="How h5repack jobs run: docker (the HDF Group's h5repack in "
        "h5repack_image), process (h5py, python -m joblife.science.h5repack), or auto: "
        "docker when the container engine answers and has the image, else process.",
    )
    h5repack_image: str = Field(
        "localhost/joblife-h5repack:latest",
        description="Science image of the h5repack container runner "
        "(workers/build-local-image.sh builds it without a registry).",
    )
    h5repack_channel_axis: int = Field(
        0, description="Channel axis of the recordings (0: (channel, time); -1: (time, channel))."
    )
    h5repack_gzip_level: int | None = Field(
        default=None, ge=0, le=9, description="gzip level of the repacked data; unset = none."
    )
    h5repack_chunk_bytes: PositiveInt = Field(
        1 << 20, description="Target size of one chunk (one channel by a run of samples)."
    )
    image_ingest_source_url: str | None = Field(
        default=None,
        description="Image ingest from one URL (http:// or https:// needing no account, "
        "file://, s3://, or a key of the configured storage): one job for that image; unset "
        "= no single-URL input.",
    )
    image_ingest_input_prefix: str | None = Field(
        default=None,
        description="Image ingest from a storage prefix (a key prefix of the configured "
        "storage, file:// or s3://): the files whose path relative to it fully matches "
        "image_ingest_filter, grouped by directory, one stack (one job) per directory; unset "
        "= no prefix input.",
    )
    image_ingest_filter: str = Field(
        r".*\.(png|tiff?)",
        description="Regular expression a file's path relative to image_ingest_input_prefix "
        "must fully match to be part of a stack (e.g. data/raw/original/pm31\\d{2}o\\.png).",
    )
    image_ingest_runner: RunnerMode = Field(
        "process",
        description="How image ingest jobs run: process (python -m joblife.science.pyramid on "
        "the worker), docker (the same command in image_ingest_image), or auto: docker when "
        "the container engine answers and has the image, else process.",
    )
    image_ingest_image: str = Field(
        "localhost/joblife-pyramid:latest",
        description="Science image of the image ingest container runner (built from "
        "workers/pyramid/Containerfile; never pulled by auto).",
    )
    image_ingest_min_size: PositiveInt = Field(
        64, description="Pyramid: levels are added until the larger side is at most this."
    )
    image_ingest_tile: PositiveInt = Field(256, description="Pyramid: chunk size in y and x.")
    tile_series_input_prefix: str | None = Field(
        default=None,
        description="Where the tile time series type discovers tile products "
        "(<prefix>/<product>/metadata.json); unset = it discovers nothing.",
    )
    tile_series_nrt_hours: float = Field(
        48.0,
        gt=0,
        description="A tile product published at most this long after its measurement runs "
        "at priority nrt.",
    )
    tile_series_delayed_days: float = Field(
        30.0,
        gt=0,
        description="Published later than nrt but within this many days of its measurement: "
        "priority delayed; later still: reprocessing.",
    )
    tile_series_settle_hours: float = Field(
        0.5,
        ge=0,
        description="The longest delay between a tile product's measurement and its "
        "publication that the date order is guaranteed for: a date is released only once "
        "the discovery cursor has passed its measurement plus this, so every earlier date "
        "published within it is known first (0: release once the known previous date has "
        "its output).",
    )
    tile_series_runner: RunnerMode = Field(
        "process",
        description="How tile time series jobs run: process (python -m joblife.science.snow "
        "on the worker), docker (the same command in tile_series_image), or auto: docker "
        "when the container engine answers and has the image, else process.",
    )
    tile_series_image: str = Field(
        "localhost/joblife-snow:latest",
        description="Science image of the tile time series container runner (built from "
        "workers/snow/Containerfile; never pulled by auto).",
    )
    publication_spool: str | None = Field(
        default=None,
        description="Without a broker (amqp_url unset): a directory or file:// URL where the "
        "relay appends each product message as one JSON line, fsynced (the fsync is the "
        "confirmation), and the jobs go on to done; unset = messages stay in the outbox. "
        "`joblife demo` sets it.",
    )

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


def apply_file_umask(settings: Settings) -> int:
    """Set the process's umask to ``settings.file_umask`` (inherited by the workers it
    forks or starts); return the previous one. Every joblife entry point calls it first."""
    return os.umask(settings.file_umask)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests call ``get_settings.cache_clear()``."""
    return Settings()
