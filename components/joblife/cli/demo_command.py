"""``joblife demo``: run the three reference job types end to end on the embedded defaults
(see :mod:`joblife.demo`), in a database of their own, with live progress and a summary.

The demo itself, rich and the model are imported when the command runs: ``joblife
--help`` needs none of them."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from joblife.cli.output import add_row, console, make_table

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from joblife.demo import DemoInputs, DemoResult, DemoSetup

#: The flag that lets the demo run in a configured database (as
#: :data:`joblife.demo.ALLOW_CONFIGURED_FLAG`, which its refusal names).
ALLOW_CONFIGURED_FLAG = "--allow-configured-database"
#: The exit status of an interrupted demo (as a shell reports SIGINT).
EXIT_INTERRUPTED = 130


def demo(
    ctx: typer.Context,
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
    allow_configured_database: Annotated[
        bool,
        typer.Option(
            ALLOW_CONFIGURED_FLAG,
            help="Run in the configured database (database_url) instead of refusing: the "
            "demo's services then act on every job of that database, not only the demo's.",
        ),
    ] = False,
    web: Annotated[
        bool,
        typer.Option(
            "--web",
            help="Then serve the dashboard on the demo's jobs (as `joblife web`; Ctrl-C stops).",
        ),
    ] = False,
) -> None:
    """Run the reference job types end to end on synthetic inputs.

    h5repack, image ingest and tile time series through the whole life cycle, in a
    database of their own on the embedded server (joblife_demo, emptied at each run);
    exit 1 unless every demo job ends done."""
    from rich.live import Live
    from rich.text import Text

    from joblife.demo import (
        DEMO_DATABASE,
        applied,
        generate_inputs,
        new_run_id,
        prepare_demo,
        run_demo,
    )

    run_id = new_run_id()
    out = console()
    setup = prepare_demo(data_dir, run_id, allow_configured_database)
    started = time.monotonic()
    inputs: DemoInputs | None = None
    try:
        with applied(setup.env) as settings:
            where = f"database {DEMO_DATABASE} (emptied for this run)"
            if setup.database_url is None:
                where = (
                    f"the configured database ({ALLOW_CONFIGURED_FLAG}: the demo's services "
                    "act on every job in it)"
                )
            out.print(Text(f"joblife demo {run_id}: data in {settings.data_dir}, {where}"))
            inputs = generate_inputs(settings, run_id, jobs_per_type)
            out.print(
                f"generated {inputs.total} input products "
                f"({', '.join(f'{len(p)} {t}' for t, p in inputs.products.items())})"
            )
            with Live(console=out, refresh_per_second=8, transient=True) as live:

                def progress(counts: dict[str, dict[str, int]], elapsed: float) -> None:
                    live.update(_progress_table(counts, elapsed, inputs.total))

                result = run_demo(settings, inputs, progress, timeout)
    except KeyboardInterrupt:
        _interrupted(setup, inputs, time.monotonic() - started)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    _summary(result, setup)
    if not result.all_done:
        raise typer.Exit(1)
    if web:
        from joblife.cli.web_commands import web as serve_dashboard

        with applied(setup.env):
            serve_dashboard(ctx)


def _progress_table(counts: dict[str, dict[str, int]], elapsed: float, total: int) -> Table:
    from joblife.model import JobStatus

    columns = [str(s) for s in JobStatus]  # in life-cycle order
    shown = [c for c in columns if any(c in per_type for per_type in counts.values())]
    table = make_table(["job type", *shown], right=shown, title="demo jobs by status")
    table.caption = f"{total} jobs, {elapsed:.1f} s"
    for job_type, per_status in counts.items():
        add_row(table, [job_type, *(per_status.get(c, "") for c in shown)])
    return table


def _summary(result: DemoResult, setup: DemoSetup) -> None:
    from rich.text import Text

    from joblife.config import get_settings

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
        out.print(Text(f"product messages (no broker configured): {result.spool}"))
    verdict = "every demo job is done" if result.all_done else "NOT every demo job is done"
    if result.timed_out:
        verdict += " (gave up at the timeout)"
    for error in result.errors:
        out.print(Text(f"error: {error}"))
    out.print(Text(f"demo finished in {result.elapsed_seconds:.1f} s: {verdict}"))
    first = min((i for ids in result.job_ids.values() for i in ids), default=None)
    prefix = setup.shell_prefix()
    settings = get_settings()
    commands = [f"{prefix}joblife status"]
    if first is not None:
        commands.append(f"{prefix}joblife jobs show {first}")
    commands.append(
        f"{prefix}joblife web   # the dashboard on these jobs: "
        f"http://{settings.web_address}:{settings.web_port}/"
    )
    _next(out, setup, commands)


def _interrupted(setup: DemoSetup, inputs: DemoInputs | None, elapsed: float) -> None:
    """Say what an interrupted run left (its jobs by status) and how to finish or clean it."""
    from rich.text import Text

    from joblife.demo import DEMO_DATABASE, applied, left_jobs
    from joblife.model import JobStatus

    out = console()
    where = f"the demo database {DEMO_DATABASE}" if setup.database_url else "the database"
    prefix = setup.shell_prefix()
    if inputs is None:
        out.print(Text(f"demo interrupted after {elapsed:.1f} s, before it created any job"))
        return
    try:
        with applied(setup.env) as settings:
            rows = left_jobs(settings, inputs)
    except Exception as exc:  # the database may be what was interrupted
        out.print(Text(f"demo interrupted after {elapsed:.1f} s; its jobs cannot be read: {exc}"))
        rows = None
    if rows is not None:
        counts: dict[str, dict[str, int]] = {t: {} for t in inputs.products}
        for job_type, _, status, _, _ in rows:
            counts[job_type][str(status)] = counts[job_type].get(str(status), 0) + 1
        out.print(_progress_table(counts, elapsed, inputs.total))
        unfinished = sorted(i for _, i, status, _, _ in rows if status is not JobStatus.DONE)
        out.print(
            Text(
                f"demo interrupted after {elapsed:.1f} s: {len(rows)} of its {inputs.total} "
                f"jobs are in {where}, {len(rows) - len(unfinished)} done "
                f"({len(unfinished)} not)"
            )
        )
    out.print(
        "Workers already started go on by themselves; the other jobs and products wait for "
        "the services, which the first command below runs (Ctrl-C it once the second shows "
        "every job done)."
    )
    commands = [
        f"{setup.shell_prefix(services=True)}joblife run",
        f"{prefix}joblife status",
    ]
    if setup.database_url is not None:
        clean = "the next `joblife demo` starts over in an empty demo database"
    else:
        clean = "`joblife jobs cancel ID...` cancels the unfinished ones in that database"
    _next(out, setup, commands, clean=clean)


def _next(out: Console, setup: DemoSetup, commands: list[str], clean: str | None = None) -> None:
    """The commands to look further, in the order a newcomer runs them: activate the
    virtual environment first when ``joblife`` is not on the PATH yet."""
    from rich.text import Text

    from joblife.demo import DEMO_DATABASE

    activate = _activation()
    if activate is not None:
        commands = [activate, *commands]
    if setup.database_url is not None:
        out.print(
            Text(
                f"The demo's jobs are in their own database, {DEMO_DATABASE}, on the embedded "
                "server (emptied at the next demo run); JOBLIFE_DATABASE_URL points the "
                "commands below at it."
            )
        )
    for index, command in enumerate(commands):
        out.print(Text(f"{'next:' if index == 0 else '     '} {command}"), soft_wrap=True)
    if clean is not None:
        out.print(Text(f"to clean up: {clean}"), soft_wrap=True)
    if setup.database_url is not None:
        stop = f"{setup.shell_prefix(database=False)}joblife db stop"
        out.print(
            Text(f"The embedded PostgreSQL keeps running for these commands; `{stop}` stops it."),
            soft_wrap=True,
        )


def _activation() -> str | None:
    """``source <venv>/bin/activate`` when this joblife runs from a virtual environment
    whose ``joblife`` is not the one the shell finds (the quick start runs
    ``.venv/bin/joblife demo`` before anything is activated); None otherwise."""
    if sys.prefix == sys.base_prefix:
        return None
    bin_dir = Path(sys.prefix) / "bin"
    activate = bin_dir / "activate"
    if not activate.exists():
        return None
    found = shutil.which("joblife", path=os.environ.get("PATH"))
    if found is not None and Path(found).resolve().parent == bin_dir.resolve():
        return None
    return f"source {activate}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
