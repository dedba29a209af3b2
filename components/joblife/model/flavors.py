"""The worker-flavor catalogue: the sizes of worker a job type's science step can run on.

The built-in catalogue (extra_small ... extra_large) can be extended or overridden through
the ``worker_flavors`` setting (see docs/configuration.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from joblife.config import Settings, get_settings


@dataclass(frozen=True, slots=True)
class WorkerFlavor:
    """A worker size: what a Nomad client of this node class offers a processing job."""

    name: str
    vcpus: int
    memory_mib: int
    disk_gib: int


BUILTIN_FLAVORS: dict[str, WorkerFlavor] = {
    flavor.name: flavor
    for flavor in (
        WorkerFlavor("extra_small", vcpus=1, memory_mib=2048, disk_gib=20),
        WorkerFlavor("small", vcpus=2, memory_mib=4096, disk_gib=40),
        WorkerFlavor("medium", vcpus=4, memory_mib=8192, disk_gib=80),
        WorkerFlavor("large", vcpus=8, memory_mib=16384, disk_gib=160),
        WorkerFlavor("extra_large", vcpus=16, memory_mib=32768, disk_gib=320),
    )
}


def flavor_catalogue(settings: Settings | None = None) -> dict[str, WorkerFlavor]:
    """The built-in flavors updated with those given in configuration."""
    settings = settings or get_settings()
    catalogue = dict(BUILTIN_FLAVORS)
    for name, override in settings.worker_flavors.items():
        catalogue[name] = WorkerFlavor(name, **override.model_dump())
    return catalogue


def get_flavor(name: str, settings: Settings | None = None) -> WorkerFlavor:
    """The flavor called ``name``; KeyError naming the known flavors otherwise."""
    catalogue = flavor_catalogue(settings)
    try:
        return catalogue[name]
    except KeyError:
        known = ", ".join(sorted(catalogue))
        raise KeyError(f"unknown worker flavor {name!r} (known: {known})") from None
