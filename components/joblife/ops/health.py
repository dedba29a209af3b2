"""Health checks: the database and every service the configuration names, one result each.

Each check is bounded by ``health_timeout_seconds`` and never raises: a failure is a
result naming the service and why. A service that is not configured is skipped (its
embedded default has nothing to reach), except storage, whose default is a local
directory that is checked like any other, and the broker, whose default is the local
publication spool: the ``broker`` check then names the spool file and checks that it can
be written (skipped only with ``publication_spool = none``: the messages stay in the outbox).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from joblife.config import Settings
from joblife.logs import configured_secrets, redact

#: The checks, in the order they run and are shown.
CHECKS = (
    "database",
    "job_types",
    "broker",
    "nomad",
    "nomad_jobs",
    "container_engine",
    "storage",
)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check. ``ok`` None: skipped (not configured)."""

    name: str
    ok: bool | None
    target: str
    detail: str
    seconds: float = 0.0

    @property
    def state(self) -> str:
        return "skip" if self.ok is None else "ok" if self.ok else "FAIL"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "state": self.state}

    def line(self) -> str:
        """One line for an operator: ``ok    database  <where>: <detail> (12 ms)``."""
        timing = f" ({self.seconds * 1000:.0f} ms)" if self.ok is not None else ""
        return f"{self.state:<5} {self.name:<16} {self.target}: {self.detail}{timing}"


class _Skip(Exception):
    """A check that does not apply (the service is not configured)."""


def run_checks(
    settings: Settings, database_url: Callable[[], str], only: Sequence[str] = ()
) -> list[CheckResult]:
    """Run the checks (all, or those named in ``only``) in order; ``database_url`` is
    called for the database check only (it may start the embedded server)."""
    unknown = set(only) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)} (known: {', '.join(CHECKS)})")
    checks: dict[str, Callable[[], tuple[str, str]]] = {
        "database": lambda: _database(settings, database_url()),
        "job_types": lambda: _job_types(settings),
        "broker": lambda: _broker(settings),
        "nomad": lambda: _nomad(settings),
        "nomad_jobs": lambda: _nomad_jobs(settings),
        "container_engine": lambda: _container_engine(settings),
        "storage": lambda: _storage(settings),
    }
    secrets = configured_secrets(settings)
    results = []
    for name in CHECKS:
        if only and name not in only:
            continue
        start = time.perf_counter()
        target = "?"
        try:
            target, detail = checks[name]()
            ok: bool | None = True
        except _Skip as skip:
            target, detail, ok = "-", str(skip), None
        except _Failed as failed:
            target, detail, ok = failed.target, str(failed), False
        except Exception as exc:
            detail, ok = _first_line(exc), False
        results.append(
            CheckResult(
                name,
                ok,
                redact(str(target), secrets),
                redact(detail, secrets),
                round(time.perf_counter() - start, 4),
            )
        )
    return results


class _Failed(Exception):
    def __init__(self, target: str, message: str) -> None:
        super().__init__(message)
        self.target = target


_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\"()\]]+")


def _first_line(exc: BaseException) -> str:
    """A short reason: the root cause of chained and wrapped errors (pika and python-nomad
    wrap the socket error), its ``[Errno N] ...`` part when there is one."""
    best, seen = exc, set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if str(current).strip():
            best = current
        inner = getattr(current, "exceptions", None) or [
            a for a in getattr(current, "args", ()) if isinstance(a, BaseException)
        ]
        wrapped = getattr(current, "exception", None)  # pika's connector errors
        if not inner and isinstance(wrapped, BaseException):
            inner = [wrapped]
        current = inner[-1] if inner else current.__cause__
    text = str(best).strip()
    match = _ERRNO.search(text)
    if match:
        return match.group(0).strip().rstrip(":").strip()
    line = text.splitlines()[0] if text else type(best).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _database(settings: Settings, url: str) -> tuple[str, str]:
    from sqlalchemy import text
    from sqlalchemy.pool import NullPool

    from joblife.cli.state import hide_password
    from joblife.db.engine import create_joblife_engine
    from joblife.db.migrate import pending_revisions

    target = hide_password(url)
    timeout = max(1, round(settings.health_timeout_seconds))
    engine = create_joblife_engine(
        url,
        poolclass=NullPool,
        connect_args={"application_name": "joblife-health", "connect_timeout": timeout},
    )
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
        pending = pending_revisions(engine, settings)
    except Exception as exc:
        raise _Failed(target, f"unreachable: {_first_line(getattr(exc, 'orig', exc))}") from exc
    finally:
        engine.dispose()
    if pending:
        raise _Failed(
            target,
            f"PostgreSQL {version}, not migrated (pending {', '.join(sorted(pending))}): "
            "run `joblife db upgrade`",
        )
    return target, f"PostgreSQL {version}, migrated"


