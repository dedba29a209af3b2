"""``joblife publish``, ``joblife publications list``, ``joblife jobs republish``,
``joblife timeliness``: publication over RabbitMQ, for operators. The publication modules
(pika, SQLAlchemy) are imported by the commands, not with this module."""

from __future__ import annotations

import threading
from dataclasses import asdict
from datetime import timedelta
from typing import Annotated

import typer

from joblife.cli.actions import apply
from joblife.cli.choices import PublicationState
from joblife.cli.output import (
    add_row,
    format_duration,
    make_table,
    print_json,
    print_line,
    print_table,
)
from joblife.cli.parsing import parse_duration, parse_since
from joblife.cli.state import get_state
from joblife.cli.usage import usage
from joblife.errors import ConfigurationError

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

publications_app = typer.Typer(
    name="publications",
    help="The publication outbox: one row per product message.",
    no_args_is_help=True,
)


def publish(
    ctx: typer.Context,
    once: Annotated[
        bool,
        typer.Option("--once", help="Publish what the outbox holds now, then exit (cron)."),
    ] = False,
    interval: Annotated[
        float | None, typer.Option(help="Seconds between idle cycles (default: loop_interval).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Relay the outbox to RabbitMQ until SIGTERM or SIGINT.

    With publisher confirms; without a broker, to the local publication spool.
    """
    from joblife.config import get_settings
    from joblife.lifecycle.common import ServiceContext
    from joblife.publication.relay import PublicationService
    from joblife.publication.spool import effective_spool

    settings = get_settings()
    if settings.amqp_url is None and effective_spool(settings) is None:
        raise ConfigurationError(
            "no broker (JOBLIFE_AMQP_URL) nor spool (JOBLIFE_PUBLICATION_SPOOL) configured "
            "(publication_spool = none): the messages stay in the outbox "
            "(`joblife publications list`)"
        )
    stop = threading.Event()
    service = PublicationService(ServiceContext(get_state(ctx).engine(), settings), stop_event=stop)
    if once:
        try:
            report = service.run_cycle(max_batches=0)
        finally:
            service.close()
        data = report.as_dict()
        if as_json:
            print_json(data)
        else:
            print_line(", ".join(f"{k}={v}" for k, v in data.items() if v not in (None, 0)))
        result = report.result
        failed = result.unconfirmed or result.returned or result.nacked or result.too_large
        if report.error or failed:
            raise typer.Exit(1)
        return

    from joblife.signals import stop_on_signals

    with stop_on_signals(stop):
        service.run_forever(interval)


LIST_COLUMNS = {
    "id": "id",
    "job_id": "job",
    "job_type": "type",
    "job_status": "job status",
    "product": "product",
    "attempt": "attempt",
    "republication": "round",
    "state": "state",
    "published_at": "published",
    "message_id": "message id",
    "error": "error",
}


@publications_app.command("list")
def list_command(
    ctx: typer.Context,
    job_ids: Annotated[
        list[int] | None, typer.Option("--job", "-j", help="Only this job's (repeatable).")
    ] = None,
    state: Annotated[PublicationState | None, typer.Option(help="Only rows in this state.")] = None,
    limit: Annotated[int, typer.Option(min=0, help="At most this many rows (0: all).")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List the outbox rows, newest first.

    States: pending (waiting for the broker), published, failed (returned, refused or
    reported failed: see the error), superseded (an older attempt's).
    """
    from joblife.config import get_settings
    from joblife.publication.outbox import list_publications

    with get_state(ctx).session() as session:
        rows = list_publications(
            session,
            job_ids=job_ids or (),
            state=state.value if state is not None else None,
            limit=limit + 1 if limit else None,
        )
    truncated = bool(limit) and len(rows) > limit
    rows = rows[:limit] if limit else rows
    if as_json:
        print_json(rows)
        return
    table = make_table(list(LIST_COLUMNS.values()), right=["id", "job", "attempt", "round"])
    for row in rows:
        add_row(table, [row[key] for key in LIST_COLUMNS])
    print_table(table)
    if not rows:
        typer.echo("no matching publications")
    elif truncated:
        typer.echo(f"showing the first {limit} rows; more match (raise --limit or filter)")
    else:
        typer.echo(f"{len(rows)} publication{'s' if len(rows) != 1 else ''}")
    from joblife.publication.spool import publication_target

    settings = get_settings()
    if settings.amqp_url is None:
        typer.echo(
            f"no broker configured (JOBLIFE_AMQP_URL): messages {publication_target(settings)}"
        )


def republish_command(
    ctx: typer.Context,
    job_ids: Annotated[list[int], typer.Argument(metavar="ID...", help="Job ids.")],
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="Why (kept in the status history).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Publish jobs' products again, all or nothing.

    Done jobs get a new round of messages (new message ids); failed jobs with products
    (e.g. returned unroutable) go back to processed and their unconfirmed messages are sent.
    """
    from joblife.publication.outbox import republish

    apply(ctx, republish, "republished", job_ids, message, as_json)


def timeliness(
    ctx: typer.Context,
    target: Annotated[
        str | None,
        typer.Option(help="Target input→output time (default: timeliness_target_hours)."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only outputs published since: a date/time or a duration (7d)."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Only outputs published before this date/time.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Per job type: the time from input publication to output publication.

    Published jobs, p50/p90/p99/max from input publication to output publication, and the
    share within the target (from the job_timeliness view).
    """
    from joblife.config import get_settings
    from joblife.publication.timeliness import timeliness_summary

    with usage("--target", ctx):
        target_delta = parse_duration(target) if target is not None else None
    with usage("--since", ctx):
        since_time = parse_since(since) if since is not None else None
    with usage("--until", ctx):
        until_time = parse_since(until) if until is not None else None
    if target_delta is None:
        target_delta = timedelta(hours=get_settings().timeliness_target_hours)
    with get_state(ctx).session() as session:
        rows = timeliness_summary(session, target_delta, since_time, until_time)
    if as_json:
        print_json(
            {
                "target_seconds": target_delta.total_seconds(),
                "job_types": [asdict(row) for row in rows],
            }
        )
        return
    headers = ["job type", "published", "pending", "p50", "p90", "p99", "max", "within"]
    table = make_table(headers, right=headers[1:])
    for row in rows:
        share = row.within_target_share
        add_row(
            table,
            [
                row.job_type,
                row.published,
                row.pending,
                *(_duration(s) for s in (row.p50_seconds, row.p90_seconds, row.p99_seconds)),
                _duration(row.max_seconds),
                f"{share:.1%}" if share is not None else "",
            ],
        )
    print_table(table)
    typer.echo(f"target: {format_duration(target_delta)}")
    if not rows:
        typer.echo("no published or pending jobs in the window")


def _duration(seconds: float | None) -> str:
    return format_duration(timedelta(seconds=seconds)) if seconds is not None else ""
