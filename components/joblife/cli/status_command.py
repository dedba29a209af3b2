"""``joblife status``: how many jobs of each type are in each status, how many discovered
products creation refused, and where the product messages go (broker, spool or outbox).

On a database without joblife's schema (a new data dir) it says so and what to run next:
``joblife db upgrade``, or ``joblife demo``; with no jobs on the embedded server, it points
at the demo's own database if a demo made one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from joblife.cli.output import add_row, make_table, print_json, print_table
from joblife.cli.state import get_state

if TYPE_CHECKING:
    from sqlalchemy.exc import DBAPIError

    from joblife.cli.queries import StatusSummary
    from joblife.cli.state import CliState

#: SQLSTATEs of a schema that is missing or old (as :mod:`joblife.cli.errors` reads them):
#: undefined table / function / column.
NOT_MIGRATED_CODES = frozenset({"42P01", "42883", "42703"})


def summary_json(summary: StatusSummary) -> dict[str, Any]:
    """The summary for ``--json``: statuses present, per-type counts and totals."""
    return {
        "statuses": [s.label for s in summary.statuses],
        "job_types": [
            {
                "job_type": job_type,
                "counts": {s.label: n for s, n in sorted(counts.items())},
                "total": summary.type_total(job_type),
            }
            for job_type, counts in summary.counts.items()
        ],
        "totals": {s.label: summary.status_total(s) for s in summary.statuses},
        "total": summary.total,
        "rejected_products": summary.rejected,
    }


def print_summary(summary: StatusSummary) -> None:
    """The job type x status table, with a total column and, for several types, a total row."""
    headers = ["job type", *(s.label for s in summary.statuses), "total"]
    table = make_table(headers, right=headers[1:])
    job_types = list(summary.counts)
    for index, job_type in enumerate(job_types):
        counts = summary.counts[job_type]
        add_row(
            table,
            [job_type, *(counts.get(s, 0) for s in summary.statuses), summary.type_total(job_type)],
            end_section=index == len(job_types) - 1 and len(job_types) > 1,
        )
    if len(job_types) > 1:
        add_row(
            table,
            ["total", *(summary.status_total(s) for s in summary.statuses), summary.total],
        )
    print_table(table)
    if not job_types:
        typer.echo("no jobs yet")
    if summary.rejected:
        by_type = ", ".join(f"{job_type} {n}" for job_type, n in summary.rejected.items())
        typer.echo(
            f"products refused at creation (not jobs): {by_type}; "
            "see SELECT * FROM rejected_products"
        )


def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Job counts by type and status, and where product messages go.

    From the job_status_summary view: the counts the database maintains as jobs change
    (checked by `joblife jobs check-counts`), not a scan of the jobs."""
    from sqlalchemy.exc import DBAPIError

    from joblife.cli.queries import status_summary

    state = get_state(ctx)
    try:
        with state.session() as session:
            summary = status_summary(session)
    except DBAPIError as exc:
        if getattr(exc.orig, "pgcode", None) not in NOT_MIGRATED_CODES:
            raise
        _not_migrated(exc, state)
        raise typer.Exit(1) from None
    if as_json:
        print_json(summary_json(summary))
        return
    print_summary(summary)
    _where_messages_go()
    if not summary.counts:
        _point_at_the_demo(state)


def _where_messages_go() -> None:
    from joblife.config import get_settings
    from joblife.publication.spool import publication_target

    typer.echo(f"product messages {publication_target(get_settings())}")


def _not_migrated(error: DBAPIError, state: CliState) -> None:
    """The error line, then what a newcomer on a new data dir runs next."""
    from joblife.cli.errors import report_error
    from joblife.config import get_settings

    report_error(error, state)
    hints = [
        "a new data dir? `joblife db upgrade` creates the schema (for your own job types); "
        "`joblife demo` shows joblife at work on synthetic inputs, in a database of its own"
    ]
    if get_settings().database_url is None:
        hints += _point_at_the_demo(state, echo=False)
        hints.append(
            "the embedded PostgreSQL keeps running (started if it was not): "
            "`joblife db stop` stops it"
        )
    for hint in hints:
        typer.echo(f"hint: {hint}", err=True)


def _point_at_the_demo(state: CliState, echo: bool = True) -> list[str]:
    """On the embedded server, where a demo's jobs are if a demo run made its database
    (printed unless ``echo`` is false; returned as lines)."""
    import shlex

    from joblife.config import get_settings
    from joblife.demo import existing_demo_database

    try:
        url = existing_demo_database(state.engine(), get_settings())
    except Exception:  # only a hint: never the reason the command fails
        return []
    if url is None:
        return []
    line = (
        "the jobs of `joblife demo` are in a database of their own: "
        f"JOBLIFE_DATABASE_URL={shlex.quote(url)} joblife status"
    )
    if echo:
        typer.echo(line)
    return [line]
