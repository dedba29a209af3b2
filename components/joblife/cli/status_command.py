"""``joblife status``: how many jobs of each type are in each status, and how many
discovered products creation refused."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from joblife.cli.output import add_row, make_table, print_json, print_table
from joblife.cli.queries import StatusSummary, status_summary
from joblife.cli.state import get_state


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
    """Job counts by job type (rows) and status (columns), from the job_status_summary view:
    the counts the database maintains as jobs change (checked by `joblife jobs
    check-counts`), not a scan of the jobs."""
    with get_state(ctx).session() as session:
        summary = status_summary(session)
    if as_json:
        print_json(summary_json(summary))
    else:
        print_summary(summary)
