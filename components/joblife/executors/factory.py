"""Which executor the configuration names."""

from __future__ import annotations

from joblife.config import Settings, get_settings
from joblife.errors import ConfigurationError
from joblife.executors.base import Executor


def build_executor(settings: Settings | None = None) -> Executor:
    """The local executor (the embedded default) unless Nomad is configured."""
    settings = settings or get_settings()
    if settings.nomad_addr:
        raise ConfigurationError(
            f"JOBLIFE_NOMAD_ADDR is set ({settings.nomad_addr}) but the Nomad executor is not "
            "part of this version; unset it to use the local executor"
        )
    from joblife.executors.local import LocalExecutor

    return LocalExecutor.from_settings(settings)
