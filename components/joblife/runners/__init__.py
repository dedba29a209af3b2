"""Runners: how a job's science step runs (one contract, :class:`Runner`).

``DockerRunner`` lives in :mod:`joblife.runners.docker`, imported only when used."""

from __future__ import annotations

from joblife.config import Settings
from joblife.runners.base import (
    DEFAULT_ISOLATION,
    TIMEOUT_RETURN_CODE,
    Capture,
    ContainerIsolation,
    Runner,
    RunResult,
    RunSpec,
)
from joblife.runners.process import ProcessRunner

__all__ = [
    "DEFAULT_ISOLATION",
    "TIMEOUT_RETURN_CODE",
    "Capture",
    "ContainerIsolation",
    "ProcessRunner",
    "RunResult",
    "RunSpec",
    "Runner",
    "make_runner",
]


def make_runner(kind: str, settings: Settings) -> Runner:
    """The runner called ``kind`` (``docker`` or ``process``), set up from ``settings``
    (the secrets its log redacts, the log limits, the container defaults)."""
    if kind == "docker":
        # Imported here: the docker SDK is heavy, and a process-runner worker never needs it.
        from joblife.runners.docker import DockerRunner

        return DockerRunner(
            settings.container_engine_url,
            pull_missing=settings.container_pull_missing,
            resource_limits=settings.container_resource_limits,
            capture=Capture.from_settings(settings),
            pids_limit=settings.container_pids_limit,
            unprivileged_user=settings.container_unprivileged_user,
        )
    if kind == "process":
        return ProcessRunner(Capture.from_settings(settings))
    raise ValueError(f"unknown science runner {kind!r} (known: docker, process)")
