"""Benchmark of the ``joblife`` command's start-up (issue 17 item 16's target): the process
time of ``joblife --version``, ``joblife --help`` and ``joblife jobs show ID`` (text and
``--json``), side by side with ``python -c pass``.

    python bench/startup.py [--runs 20] [--pythonpath DIR]

Each command runs ``--runs`` times as a child process, one after the other, after one
warm-up run (the file cache); a run's process time is the child's user + system CPU time
(``resource.getrusage(RUSAGE_CHILDREN)`` before and after it), which the load of other
processes on the machine changes far less than the wall time, also shown. The figures are
the median and the minimum over the runs, and the median's ratio to ``python -c pass``'s.
The target: every joblife command under 200 ms of process time. The ``stack floor`` row
is ``bench/stack_floor.py``: the same kind of command with typer, pydantic-settings,
psycopg2 and rich but none of joblife (what no change of joblife's can go under).

``jobs show`` reads a job of a scratch database (created on the admin URL's server,
migrated, one ``test`` job with a short history, dropped at the end unless ``--keep``),
through a TCP connection to that server. ``--pythonpath DIR`` puts another tree's package
directory first on the children's ``PYTHONPATH`` (e.g. ``git archive HEAD components |
tar -x -C /tmp/head`` then ``--pythonpath /tmp/head/components``: the same figures for
that version of the code, against the same database).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchkit import (
    add_database_url_argument,
    bench_database,
    joblife_environment,
    no_op_test_jobs,
    print_table,
    sqlalchemy_url,
)
from sqlalchemy.engine import make_url

TARGET_SECONDS = 0.200
FLOOR_SCRIPT = Path(__file__).with_name("stack_floor.py")
STACK_FLOOR = "stack floor (typer, pydantic-settings, psycopg2, rich)"


@dataclass(frozen=True)
class Timing:
    """One command's runs: process (CPU) and wall seconds, one per run."""

    label: str
    cpu: list[float]
    wall: list[float]

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


def time_command(label: str, argv: Sequence[str], runs: int, env: dict[str, str]) -> Timing:
    """Run ``argv`` once to warm up, then ``runs`` times; each run's child CPU and wall
    time. A run that fails stops the benchmark (its output is shown)."""
    cpu: list[float] = []
    wall: list[float] = []
    for index in range(runs + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if result.returncode != 0:
            sys.exit(f"{label}: exit status {result.returncode}\n{result.stdout}{result.stderr}")
        if index == 0:
            continue  # the warm-up
        cpu.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
        wall.append(elapsed)
    return Timing(label, cpu, wall)


def joblife_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("joblife")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "joblife.cli.main"]


def make_job(database_url: str) -> int:
    """One ``test`` job with a few status changes; its id."""
    from joblife.db import migrate
    from joblife.db.engine import create_joblife_engine
    from joblife.db.status import set_job_status
    from sqlalchemy.orm import Session

    engine = create_joblife_engine(database_url)
    try:
        migrate.upgrade(engine)
        with Session(engine) as session:
            [job] = no_op_test_jobs("STARTUP-", 1, datetime.now(UTC))
            session.add(job)
            session.flush()
            for status in ("ready", "queued", "external_error"):
                set_job_status(session, job.id, status, message=f"bench: {status}")
            session.commit()
            return job.id
    finally:
        engine.dispose()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_database_url_argument(parser)
    parser.add_argument("--runs", type=int, default=20, help="runs of each command")
    parser.add_argument(
        "--pythonpath",
        type=Path,
        help="a package directory put first on the children's PYTHONPATH (another tree)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="joblife-bench-startup-"))
    try:
        with bench_database(make_url(args.database_url), args.keep) as url:
            database_url = sqlalchemy_url(url)
            joblife_environment(database_url, data_dir)
            job_id = make_job(database_url)
            env = dict(os.environ)
            if args.pythonpath is not None:
                env["PYTHONPATH"] = os.pathsep.join(
                    [str(args.pythonpath.resolve()), *filter(None, [env.get("PYTHONPATH")])]
                )
            joblife = joblife_command()
            show = [*joblife, "jobs", "show", str(job_id)]
            commands = {
                "python -c pass": [sys.executable, "-c", "pass"],
                "joblife --version": [*joblife, "--version"],
                "joblife --help": [*joblife, "--help"],
                f"joblife jobs show {job_id}": show,
                f"joblife jobs show {job_id} --json": [*show, "--json"],
                # What any command of this stack costs: see stack_floor.py.
                STACK_FLOOR: [sys.executable, str(FLOOR_SCRIPT), "jobs", "show", str(job_id)],
            }
            print(f"command: {' '.join(joblife)}; {args.runs} runs each after a warm-up")
            if args.pythonpath is not None:
                print(f"PYTHONPATH first: {args.pythonpath}")
            print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            timings = [time_command(k, v, args.runs, env) for k, v in commands.items()]
            print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    baseline = timings[0].cpu_median
    print()
    header = ("command", "CPU median", "CPU min", "wall median", "ratio to python -c pass")
    rows = [
        (
            t.label,
            ms(t.cpu_median),
            ms(min(t.cpu)),
            ms(statistics.median(t.wall)),
            f"{t.cpu_median / baseline:.1f}" if baseline else "",
        )
        for t in timings
    ]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print()
    print_table(
        [
            (
                t.label,
                ms(t.cpu_median),
                f"< {ms(TARGET_SECONDS)}",
                "PASS" if t.cpu_median < TARGET_SECONDS else "FAIL",
            )
            for t in timings[1:]
            if t.label != STACK_FLOOR
        ],
        figure="process time (median)",
    )


if __name__ == "__main__":
    main()
