"""Which executor the configuration names."""

from __future__ import annotations

from joblife.config import Settings, get_settings
from joblife.executors.base import Executor


def build_executor(settings: Settings | None = None, *, dispatching: bool = True) -> Executor:
    """The Nomad executor when ``nomad_addr`` is set, else the local executor (the
    embedded default). ``dispatching`` false: an executor only to stop executions (no
    attempt secret key needed on Nomad, see :meth:`NomadExecutor.from_settings`)."""
    settings = settings or get_settings()
    if settings.nomad_addr:
        from joblife.executors.nomad import NomadExecutor

        return NomadExecutor.from_settings(settings, dispatching=dispatching)
    from joblife.executors.local import LocalExecutor

    return LocalExecutor.from_settings(settings)