def _job_types(settings: Settings) -> tuple[str, str]:
    """Every job type of the entry points and ``job_type_modules`` loaded; one that cannot
    load fails the check (the others still run: see joblife.model.registry)."""
    from joblife.model.registry import job_type_load_errors, load_job_types

    with _quiet_registry():
        loaded = sorted(load_job_types(settings))
        broken = job_type_load_errors(settings)
    if broken:
        reasons = "; ".join(f"{name}: {error}" for name, error in sorted(broken.items()))
        raise _Failed(
            ", ".join(sorted(broken)),
            f"{len(broken)} job type{'s' if len(broken) > 1 else ''} cannot load ({reasons}); "
            f"loaded: {', '.join(loaded) or 'none'}",
        )
    return ", ".join(loaded) or "-", f"{len(loaded)} loaded"


@contextlib.contextmanager
def _quiet_registry() -> Iterator[None]:
    """The registry logs a broken type at ERROR: the job_types check's result says it once."""
    registry_log = logging.getLogger("joblife.registry")
    level = registry_log.level
    registry_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        registry_log.setLevel(level)


def _broker(settings: Settings) -> tuple[str, str]:
    if settings.amqp_url is None:
        return _spool(settings)
    import pika

    url = settings.amqp_url.get_secret_value()
    target = redact(url)
    timeout = settings.health_timeout_seconds
    try:
        parameters = pika.URLParameters(url)
        parameters.connection_attempts = 1
        parameters.retry_delay = 0
        parameters.socket_timeout = timeout
        parameters.stack_timeout = timeout
        parameters.blocked_connection_timeout = timeout
        # pika logs every step of a failed connection at ERROR: the result says it once.
        pika_log = logging.getLogger("pika")
        level = pika_log.level
        pika_log.setLevel(logging.CRITICAL)
        try:
            connection = pika.BlockingConnection(parameters)
        finally:
            pika_log.setLevel(level)
    except Exception as exc:
        raise _Failed(target, f"unreachable: {_first_line(exc) or type(exc).__name__}") from exc
    connection.close()
    return target, "connected"


def _spool(settings: Settings) -> tuple[str, str]:
    """Without a broker: the spool the relay appends to, if it can (nothing is written)."""
    from joblife.publication.spool import NO_SPOOL, effective_spool, spool_problem

    spool = effective_spool(settings)
    if spool is None:
        raise _Skip(
            f"not configured (no broker, publication_spool = {NO_SPOOL}: the messages stay "
            "in the outbox and the jobs at processed)"
        )
    problem = spool_problem(spool)
    if problem is not None:
        raise _Failed(str(spool), f"no broker configured and the spool is not usable: {problem}")
    return str(spool), "no broker configured: product messages go to this spool file (writable)"


def _nomad_probe_client(settings: Settings) -> Any:
    """A python-nomad client that answers now: no retries, timeouts within the check's."""
    if not settings.nomad_addr:
        raise _Skip("not configured (local executor)")
    from joblife.nomad.client import nomad_client

    timeout = settings.health_timeout_seconds
    return nomad_client(
        settings.model_copy(
            update={
                "nomad_retries": 0,  # a probe answers now, it does not wait for recovery
                "nomad_connect_timeout_seconds": min(
                    timeout, settings.nomad_connect_timeout_seconds
                ),
                "nomad_read_timeout_seconds": min(timeout, settings.nomad_read_timeout_seconds),
            }
        ),
        pool_size=1,
    )


