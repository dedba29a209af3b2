"""``joblife nomad deploy``: register the rendered job specs through Nomad's API.

Each spec goes the way ``nomad job run`` takes it: Nomad parses the HCL itself
(``POST /v1/jobs/parse``), so what is registered is exactly what the file says, then the
job is registered (``POST /v1/jobs``). Registering an unchanged job again is harmless.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from nomad.api.exceptions import BaseNomadException

import nomad
from joblife.errors import ExecutorError
from joblife.nomad.client import describe
from joblife.nomad.specs import RenderedSpec


@dataclass(frozen=True)
class Deployed:
    """One registered job: its id, the file it came from, Nomad's evaluation id."""

    job_id: str
    path: str
    eval_id: str | None


def deploy_specs(client: nomad.Nomad, specs: Iterable[RenderedSpec]) -> list[Deployed]:
    """Parse and register every job spec of ``specs`` (client configurations are for the
    client agents, not the API, and are skipped). Stops at the first refusal, naming the
    file and Nomad's reason; the jobs registered before it stay registered."""
    deployed = []
    for spec in specs:
        if spec.kind == "client":
            continue
        try:
            job = client.jobs.parse(spec.text, canonicalize=True)
            answer = client.jobs.register_job({"Job": job})
        except BaseNomadException as exc:
            raise ExecutorError(f"Nomad refused {spec.path}: {describe(exc)}") from exc
        deployed.append(Deployed(str(job.get("ID")), spec.path, answer.get("EvalID") or None))
    return deployed
