"""``joblife create|configure|dispatch|monitor|run``: the life-cycle services (imported by
the commands, not with this module)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Annotated, Any

import typer

from joblife.cli.choices import SERVICES, parse_services
from joblife.cli.output import print_json, print_line
from joblife.cli.state import get_state
from joblife.cli.usage import usage

if TYPE_CHECKING:
    from joblife.lifecycle.common import ServiceContext

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _context(ctx: typer.Context) -> ServiceContext:
    from joblife.config import get_settings
    from joblife.lifecycle.common import ServiceContext

    return ServiceContext(get_state(ctx).engine(), get_settings())


def _show(result: Any, as_json: bool) -> None:
    if as_json:
        print_json(result)
        return
    for item in result if isinstance(result, list) else [result]:
        print_line(", ".join(f"{k}={v}" for k, v in item.items() if v not in (None, {}, [])))


def create(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Discover new input products of every job type and create their jobs (one cycle)."""
    from joblife.lifecycle.creation import create_jobs

    _show([r.as_dict() for r in create_jobs(_context(ctx))], as_json)


def configure(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Configure initialized jobs and re-check those waiting for a dependency (one cycle)."""
    from joblife.lifecycle.configuration import configure_jobs

    _show([r.as_dict() for r in configure_jobs(_context(ctx))], as_json)


def dispatch(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Start ready jobs through the executor, within the in-flight caps (one cycle)."""
    from joblife.executors import build_executor
    from joblife.lifecycle.dispatch import dispatch_jobs

    _show(dispatch_jobs(_context(ctx), build_executor()).as_dict(), as_json)


def monitor(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Reconcile running jobs with the executor and retry failed ones (one cycle)."""
    from joblife.executors import build_executor
    from joblife.lifecycle.monitor import Monitor

    _show(Monitor(_context(ctx), build_executor()).run_cycle().as_dict(), as_json)


def run(
    ctx: typer.Context,
    once: Annotated[
        bool, typer.Option("--once", help="One cycle of each service, then exit (cron).")
    ] = False,
    interval: Annotated[
        float | None, typer.Option(help="Seconds between idle cycles (default: loop_interval).")
    ] = None,
    services: Annotated[
        str, typer.Option(help=f"Comma-separated services to run (of {', '.join(SERVICES)}).")
    ] = ",".join(SERVICES),
    as_json: JsonOption = False,
) -> None:
    """Run the life-cycle services in this process until SIGTERM or SIGINT.

    With the metrics_port setting, also serves the Prometheus metrics (not with --once).
    """
    with usage("--services", ctx):
        service_names = parse_services(services)
    stop = threading.Event()
    if once:
        from joblife.executors import build_executor
        from joblife.lifecycle.orchestrator import Orchestrator

        orchestrator = Orchestrator(
            _context(ctx), build_executor(), services=service_names, stop_event=stop
        )
        try:
            report = orchestrator.run_once()
        finally:
            orchestrator.close()
        _show(report.as_dict(), as_json)
        if report.errors:
            raise typer.Exit(1)
        return
    from joblife.signals import stop_on_signals

    # Before anything is built (job types imported, executor): a supervisor's SIGTERM
    # while the command starts must end it as cleanly as one in the loop, not kill it.
    # Kept through the shutdown: a second signal then must not cut it short.
    with stop_on_signals(stop, "stopping after the current service"):
        _run_forever(ctx, service_names, stop, interval)


def _run_forever(
    ctx: typer.Context, service_names: list[str], stop: threading.Event, interval: float | None
) -> None:
    """Build the orchestrator and cycle until ``stop`` is set (at once if it already is).
    The metrics server, if configured, starts first: a port in use ends the command before
    any service runs."""
    from joblife.cli.ops_commands import serve_metrics
    from joblife.config import get_settings
    from joblife.executors import build_executor
    from joblife.lifecycle.orchestrator import Orchestrator

    settings = get_settings()
    metrics = (
        serve_metrics(
            get_state(ctx).engine(),
            settings.metrics_port,
            settings.metrics_address,
            "set another metrics_port (JOBLIFE_METRICS_PORT)",
        )
        if settings.metrics_port is not None
        else None
    )
    try:
        orchestrator = Orchestrator(
            _context(ctx), build_executor(), services=service_names, stop_event=stop
        )
        orchestrator.run_forever(interval)
    finally:
        if metrics is not None:
            metrics.stop()
