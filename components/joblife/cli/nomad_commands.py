"""``joblife nomad render|deploy``: the Nomad job specs of this installation (the spec
rendering and the Nomad client are imported by the commands, not with this module)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from joblife.cli.output import add_row, make_table, print_json, print_table

if TYPE_CHECKING:
    from joblife.nomad.specs import RenderedSpec

nomad_app = typer.Typer(
    name="nomad", help="Nomad: render the job specs and client configurations, deploy them."
)


class ServiceMode(StrEnum):
    """How ``deploy`` runs the services on Nomad."""

    periodic = "periodic"
    long_running = "long-running"
    none = "none"


def _specs() -> list[RenderedSpec]:
    from joblife.config import get_settings
    from joblife.model import load_job_types
    from joblife.nomad.specs import render_specs

    settings = get_settings()
    return render_specs(settings, load_job_types(settings))


@nomad_app.command("render")
def render(
    out: Annotated[
        Path | None,
        typer.Option(help="Write the files under this directory (default: print them)."),
    ] = None,
) -> None:
    """Render the Nomad job specs and client configurations as HCL.

    The processing jobs (one per job type), the service jobs (periodic and long-running)
    and a client configuration per worker flavor.
    """
    specs = _specs()
    if out is None:
        for spec in specs:
            typer.echo(f"# ==> {spec.path} <==")
            typer.echo(spec.text)
        return
    for spec in specs:
        path = out / spec.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(spec.text)
        typer.echo(str(path))


@nomad_app.command("deploy")
def deploy(
    services: Annotated[
        ServiceMode,
        typer.Option(
            help="Services as periodic jobs (one per service), as the long-running "
            "`joblife run` job, or not at all."
        ),
    ] = ServiceMode.periodic,
    web: Annotated[
        bool, typer.Option("--web", help="Also register the dashboard (services/joblife-web).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Register the job specs with Nomad (JOBLIFE_NOMAD_ADDR).

    The processing jobs, the services as chosen, and with --web the dashboard: Nomad parses
    each spec, then registers it.
    """
    from joblife.config import get_settings
    from joblife.nomad.client import nomad_client
    from joblife.nomad.deploy import deploy_specs
    from joblife.nomad.specs import SERVICES_JOB

    def wanted(spec: RenderedSpec) -> bool:
        if spec.kind == "web":
            return web
        if spec.kind != "service":
            return spec.kind == "processing"
        if services is ServiceMode.long_running:
            return spec.job_id == SERVICES_JOB
        return services is ServiceMode.periodic and spec.job_id != SERVICES_JOB

    deployed = deploy_specs(nomad_client(get_settings()), filter(wanted, _specs()))
    if as_json:
        print_json([{"job_id": d.job_id, "path": d.path, "eval_id": d.eval_id} for d in deployed])
        return
    table = make_table(["job", "spec", "evaluation"])
    for item in deployed:
        add_row(table, [item.job_id, item.path, item.eval_id])
    print_table(table)
