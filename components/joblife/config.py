"""Configuration: one settings object, read from ``JOBLIFE_*`` environment variables.

Values come, highest priority first, from the environment (``JOBLIFE_DATABASE_URL``...),
then from an optional TOML file (``JOBLIFE_CONFIG``, default ``<user config dir>/joblife/
config.toml``), then from the defaults below. With nothing set, every part uses its
embedded default: an embedded PostgreSQL under the user's data directory, the local
executor, local file storage and publication kept in the outbox. See docs/configuration.md.
"""

from __future__ import annotations

import ipaddress
import keyword
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import platformdirs
from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from joblife.errors import ConfigurationError

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

# -- ranges and formats (issue 14, item 10) ------------------------------------------------
# Every numeric setting has a range: a value outside it (or inf/nan, refused model-wide by
# allow_inf_nan=False) would break a service later (an OverflowError in a timedelta, a
# monitor failing every cycle, a cap that silently pauses dispatch).
HOUR = 3600.0
DAY = 24 * HOUR
#: Ten years: the longest look-back, deadline or age a setting may name.
DECADE_HOURS = 10 * 366 * 24.0
TIB = 1 << 40
#: A cap or slot count per flavor / type: 0 pauses, negative is refused.
Cap = Annotated[int, Field(ge=0, le=1_000_000)]
#: A deadline per status (seconds): 0 to ten years.
Deadline = Annotated[float, Field(ge=0, le=DECADE_HOURS * HOUR)]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
# Cron fields of Nomad's periodic block: minute, hour, day of month, month, day of week.
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_WEEKDAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_CRON_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _WEEKDAYS),
)
_CRON_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
CRON_FORMAT = (
    "must be a 5-field cron expression (minute hour day-of-month month day-of-week: *, N, "
    "N-M, lists, /step) or @hourly, @daily, @weekly, @monthly, @yearly"
)


class InvalidSettingError(ConfigurationError, ValueError):
    """A setting's value is outside its range or format; the message is one line naming the
    setting, the value (redacted if secret) and what is allowed."""


