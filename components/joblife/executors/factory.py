"""Which executor the configuration names."""

from __future__ import annotations

from joblife.config import Settings, get_settings
from joblife.executors.base import Executor


def build_executor(settings: Settings | None = None) -> Executor:
    """The Nomad executor when ``nomad_addr`` is set, else the local executor (the
    embedded default)."""
    settings = settings or get_settings()
    if settings.nomad_addr:
        from joblife.executors.nomad import NomadExecutor

        return NomadExecutor.from_settings(settings)
    from joblife.executors.local import LocalExecutor

    return LocalExecutor.from_settings(settings)
