"""``joblife health``, ``joblife metrics serve``, ``joblife stats``, ``joblife jobs stale``
and ``joblife cleanup``: the operations commands (``joblife.ops``, imported by the commands,
not with this module)."""

from __future__ import annotations

import errno
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from joblife.cli.choices import DEFAULT_METRICS_PORT, HEALTH_CHECKS, HealthCheck
from joblife.cli.output import add_row, format_duration, make_table, print_json, print_table
from joblife.cli.parsing import parse_duration, parse_since
from joblife.cli.state import get_state
from joblife.cli.usage import check_job_type, usage
from joblife.errors import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from joblife.ops.cleanup import PartitionReport
    from joblife.ops.metrics import MetricsServer

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

metrics_app = typer.Typer(
    name="metrics", help="Prometheus metrics of the job database.", no_args_is_help=True
)


def health(
    ctx: typer.Context,
    check: Annotated[
        list[HealthCheck] | None,
        typer.Option(
            "--check",
            "-c",
            metavar="CHECK",
            help=f"Only this check (repeatable): {', '.join(HEALTH_CHECKS)}.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Check the database and every service the configuration names, one line each.

    Exit status 0 when every configured service answers, 1 otherwise (a probe).
    """
    from joblife.config import get_settings
    from joblife.ops.health import run_checks

    state = get_state(ctx)
    only = [c.value for c in check or ()]
    results = run_checks(get_settings(), state.database_url, only)
    failed = [r for r in results if r.ok is False]
    if as_json:
        print_json({"healthy": not failed, "checks": [r.as_dict() for r in results]})
    else:
        for result in results:
            typer.echo(result.line())
    for result in failed:
        typer.echo(f"error: {result.name} unhealthy: {result.target}: {result.detail}", err=True)
    if failed:
        raise typer.Exit(1)


@metrics_app.command("serve")
def metrics_serve(
    ctx: typer.Context,
    port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help=f"Port (default: metrics_port, else {DEFAULT_METRICS_PORT})."
        ),
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Address to listen on (default: metrics_address).")
    ] = None,
) -> None:
    """Serve the Prometheus metrics on http://ADDRESS:PORT/metrics until SIGTERM or SIGINT."""
    from joblife.config import get_settings

    settings = get_settings()
    chosen = port if port is not None else settings.metrics_port
    server = serve_metrics(
        get_state(ctx).engine(),
        DEFAULT_METRICS_PORT if chosen is None else chosen,
        address or settings.metrics_address,
        "choose another with --port",
    )
    from joblife.signals import stop_on_signals

    stop = threading.Event()
    typer.echo(f"serving metrics on http://{server.address}:{server.port}/metrics")
    try:
        with stop_on_signals(stop):
            stop.wait()
    finally:
        server.stop()


def serve_metrics(engine: Engine, port: int, address: str, hint: str) -> MetricsServer:
    """Start the metrics server (:func:`joblife.ops.metrics.start_metrics_server`); a port
    that cannot be listened on is a ConfigurationError naming the address and the port,
    with ``hint`` (how to choose another) when it is in use."""
    from joblife.ops.metrics import start_metrics_server

    try:
        return start_metrics_server(engine, port, address)
    except OSError as error:
        where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        if error.errno == errno.EADDRINUSE:
            reason = f"port {port} is in use (another joblife run or metrics serve?): {hint}"
        else:
            reason = error.strerror or str(error)
        raise ConfigurationError(f"cannot serve the metrics on {where}: {reason}") from error


def stats(
    ctx: typer.Context,
    since: Annotated[
        str,
        typer.Option(
            help="Start of the period: a date/time (2026-11-01, 2026-11-01T08:00+00:00) or a "
            "duration back from now (30m, 2h, 3d)."
        ),
    ] = "24h",
    until: Annotated[
        str | None, typer.Option(help="End of the period (same forms; default: now).")
    ] = None,
    job_type: Annotated[
        str | None, typer.Option("--type", "-t", help="Only this job type.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Per job type over a period: jobs created, done and failed, attempts, step durations.

    Jobs created, done, failed by error kind; attempts and their success rate; p50/p90
    duration of each worker step and of the whole job.
    """
    from joblife.ops.stats import job_stats

    now = datetime.now(UTC)
    with usage("--since", ctx):
        start = parse_since(since, now)
    with usage("--until", ctx):
        end = parse_since(until, now) if until is not None else now
        if end <= start:
            raise ValueError(f"empty period: {end.isoformat()} is not after --since")
    with get_state(ctx).session() as session:
        check_job_type(ctx, session, job_type)
        rows = job_stats(session, start, end, job_type)
    if as_json:
        print_json({"since": start, "until": end, "job_types": [r.as_dict() for r in rows]})
        return
    headers = ["job type", "created", "done", "cancelled", "internal", "external"]
    headers += ["attempts", "success", "attempts/done"]
    table = make_table(
        headers, right=headers[1:], title=f"{start:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M}"
    )
    for row in rows:
        rate = row.attempts["success_rate"]
        add_row(
            table,
            [
                row.job_type,
                row.created,
                row.done,
                row.cancelled,
                row.failed["internal_error"],
                row.failed["external_error"],
                row.attempts["started"],
                f"{rate:.1%}" if rate is not None else "",
                row.attempts["mean_per_done_job"],
            ],
        )
    print_table(table)
    if not rows:
        typer.echo("no status change in that period")
        return
    from joblife.ops.stats import STEPS

    names = [*STEPS, "turnaround"]
    durations = make_table(["job type", *names], right=names, title="duration p50 / p90")
    for row in rows:
        add_row(durations, [row.job_type, *(_pair(row.durations[n]) for n in names)])
    print_table(durations)


def _pair(values: dict[str, float | None]) -> str:
    if values["p50"] is None:
        return ""
    return f"{_seconds(values['p50'])} / {_seconds(values['p90'])}"


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2f}s" if value < 60 else format_duration(timedelta(seconds=value))


def stale(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, help="At most this many jobs.")] = 200,
    as_json: JsonOption = False,
) -> None:
    """List the jobs in a status for longer than its deadline, and why.

    Each with the reason the monitor (or the service that polices the status) gives, and
    what it will do.
    """
    from joblife.config import get_settings
    from joblife.model import load_job_types
    from joblife.ops.stale import stale_jobs

    settings = get_settings()
    job_types = load_job_types(settings)
    with get_state(ctx).session() as session:
        rows = stale_jobs(session, settings, job_types, datetime.now(UTC), limit)
    if as_json:
        print_json([row.as_dict() for row in rows])
        return
    table = make_table(["id", "type", "status", "for", "deadline", "reason", "next"], right=["id"])
    for row in rows:
        add_row(
            table,
            [
                row.job_id,
                row.job_type,
                row.status.label,
                row.age,
                format_duration(row.deadline) or "0s",
                row.reason,
                row.action,
            ],
        )
    print_table(table)
    typer.echo(f"{len(rows)} stale job{'s' if len(rows) != 1 else ''}" if rows else "no stale job")


def cleanup(
    ctx: typer.Context,
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than", help="Remove jobs done or cancelled for longer than this (30d)."
        ),
    ],
    export: Annotated[
        Path | None,
        typer.Option(
            "--export",
            dir_okay=False,
            help="Append each removed job (with its history and outbox rows), and the "
            "rows of each month of history dropped, to this JSON-lines file first.",
        ),
    ] = None,
    execute: Annotated[
        bool, typer.Option("--execute", help="Remove them (without it: a dry run).")
    ] = False,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Jobs per transaction (default: cleanup_batch_size)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Remove the jobs done or cancelled longer ago than a retention period.

    With their history and outbox rows, in bounded batches; the months of history older
    than the period are dropped (the rows of jobs kept stay). A dry run unless --execute.
    """
    from joblife.config import get_settings
    from joblife.ops.cleanup import cleanup as run_cleanup

    with usage("--older-than", ctx):
        retention = parse_duration(older_than)
    settings = get_settings()
    report = run_cleanup(
        get_state(ctx).engine(),
        retention,
        datetime.now(UTC),
        execute=execute,
        export=export,
        batch_size=batch_size or settings.cleanup_batch_size,
        months_ahead=settings.history_partition_months_ahead,
    )
    if as_json:
        print_json(report.as_dict())
        return
    verb = "removed" if execute else "would remove"
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(report.by_status.items())) or "none"
    typer.echo(
        f"{verb} {report.jobs} job{'s' if report.jobs != 1 else ''} finished before "
        f"{report.cutoff.isoformat(timespec='seconds')} ({statuses}), "
        f"{report.history_rows} history rows, {report.publications} outbox rows"
        + (f" in {report.batches} batches" if execute else "")
    )
    for part in report.partitions:
        typer.echo(_partition_line(part, execute))
    if report.partitions_created:
        typer.echo(f"history partitions created: {', '.join(report.partitions_created)}")
    if execute and export is not None:
        typer.echo(f"exported to {export}")
    if not execute and (report.jobs or report.history_rows_dropped):
        typer.echo("dry run: nothing removed (add --execute to remove)")


def _partition_line(part: PartitionReport, execute: bool) -> str:
    """One month of history the clean-up dropped (or would drop, or left)."""
    kept = f", {part.kept} kept for jobs still there" if part.kept else ""
    if part.left is not None:
        return f"history {part.name}: {part.rows} rows left as they are ({part.left})"
    verb = "dropped" if execute else "would drop"
    return f"history {part.name}: {verb} {part.dropped} of {part.rows} rows{kept}"
