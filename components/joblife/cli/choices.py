"""The values some options accept, known when the command tree is built.

They are copies of constants of modules that import SQLAlchemy, pika or the settings
(importing those for a help text would make every ``joblife`` invocation pay for them);
``tests/test_cli_surface.py`` checks that each copy equals its original.
"""

from __future__ import annotations

from enum import StrEnum

#: :data:`joblife.ops.health.CHECKS`.
HEALTH_CHECKS = (
    "database",
    "job_types",
    "broker",
    "nomad",
    "nomad_jobs",
    "container_engine",
    "storage",
)
#: :data:`joblife.publication.outbox.PUBLICATION_STATES`.
PUBLICATION_STATES = ("pending", "published", "failed", "superseded")
#: :data:`joblife.lifecycle.orchestrator.SERVICES`.
SERVICES = ("create", "configure", "dispatch", "monitor", "publish")
#: :data:`joblife.ops.metrics.DEFAULT_PORT`.
DEFAULT_METRICS_PORT = 9464

#: ``joblife health --check`` (typer makes the choice of an enum's values).
HealthCheck = StrEnum("HealthCheck", {name: name for name in HEALTH_CHECKS})
#: ``joblife publications list --state``.
PublicationState = StrEnum("PublicationState", {name: name for name in PUBLICATION_STATES})


def parse_services(text: str) -> list[str]:
    """``create,dispatch`` → the service names; ValueError naming the known ones for an
    unknown name or none at all."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SERVICES]
    if unknown or not names:
        what = f"unknown services {', '.join(map(repr, unknown))}" if unknown else "no service"
        raise ValueError(f"{what} (known: {', '.join(SERVICES)})")
    return names