def _is_hostname(host: str) -> bool:
    """Whether ``host`` is an IP address (v4 or v6) or an RFC 1123 host name."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host))


#: A rate in the notation of ``limits``: "5/minute", "20 per hour", "10/2 minutes".
_RATE = re.compile(
    r"\d+\s*(?:/|per)\s*(?:\d+\s+)?(?:second|minute|hour|day|month|year)s?", re.IGNORECASE
)


def check_url(url: str, schemes: tuple[str, ...], *, host: bool = True) -> str:
    """``url`` if it parses with one of ``schemes`` (``scheme://``), a valid host when
    ``host`` and a valid port if any; else ValueError saying what is expected."""
    expected = " or ".join(f"{s}://" for s in schemes)
    parts = urlsplit(url)
    if parts.scheme.lower() not in schemes or not url[len(parts.scheme) :].startswith("://"):
        raise ValueError(f"must be a URL starting with {expected}")
    try:
        parts.port  # noqa: B018 - parsing the port validates it
    except ValueError as exc:
        raise ValueError(f"must be a URL ({expected}) with a valid port ({exc})") from None
    if host and not (parts.hostname and _is_hostname(parts.hostname)):
        raise ValueError(f"must be a URL ({expected}) naming a host")
    return url


def _cron_value(text: str, low: int, high: int, names: tuple[str, ...]) -> int:
    if text.upper() in names:
        return names.index(text.upper()) + low
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(text)
    return int(text)


def check_cron(expression: str) -> str:
    """``expression`` if it is a 5-field cron expression (or a macro such as @hourly) that
    Nomad's periodic block accepts; else ValueError."""
    if expression.strip().lower() in _CRON_MACROS:
        return expression
    fields = expression.split()
    if len(fields) != len(_CRON_FIELDS):
        raise ValueError(f"{CRON_FORMAT} (got {len(fields)} fields)")
    for text, (what, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for item in text.split(","):
            span, _, step = item.partition("/")
            try:
                if step and (not step.isdigit() or int(step) < 1):
                    raise ValueError(step)
                # "?" (no specific value) is only meaningful in the two day fields.
                if span != "*" and not (span == "?" and what.startswith("day")):
                    first, _, last = span.partition("-")
                    start = _cron_value(first, low, high, names)
                    if last and _cron_value(last, low, high, names) < start:
                        raise ValueError(span)
            except ValueError:
                raise ValueError(
                    f"{CRON_FORMAT} (the {what} field {text!r} is not in {low}-{high})"
                ) from None
    return expression


def check_pattern(pattern: str) -> str:
    """``pattern`` if it compiles as a regular expression; else ValueError."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"must be a valid regular expression ({exc})") from None
    return pattern


class FlavorOverride(BaseModel):
    """A worker flavor given in configuration (replaces or extends the built-in catalogue)."""

    vcpus: int = Field(ge=1, le=1024)
    memory_mib: int = Field(ge=1, le=64 * 1024 * 1024)
    disk_gib: int = Field(ge=1, le=1024 * 1024)


class Settings(BaseSettings):
    """All of joblife's configuration. Construct through :func:`get_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="JOBLIFE_",
        env_nested_delimiter="__",
        extra="ignore",
        allow_inf_nan=False,  # inf/nan in a duration or cap breaks a service later
    )

    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of the job database; unset = embedded PostgreSQL.",
    )
    worker_database_url: SecretStr | None = Field(
        default=None,
        description="The workers' database URL (the joblife_worker role's login, directly or "
        "through PgBouncer in transaction mode): the local executor and the Nomad specs give "
        "it to the workers as JOBLIFE_DATABASE_URL, and `joblife worker run` uses it when "
        "set; unset = the services' database_url.",
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
    batch_size: int = Field(
        500, ge=1, le=100_000, description="Jobs one service cycle handles at most."
    )
    loop_interval: float = Field(
        5.0, ge=0.01, le=HOUR, description="Seconds between idle service cycles."
    )
    outage_backoff_max_seconds: float = Field(
        10.0,
        ge=0.1,
        le=300,
        description="Longest wait of joblife run between tries to reach a database that is down.",
    )
    max_in_flight: int = Field(
        1000, ge=1, le=1_000_000, description="Cap on jobs queued...post_processing."
    )
    max_in_flight_per_flavor: dict[str, Cap] = Field(
        default_factory=dict, description="Cap on jobs in flight per worker flavor (0 pauses)."
    )
    max_in_flight_per_type: dict[str, Cap] = Field(
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
        24.0, gt=0, le=DECADE_HOURS, description="First discovery window of a type with no job yet."
    )
    discovery_settle_seconds: float = Field(
        2.0,
        ge=0,
        le=DAY,
        description="A discovered product dated less than this before the creation cycle is "
        "left for a later cycle (a file may still be being written); a job type's "
        "DISCOVERY_SETTLE_SECONDS overrides it. 0: take every product at once.",
    )
    discovery_overlap_seconds: float = Field(
        0.0,
        ge=0,
        le=DECADE_HOURS * HOUR,
        description="modified_since discovery: the window starts this long before the "
        "discovery cursor, for a storage that lists an object after a newer one (an S3 "
        "multipart upload is dated by its start); a job type's DISCOVERY_OVERLAP_SECONDS "
        "overrides it. Rediscovered products cost a lookup, no job.",
    )
    configure_recheck_seconds: float = Field(
        60.0, ge=0.01, le=DAY, description="How often a job waiting for a dependency is re-checked."
    )
    heartbeat_interval_seconds: float = Field(
        10.0, ge=0.01, le=HOUR, description="How often a running worker stamps its heartbeat."
    )
    heartbeat_timeout_seconds: float = Field(
        120.0,
        ge=0.1,
        le=DAY,
        description="A running job without a heartbeat for this long has failed.",
    )
    worker_database_retry_seconds: float = Field(
        120.0,
        ge=0,
        le=HOUR,
        description="How long a worker retries its database writes through an outage "
        "(connection failures only) before it exits asking for a relaunch (0: no retry).",
    )
    redispatch_grace_seconds: float = Field(
        30.0, ge=0, le=DAY, description="Age of a queued job without reference before re-dispatch."
    )
    queued_deadline_seconds: float = Field(
        3600.0,
        ge=1,
        le=30 * DAY,
        description="A queued job whose execution the executor accepted this long ago and "
        "that never started (e.g. an unplaceable Nomad child) is stopped and fails "
        "(external_error).",
    )
    retry_backoff_seconds: float = Field(
        30.0,
        ge=0,
        le=30 * DAY,
        description="Wait before the first automatic retry; doubles each attempt.",
    )
    retry_backoff_max_seconds: float = Field(
        3600.0, ge=0, le=30 * DAY, description="Longest wait before an automatic retry."
    )
    local_slots: dict[str, Cap] = Field(
        default_factory=dict, description="Local executor: concurrent workers per flavor."
    )
    local_default_slots: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=1_000_000,
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
    storage_transfer_concurrency: int = Field(
        4, ge=1, le=256, description="Files a worker downloads or uploads at the same time."
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
    s3_max_attempts: int = Field(
        5, ge=1, le=100, description="Attempts per S3 request (botocore standard retry mode)."
    )
    s3_multipart_threshold_mib: int = Field(
        16,
        ge=1,
        le=5 * 1024 * 1024,
        description="Files from this size on are transferred in parts.",
    )
    s3_multipart_chunksize_mib: int = Field(16, ge=1, le=5 * 1024, description="Size of one part.")
    s3_part_concurrency: int = Field(
        8, ge=1, le=256, description="Parts of one file transferred at the same time."
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
        le=4_194_304,  # the kernel's pid_max ceiling
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
        ge=1,
        le=30 * DAY,
        description="Science step time limit of job types that declare none.",
    )
    science_log_tail_lines: int = Field(
        40,
        ge=1,
        le=100_000,
        description="Last science log lines kept in the status details of a failure.",
    )
    science_log_tail_max_bytes: int = Field(
        64 * 1024,
        ge=1,
        le=64 * 1024 * 1024,
        description="Most bytes of science log lines kept in the status details.",
    )
    science_log_line_max_bytes: int = Field(
        4096,
        ge=1,
        le=16 * 1024 * 1024,
        description="A science log line longer than this is cut in the status details "
        "(the log file keeps it whole).",
    )
    science_log_max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1,
        le=TIB,
        description="Most bytes of the uploaded science log; output past it is dropped and "
        "the drop recorded in the status details.",
    )
    logs_upload_max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1,
        le=TIB,
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
        60, ge=0, le=65535, description="AMQP heartbeat negotiated with the broker (0: none)."
    )
    amqp_confirm_timeout_seconds: float = Field(
        30.0, ge=0.01, le=HOUR, description="How long a batch waits for the broker's confirmations."
    )
    amqp_connect_timeout_seconds: float = Field(
        10.0,
        ge=0.01,
        le=600,
        description="How long opening a broker connection may take (TCP, handshake, "
        "channels) before it is given up and retried.",
    )
    amqp_reconnect_max_seconds: float = Field(
        60.0,
        ge=0.01,
        le=HOUR,
        description="Longest wait between two connection attempts (backoff).",
    )
    amqp_feedback_queue: str | None = Field(
        default=None,
        description="Queue of failure reports from the consumers (JSON with message_id and "
        "error); unset = not consumed.",
    )
    publication_batch_size: int = Field(
        1000, ge=1, le=100_000, description="Messages published per confirm window (whole jobs)."
    )
    product_message_max_files: int = Field(
        1000,
        ge=0,
        le=1_000_000,
        description="Most output files the default product message lists (read by the "
        "worker, which builds it): a job with more sends files null, files_listed false, "
        "files_total and manifest_url (the manifest lists them all).",
    )
    product_message_max_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        le=512 * 1024 * 1024,
        description="Largest product message body the relay sends (at most the broker's "
        "max_message_size); a larger one is never sent: its job goes to internal_error "
        "and the other messages flow.",
    )
    timeliness_target_hours: float = Field(
        3.0,
        gt=0,
        le=DECADE_HOURS,
        description="Default target of `joblife timeliness` (input to output).",
    )

    # -- Nomad executor (issue 4) -----------------------------------------------------------
    nomad_connect_timeout_seconds: float = Field(
        3.0, ge=0.01, le=600, description="Nomad API: seconds to wait for a connection."
    )
    nomad_read_timeout_seconds: float = Field(
        15.0, ge=0.01, le=HOUR, description="Nomad API: seconds to wait for an answer."
    )
    nomad_retries: int = Field(
        2,
        ge=0,
        le=100,
        description="Nomad API: retries of a request that found no answer, or a 500/502/503/504 "
        "(dispatch is idempotent through its token, so it is retried too).",
    )
    nomad_retry_backoff_seconds: float = Field(
        0.2, ge=0, le=600, description="Nomad API: first wait between retries (doubles each retry)."
    )
    nomad_unavailable_retry_seconds: float = Field(
        10.0,
        ge=0.01,
        le=HOUR,
        description="After Nomad did not answer: dispatch pauses (jobs stay ready) and Nomad is "
        "probed again after this many seconds.",
    )
    nomad_dispatch_rate: float = Field(
        50.0, ge=0, le=100_000, description="Most dispatches per second to Nomad (0: no limit)."
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
        5.0, ge=0.1, le=600, description="How long `joblife health` waits for each service."
    )
    cleanup_batch_size: int = Field(
        1000, ge=1, le=1_000_000, description="Jobs `joblife cleanup` removes per transaction."
    )
    # History retention (issue 15): the history is partitioned by UTC month.
    history_partition_months_ahead: int = Field(
        3,
        ge=0,
        le=120,
        description="Months of history partitions kept created ahead of the current one (by "
        "the monitor's cycle, at most hourly, and by `joblife cleanup --execute`).",
    )
    stale_after_seconds: dict[str, Deadline] = Field(
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

    # -- web dashboard (issue 16) ------------------------------------------------------------
    web_address: str = Field(
        "127.0.0.1",
        description="Address `joblife web` listens on: this host only by default; 0.0.0.0 "
        "behind a reverse proxy or in a Nomad allocation.",
    )
    web_port: int = Field(8080, ge=1, le=65535, description="Port of `joblife web`.")
    web_users_file: Path | None = Field(
        default=None,
        description="The dashboard's users (`name:role:argon2 hash` lines, managed with "
        "`joblife web-users`); unset = <data_dir>/web-users. With no user at all, `joblife "
        "web` creates an operator `admin` with a random password it prints once.",
    )
    web_secret_key: SecretStr | None = Field(
        default=None,
        description="Key signing the dashboard's session cookies; every instance behind one "
        "address must have the same one. Unset = a random key kept in "
        "<data_dir>/web-secret.key (0600), made on first use.",
    )
    web_cookie_secure: bool | None = Field(
        default=None,
        description="Send the session cookie over HTTPS only. Unset = on, except when "
        "web_address is a loopback address (a browser on the same host, plain HTTP).",
    )
    web_trusted_user_header: str | None = Field(
        default=None,
        description="Behind a reverse proxy that authenticates users: the request header "
        "naming the user (X-Forwarded-User...), trusted only from web_trusted_proxies; the "
        "user's role still comes from web_users_file. Unset = users log in with a password.",
    )
    web_trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="Client addresses whose web_trusted_user_header is believed.",
    )
    web_login_rate: str = Field(
        "5/minute",
        description="Failed logins allowed per user name and per client address (limits "
        "notation: 5/minute, 20/hour); more are refused until the window passes.",
    )
    web_session_hours: float = Field(
        8.0, gt=0, le=24 * 30, description="How long a dashboard login lasts."
    )
    web_refresh_seconds: float = Field(
        5.0,
        ge=1,
        le=3600,
        description="Live refresh of the dashboard's pages; also how long the server keeps "
        "a page's data, so that many open browsers cost the database one query per page "
        "per interval.",
    )
    web_nomad_ui_url: str | None = Field(
        default=None,
        description="Nomad UI address (https://nomad.example:4646/ui): the Job page links "
        "each Nomad execution to it.",
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
        0,
        ge=-2,
        le=1,
        description="Channel axis of the recordings (0: (channel, time); -1: (time, channel)).",
    )
    h5repack_gzip_level: int | None = Field(
        default=None, ge=0, le=9, description="gzip level of the repacked data; unset = none."
    )
    h5repack_chunk_bytes: int = Field(
        1 << 20,
        ge=1,
        le=(1 << 32) - 1,
        description="Target size of one chunk (one channel by a run of samples).",
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
    image_ingest_min_size: int = Field(
        64,
        ge=1,
        le=1 << 20,
        description="Pyramid: levels are added until the larger side is at most this.",
    )
    image_ingest_tile: int = Field(
        256, ge=1, le=1 << 16, description="Pyramid: chunk size in y and x."
    )
    tile_series_input_prefix: str | None = Field(
        default=None,
        description="Where the tile time series type discovers tile products "
        "(<prefix>/<product>/metadata.json); unset = it discovers nothing.",
    )
    tile_series_nrt_hours: float = Field(
        48.0,
        gt=0,
        le=DECADE_HOURS,
        description="A tile product published at most this long after its measurement runs "
        "at priority nrt.",
    )
    tile_series_delayed_days: float = Field(
        30.0,
        gt=0,
        le=DECADE_HOURS / 24,
        description="Published later than nrt but within this many days of its measurement: "
        "priority delayed; later still: reprocessing.",
    )
    tile_series_settle_hours: float = Field(
        0.5,
        ge=0,
        le=DECADE_HOURS,
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
        description="Without a broker (amqp_url unset): where the relay appends each product "
        "message as one JSON line, fsynced (the fsync is the confirmation), and the jobs go "
        "on to done: a directory (the file is publications.jsonl in it), a .jsonl file, or a "
        "file:// URL of either. Unset = <data_dir>/publication-spool (the embedded default: "
        "jobs finish with nothing configured); `none` = no spool: the messages stay in the "
        "outbox (`joblife publications list`) and the jobs at processed (the rendered Nomad "
        "services set it). Ignored when amqp_url is set.",
    )

    # -- formats: refused at start rather than when a service first uses them ------------
    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.strip().upper() not in LOG_LEVELS:
            raise ValueError(f"must be a log level: {', '.join(LOG_LEVELS)}")
        return value.strip().upper()

    @field_validator("database_url", "worker_database_url")
    @classmethod
    def _sqlalchemy_url(cls, value: SecretStr | None) -> SecretStr | None:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        if value is None:
            return value
        try:
            url = make_url(value.get_secret_value())
        except (ArgumentError, ValueError):
            url = None
        if url is None or url.drivername not in ("postgresql", "postgresql+psycopg2"):
            raise ValueError(
                "must be a PostgreSQL URL: postgresql://user:password@host:port/db (or "
                "postgresql+psycopg2://...; other databases and drivers are not supported)"
            )
        return value

    @field_validator("amqp_url")
    @classmethod
    def _amqp_url(cls, value: SecretStr | None) -> SecretStr | None:
        # pika reads a malformed URL (amqp//host) as localhost with guest credentials.
        if value is not None:
            check_url(value.get_secret_value(), ("amqp", "amqps"))
        return value

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, value: str | None) -> str | None:
        if value:  # empty = unset
            check_url(value, ("s3", "file"), host=False)
            if value.lower().startswith("s3:") and not urlsplit(value).netloc:
                raise ValueError("must name a bucket: s3://bucket/prefix")
        return value

    @field_validator("nomad_addr", "web_nomad_ui_url")
    @classmethod
    def _nomad_addr(cls, value: str | None) -> str | None:
        return check_url(value, ("http", "https")) if value else value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _s3_endpoint(cls, value: str | None) -> str | None:
        return check_url(value, ("http", "https")) if value else value

    @field_validator("metrics_address", "web_address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not _is_hostname(value):
            raise ValueError("must be an IP address (0.0.0.0, ::) or a host name")
        return value

    @field_validator("web_login_rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        # The notation `limits` parses, checked without importing it (start-up time).
        if not _RATE.fullmatch(value.strip()):
            raise ValueError("must be a rate such as 5/minute, 20/hour or 10 per 2 minutes")
        return value.strip()

    @field_validator("job_type_modules")
    @classmethod
    def _module_names(cls, value: list[str]) -> list[str]:
        for name in value:
            parts = name.split(".")
            if not _MODULE_NAME.match(name) or any(keyword.iskeyword(p) for p in parts):
                raise ValueError(
                    f"must be importable module names (dotted Python identifiers); {name!r} is not"
                )
        return value

    @field_validator("h5repack_input_pattern", "image_ingest_filter")
    @classmethod
    def _pattern(cls, value: str) -> str:
        return check_pattern(value)

    @field_validator("nomad_service_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return check_cron(value)

    @model_validator(mode="after")
    def _heartbeat_within_timeout(self) -> Settings:
        # A heartbeat no more often than the timeout makes every running job look stale.
        if self.heartbeat_interval_seconds >= self.heartbeat_timeout_seconds:
            raise ValueError(
                f"heartbeat_interval_seconds={self.heartbeat_interval_seconds:g}: must be "
                f"less than heartbeat_timeout_seconds ({self.heartbeat_timeout_seconds:g})"
            )
        return self

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


def _range_of(loc: tuple[Any, ...]) -> str | None:
    """What the numeric setting at ``loc`` (a field, a map entry, a flavor's attribute)
    allows, from its constraints: ``a finite number between 0.01 and 3600``."""
    model: type[BaseModel] = Settings
    annotation: Any = None
    metadata: list[Any] = []
    for part in loc:
        if annotation is None or (
            isinstance(annotation, type) and issubclass(annotation, BaseModel)
        ):
            model = annotation or model
            info = model.model_fields.get(str(part))
            if info is None:
                return None
            annotation, metadata = info.annotation, list(info.metadata)
        elif get_origin(annotation) is dict:
            annotation, metadata = get_args(annotation)[1], []
        else:
            return None
        while True:  # unwrap Optional and Annotated
            if get_origin(annotation) is Annotated:
                inner, *extra = get_args(annotation)
                for item in extra:
                    metadata.extend(item.metadata if isinstance(item, FieldInfo) else [item])
                annotation = inner
            elif get_origin(annotation) in (Union, type(int | None)):
                annotation = next(a for a in get_args(annotation) if a is not type(None))
            else:
                break
    if annotation not in (int, float):
        return None
    bounds: dict[str, float] = {}
    for item in metadata:
        for kind in ("ge", "gt", "le", "lt"):
            if isinstance(getattr(item, kind, None), int | float):
                bounds[kind] = getattr(item, kind)
    kind = "an integer" if annotation is int else "a finite number"

    def num(value: float) -> str:
        return str(int(value)) if float(value).is_integer() else repr(float(value))

    low = f"at least {num(bounds['ge'])}" if "ge" in bounds else None
    low = f"greater than {num(bounds['gt'])}" if "gt" in bounds else low
    high = f"at most {num(bounds['le'])}" if "le" in bounds else None
    high = f"less than {num(bounds['lt'])}" if "lt" in bounds else high
    if "ge" in bounds and "le" in bounds:
        return f"{kind} between {num(bounds['ge'])} and {num(bounds['le'])}"
    return " and ".join([kind, *(p for p in (low, high) if p)]).replace(" and ", " ", 1)


def _secret_field(name: str) -> bool:
    info = Settings.model_fields.get(name)
    return info is not None and SecretStr in (get_args(info.annotation) or (info.annotation,))


def _shown_value(loc: tuple[Any, ...], value: Any) -> str:
    """``value`` as the operator gave it, a secret's password or whole value hidden."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    text = value if isinstance(value, str) else repr(value)
    if loc and _secret_field(str(loc[0])):
        # A URL keeps its scheme, user and host (what is usually wrong), never its password.
        masked = re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", text)
        text = masked if masked != text or "//" in text else "***"
    return text if len(text) <= 200 else text[:197] + "..."


def describe_settings_error(error: ValidationError) -> str:
    """One line for the first invalid setting of ``error``: ``setting loop_interval=inf:
    must be a finite number between 0.01 and 3600`` (and how many more are invalid)."""
    errors = error.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    context_error = (first.get("ctx") or {}).get("error")
    if first["type"] == "value_error" and context_error is not None:
        reason = str(context_error)
    elif first["type"] in ("missing", "extra_forbidden"):
        reason = first["msg"].lower()
    else:
        allowed = _range_of(loc)
        reason = f"must be {allowed}" if allowed else first["msg"][:1].lower() + first["msg"][1:]
    more = f" (and {len(errors) - 1} more invalid)" if len(errors) > 1 else ""
    if not loc:  # a check across settings names them itself
        return f"setting {reason}{more}"
    name = ".".join(str(part) for part in loc)
    return f"setting {name}={_shown_value(loc, first.get('input'))}: {reason}{more}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests call ``get_settings.cache_clear()``.
    An invalid value raises :class:`InvalidSettingError` (one line, see
    :func:`describe_settings_error`)."""
    try:
        return Settings()
    except ValidationError as error:
        # Not chained: pydantic's report would print a secret's value under --debug.
        raise InvalidSettingError(describe_settings_error(error)) from None
