"""``joblife jobs list``, ``joblife jobs show`` and ``joblife jobs check-counts``: read the
jobs. The queries (SQLAlchemy) are imported by the commands, not with this module."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from joblife.cli.output import add_row, make_table, print_json, print_table
from joblife.cli.parsing import PageCursor, parse_page_cursor, parse_since, parse_statuses
from joblife.cli.state import get_state
from joblife.cli.usage import check_job_type, usage
from joblife.errors import JobNotFound

jobs_app = typer.Typer(
    name="jobs",
    help="List and show jobs; retry, cancel, acknowledge (check) or republish them; find "
    "stale jobs; check the maintained counts.",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

LIST_COLUMNS = {
    "id": "id",
    "job_type": "type",
    "input_product_id": "input product",
    "tile_id": "tile",
    "status": "status",
    "status_changed_at": "status since",
    "time_in_status": "for",
    "attempt": "attempt",
    "priority": "priority",
}


@jobs_app.command("list")
def list_command(
    ctx: typer.Context,
    job_type: Annotated[
        str | None, typer.Option("--type", "-t", help="Only this job type.")
    ] = None,
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status", "-s", help="Only jobs in this status (repeatable, or comma-separated)."
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Only jobs whose status changed since then: a date/time (2026-11-01, "
            "2026-11-01T08:00+00:00; local time without offset) or a duration (30m, 2h, 3d)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=0, help="At most this many jobs (0: all).")] = 50,
    before: Annotated[
        str | None,
        typer.Option(
            metavar="ID[@TIME]",
            help="The next page: only the jobs after this point in this order. ID@TIME, "
            "as the previous page's hint prints it, continues exactly after that page's "
            "last job; a bare job ID starts after that job's current place (which moves "
            "when its status changes).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List jobs, the most recent status change first (the jobs_overview view).

    An unknown status or job type, or a malformed --since or --before, is a usage error
    (exit status 2).
    """
    from joblife.cli.queries import list_jobs

    with usage("--status", ctx):
        statuses = parse_statuses(status)
    with usage("--since", ctx):
        since_time = parse_since(since) if since is not None else None
    with usage("--before", ctx):
        cursor = parse_page_cursor(before) if before is not None else None
    with get_state(ctx).session() as session:
        check_job_type(ctx, session, job_type)
        rows = list_jobs(
            session,
            job_type=job_type,
            statuses=statuses,
            since=since_time,
            limit=limit + 1 if limit else None,
            before=cursor,
        )
    truncated = bool(limit) and len(rows) > limit
    rows = rows[:limit] if limit else rows
    if as_json:
        print_json(rows)
        return
    table = make_table(list(LIST_COLUMNS.values()), right=["id", "for", "attempt"])
    for row in rows:
        values = [row[key] for key in LIST_COLUMNS]
        values[list(LIST_COLUMNS).index("attempt")] = f"{row['attempt']}/{row['max_attempts']}"
        add_row(table, values)
    print_table(table)
    if not rows:
        typer.echo("no matching jobs")
    elif truncated:
        # The last row's key, not its id: that job may change status before the next page.
        last = PageCursor(rows[-1]["id"], rows[-1]["status_changed_at"])
        typer.echo(
            f"showing the first {limit} jobs; more match (next page: --before {last}, "
            "or raise --limit or narrow the filters)"
        )
    else:
        typer.echo(f"{len(rows)} job{'s' if len(rows) != 1 else ''}")


def _type_fields(session: Any, job: dict[str, Any]) -> dict[str, Any] | None:
    """The job type's own columns, or None if the type is not registered here."""
    from joblife.cli.queries import get_type_fields
    from joblife.model.registry import JobTypeError, load_job_types

    try:
        job_class = load_job_types().get(job["job_type"])
    except JobTypeError as error:
        typer.echo(f"warning: {error}; the job type's own columns are not shown", err=True)
        return None
    if job_class is None:
        return None
    return get_type_fields(session, job_class, job["id"])


@jobs_app.command("show")
def show(
    ctx: typer.Context,
    job_id: Annotated[int, typer.Argument(metavar="ID", help="The job's id.")],
    as_json: JsonOption = False,
) -> None:
    """Show every field of a job and its full status timeline."""
    from joblife.cli.queries import get_job, status_history

    with get_state(ctx).session() as session:
        job = get_job(session, job_id)
        if job is None:
            raise JobNotFound(f"job {job_id} not found", [job_id])
        type_fields = _type_fields(session, job)
        timeline = status_history(session, job_id)
    if as_json:
        print_json({"job": job, "type_fields": type_fields, "timeline": timeline})
        return
    fields = make_table(["field", "value"], title=f"job {job_id}")
    for key, value in job.items():
        add_row(fields, [key, value])
    if type_fields:
        fields.rows[-1].end_section = True
        for key, value in type_fields.items():
            add_row(fields, [key, value])
    print_table(fields)
    if type_fields is None:
        typer.echo(
            f"(job type {job['job_type']!r} is not registered here: its own columns are not shown)"
        )
    history = make_table(["time", "change", "message", "details"], title="status timeline")
    for change in timeline:
        previous = change["previous_status"] or "(created)"
        add_row(
            history,
            [
                change["time"],
                f"{previous} → {change['status']}",
                change["message"],
                change["details"] or None,
            ],
        )
    print_table(history)


@jobs_app.command("check-counts")
def check_counts(
    ctx: typer.Context,
    repair: Annotated[
        bool,
        typer.Option("--repair", help="Set the maintained counts to the count of the jobs."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Compare the maintained job counts with a count of the jobs.

    The counts the database maintains (what `joblife status` shows) are compared with a
    count of the jobs (a full read of the jobs table). Exit status 1 if any differ, also
    when --repair corrected them.
    """
    from joblife.db.counts import check_job_counts, repair_job_counts

    with get_state(ctx).session() as session:
        differences = repair_job_counts(session) if repair else check_job_counts(session)
    if as_json:
        print_json(
            {
                "consistent": not differences,
                "repaired": bool(repair and differences),
                "differences": [d.as_dict() for d in differences],
            }
        )
    elif not differences:
        typer.echo("the maintained job counts match a count of the jobs")
    else:
        table = make_table(
            ["job type", "status", "maintained", "actual"], right=["maintained", "actual"]
        )
        for difference in differences:
            add_row(
                table,
                [
                    difference.job_type,
                    difference.status.label,
                    difference.maintained,
                    difference.actual,
                ],
            )
        print_table(table)
    if differences:
        pairs = f"{len(differences)} (type, status) count{'s' if len(differences) != 1 else ''}"
        if repair:
            typer.echo(f"error: {pairs} differed from a count of the jobs: repaired", err=True)
        else:
            typer.echo(
                f"error: {pairs} differ from a count of the jobs "
                "(`joblife jobs check-counts --repair` sets them to it)",
                err=True,
            )
        raise typer.Exit(1)