def _nomad(settings: Settings) -> tuple[str, str]:
    from joblife.nomad.client import describe

    client = _nomad_probe_client(settings)
    try:
        leader = client.status.leader.get_leader()
    except Exception as exc:
        raise _Failed(settings.nomad_addr, f"unreachable: {describe(exc)}") from exc
    if not leader:
        raise _Failed(settings.nomad_addr, "no cluster leader")
    return settings.nomad_addr, f"leader {leader}"


def _nomad_jobs(settings: Settings) -> tuple[str, str]:
    """The parameterized job of every loaded job type takes dispatches: registered, not
    stopped, parameterized (see :func:`joblife.executors.nomad.parent_job_problem`). A type
    whose job does not is one whose dispatch ``joblife run`` pauses. Skipped while Nomad
    does not answer at all (the ``nomad`` check fails then)."""
    from nomad.api.exceptions import BaseNomadException

    from joblife.executors.nomad import parent_job_problem
    from joblife.model.registry import load_job_types
    from joblife.nomad.client import describe, http_status, is_unreachable

    client = _nomad_probe_client(settings)
    with _quiet_registry():
        job_types = load_job_types(settings)
    failing: list[str] = []  # the parent jobs (or types without one) that fail
    problems: list[str] = []
    parents: list[str] = []
    for name, cls in sorted(job_types.items()):
        parent = cls.NOMAD_JOB_NAME
        if not parent:
            failing.append(name)
            problems.append(f"job type {name} names no Nomad job (NOMAD_JOB_NAME)")
            continue
        parents.append(parent)
        try:
            problem = parent_job_problem(client, parent)
        except BaseNomadException as exc:
            if is_unreachable(exc) and http_status(exc) not in (401, 403):
                raise _Skip(
                    f"Nomad does not answer ({describe(exc)}): see the nomad check"
                ) from exc
            problem = f"cannot read Nomad job {parent!r}: {describe(exc)}"
        if problem is not None:
            failing.append(parent)
            problems.append(f"job type {name}: {problem}")
    if problems:
        raise _Failed(
            ", ".join(failing),
            "; ".join(problems) + " (dispatch of the type pauses, its jobs wait: deploy the "
            "processing jobs, `joblife nomad deploy`)",
        )
    return ", ".join(parents) or "-", f"{len(parents)} parameterized jobs take dispatches"


def _container_engine(settings: Settings) -> tuple[str, str]:
    url = settings.container_engine_url or os.environ.get("DOCKER_HOST")
    if not url:
        raise _Skip("not configured (container_engine_url / DOCKER_HOST unset)")
    from joblife.runners.docker import DockerRunner

    try:
        client = DockerRunner(url, api_timeout=settings.health_timeout_seconds).client()
    except Exception as exc:
        raise _Failed(url, _first_line(exc)) from exc
    try:
        version = client.version().get("Version", "?")
    except Exception:
        version = "?"
    finally:
        client.close()
    return url, f"answers (version {version})"


def _storage(settings: Settings) -> tuple[str, str]:
    """Write, read back and delete a small probe object through the storage interface."""
    from joblife.storage import default_storage_url, open_storage

    url = default_storage_url(settings)
    key = f".joblife-health/{socket.gethostname()}-{os.getpid()}"
    try:
        storage = open_storage(url, settings)
        with tempfile.TemporaryDirectory(prefix="joblife-health-") as tmp:
            probe = Path(tmp) / "probe"
            probe.write_bytes(b"joblife health probe\n")
            storage.upload(probe, key)
            storage.download(key, Path(tmp) / "back")
            storage.delete(key)
    except Exception as exc:
        raise _Failed(url, f"not usable: {_first_line(exc)}") from exc
    return url, "writable (probe written, read and deleted)"
