"""``joblife demo``: run the three reference job types end to end on the embedded defaults
(see :mod:`joblife.demo`), with live progress and a summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.table import Table
from rich.text import Text

from joblife.cli.output import add_row, console, make_table
from joblife.config import get_settings
from joblife.demo import (
    DemoResult,
    applied,
    demo_environment,
    generate_inputs,
    new_run_id,
    run_demo,
)
from joblife.model import JobStatus

#: The statuses shown as columns, in life-cycle order.
COLUMNS = [str(s) for s in JobStatus]


def demo(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Where the embedded database, storage and spool live (default: the "
            "normal data dir, JOBLIFE_DATA_DIR).",
        ),
    ] = None,
    jobs_per_type: Annotated[
        int, typer.Option("--jobs-per-type", min=1, max=50, help="Input products per type.")
    ] = 3,
    timeout: Annotated[
        float, typer.Option(min=1.0, help="Give up after this many seconds.")
    ] = 120.0,
) -> None:
    """Run the reference job types (h5repack, image ingest, tile time series) through the
    whole life cycle on synthetic inputs; exit 1 unless every demo job ends done."""
    run_id = new_run_id()
    out = console()
    with applied(demo_environment(data_dir, run_id)) as settings:
        out.print(f"joblife demo {run_id}: data in {settings.data_dir}")
        inputs = generate_inputs(settings, run_id, jobs_per_type)
        out.print(
            f"generated {inputs.total} input products "
            f"({', '.join(f'{len(p)} {t}' for t, p in inputs.products.items())})"
        )
        with Live(console=out, refresh_per_second=8, transient=True) as live:

            def progress(counts: dict[str, dict[str, int]], elapsed: float) -> None:
                live.update(_progress_table(counts, elapsed, inputs.total))

            result = run_demo(settings, inputs, progress, timeout)
    _summary(result, data_dir)
    if not result.all_done:
        raise typer.Exit(1)


def _progress_table(counts: dict[str, dict[str, int]], elapsed: float, total: int) -> Table:
    shown = [c for c in COLUMNS if any(c in per_type for per_type in counts.values())]
    table = make_table(["job type", *shown], right=shown, title="demo jobs by status")
    table.caption = f"{total} jobs, {elapsed:.1f} s"
    for job_type, per_status in counts.items():
        add_row(table, [job_type, *(per_status.get(c, "") for c in shown)])
    return table


def _summary(result: DemoResult, data_dir: Path | None) -> None:
    out = console()
    durations = make_table(
        ["job type", "pre p50 s", "processing p50 s", "post p50 s", "turnaround p50 s"],
        right=["pre p50 s", "processing p50 s", "post p50 s", "turnaround p50 s"],
        title="step durations",
    )
    for stats in result.stats:
        d = stats.durations
        add_row(
            durations,
            [
                stats.job_type,
                *(
                    d[k]["p50"]
                    for k in ("pre_processing", "processing", "post_processing", "turnaround")
                ),
            ],
        )
    timeliness = make_table(
        ["job type", "published", "p50 s", "max s", "within target"],
        right=["published", "p50 s", "max s", "within target"],
        title="timeliness (input publication → output publication)",
    )
    for row in result.timeliness:
        share = f"{row.within_target_share:.0%}" if row.within_target_share is not None else ""
        add_row(
            timeliness,
            [
                row.job_type,
                row.published,
                _round(row.p50_seconds),
                _round(row.max_seconds),
                share,
            ],
        )
    out.print(_progress_table(result.counts, result.elapsed_seconds, result.inputs.total))
    out.print(durations)
    out.print(timeliness)
    if result.spool is not None:
        out.print(f"product messages (no broker configured): {result.spool}")
    verdict = "every demo job is done" if result.all_done else "NOT every demo job is done"
    if result.timed_out:
        verdict += " (gave up at the timeout)"
    for error in result.errors:
        out.print(Text(f"error: {error}"))
    out.print(Text(f"demo finished in {result.elapsed_seconds:.1f} s: {verdict}"))
    prefix = f"JOBLIFE_DATA_DIR={data_dir.resolve()} " if data_dir is not None else ""
    first = min((i for ids in result.job_ids.values() for i in ids), default=None)
    out.print(f"next: {prefix}joblife status")
    if first is not None:
        out.print(f"      {prefix}joblife jobs show {first}")
    settings = get_settings()
    out.print(
        f"      {prefix}joblife web   # the dashboard on these jobs: "
        f"http://{settings.web_address}:{settings.web_port}/"
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
