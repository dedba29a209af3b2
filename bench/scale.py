"""Benchmark of joblife's reads and writes at 10 million jobs (issue 15 item 3's targets).

Run: ``python bench/scale.py`` (see ``bench/README.md``; ``--jobs 1000000`` for a quicker
run). Not a test: it prints figures, the targets and whether each is met;
``docs/benchmarks.md`` records a run.

The script creates its own uniquely named database on the server given by
``--database-url`` / ``JOBLIFE_BENCH_DATABASE_URL`` (an admin URL), migrates it with
joblife's migrations, seeds it and drops it at the end, even on failure. Seeding takes
minutes: ``--keep`` keeps the seeded database and prints its name, ``--reuse NAME`` runs
the measurements on it again without seeding (it is kept; the jobs a run creates are
deleted at its end, so runs start from the same data).

**Seeding** (timed): ``--jobs`` jobs (default 10,000,000) of 10 job types created evenly
over ``--days`` days (default 730) up to the seeding time, in a realistic mix of final
statuses (the jobs of the last 3 days are the pipeline: backlog, in flight, errors; older
ones are done or cancelled but for a few stuck ones), and about 5 history rows per job
(about 50 million). Each is written by a few ``INSERT ... SELECT generate_series``
statements as the owner: the jobs with their final status (the creation trigger, which
would write a 'created' row, disabled: the script writes whole paths), then their history
with the status door open. The counting triggers stay enabled: the maintained counts are
the triggers' work, checked against a full count after seeding. The plain indexes are
dropped before and built after (a bulk load), then VACUUM ANALYZE and CHECKPOINT.

**Reads** (the functions the CLI commands call, on one connection, each run in its own
transaction): ``status``, ``jobs list`` (first page, with filters, a deep ``--before``
page), ``stats --since 24h``, ``timeliness --since 24h`` / ``7d`` (and all-time, for
information: it reads every published job by definition), ``jobs stale``. Times are taken
around the call (Python, SQL, round trips and row transfer: an upper bound of the
server's time); p50 and p95 over ``--runs`` runs after one warm-up. ``--plans FILE``
writes ``EXPLAIN (ANALYZE, BUFFERS)`` of every statement each read runs. Reads are made
"as of" the seeding time (their windows end there), so a reused database reads the same.

**Writes**: the single status change through the door (``set_job_status``, one job,
initialized -> ready or ready -> queued, commit; ``--singles`` jobs) and a heartbeat-like
update (``UPDATE jobs SET heartbeat_at``, commit), each in alternating blocks with the
counting triggers enabled and disabled on the same database (the difference is what the
counters cost; the counts are repaired after, which times ``repair_job_counts()`` at this
size); creation of ``--products`` jobs (default 100,000) as ``joblife create`` does it
(screening, then ``insert_discovered`` over ``creation_parallelism`` connections),
alternately with the triggers enabled and disabled, after one creation not timed.
Last, the deltas are folded and the counts checked against a full count (both timed).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchkit import (
    add_database_url_argument,
    bench_database,
    connect,
    joblife_environment,
    no_op_test_jobs,
    print_table,
    sqlalchemy_url,
)
from joblife.cli.queries import list_jobs, status_summary
from joblife.config import Settings, get_settings
from joblife.db.counts import check_job_counts, fold_job_counts, repair_job_counts
from joblife.db.engine import create_joblife_engine
from joblife.db.migrate import upgrade
from joblife.db.status import set_job_status
from joblife.jobtypes.test_job import TestJob
from joblife.lifecycle.creation import insert_discovered, screen_discovered
from joblife.model import JobStatus
from joblife.ops.stale import stale_jobs
from joblife.ops.stats import job_stats
from joblife.publication.timeliness import timeliness_summary
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session

S = JobStatus
JOB_TYPES = [f"bench_{i}" for i in range(10)]
#: Jobs of the last RECENT_DAYS days are the pipeline (backlog, in flight, errors).
RECENT_DAYS = 3
CHUNK = 1_000_000
TRIGGERS = ("jobs_count_inserts", "jobs_count_updates", "jobs_count_deletes")

# Final status of a job from a hash bucket (0..9999) of its id, for recent and older jobs.
_RECENT = """CASE
    WHEN t.b < 3000 THEN 12 WHEN t.b < 4000 THEN 1 WHEN t.b < 4400 THEN 2
    WHEN t.b < 5600 THEN 3 WHEN t.b < 5650 THEN 4 WHEN t.b < 5700 THEN 5
    WHEN t.b < 5750 THEN 6 WHEN t.b < 5850 THEN 7 WHEN t.b < 5900 THEN 8
    WHEN t.b < 6000 THEN 9 WHEN t.b < 6050 THEN 10 WHEN t.b < 6100 THEN 11
    WHEN t.b < 6250 THEN 14 WHEN t.b < 6350 THEN 13 WHEN t.b < 6450 THEN 15
    WHEN t.b < 6800 THEN 16 ELSE 12 END"""
_OLD = """CASE
    WHEN t.b < 9300 THEN 12 WHEN t.b < 9700 THEN 16 WHEN t.b < 9800 THEN 15
    WHEN t.b < 9850 THEN 13 WHEN t.b < 9860 THEN 14 WHEN t.b < 9870 THEN 1
    WHEN t.b < 9880 THEN 2 WHEN t.b < 9890 THEN 3 ELSE 12 END"""

# psycopg2 parameters: a literal % is written %%.
_SEED_JOBS = f"""
INSERT INTO jobs (id, job_type, input_product_id, tile_id, input_path, input_publication_date,
                  output_path, output_publication_date, priority, status, status_changed_at,
                  created_at, worker_flavor, attempt, max_attempts, heartbeat_at, nomad_job_id)
SELECT g, t.job_type, 'P' || g, 'T' || lpad((g %% 997)::text, 3, '0'),
       's3://bench/in/' || t.job_type || '/P' || g, t.created - interval '5 minutes',
       CASE WHEN s.published THEN 's3://bench/out/P' || g END,
       CASE WHEN s.published
            THEN t.created - interval '5 minutes' + make_interval(mins => (30 + t.b %% 240)::int)
       END,
       CASE WHEN t.b %% 20 = 0 THEN 2 WHEN t.b %% 50 = 1 THEN 3 ELSE 1 END,
       s.status, s.changed, t.created, 'small',
       CASE WHEN s.status IN (1, 2, 3) THEN 0 ELSE 1 END, 3,
       CASE WHEN s.status BETWEEN 4 AND 8 THEN s.changed END,
       CASE WHEN s.status NOT IN (1, 2, 3, 16) THEN 'ref-' || g END
  FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g
 CROSS JOIN LATERAL (SELECT (g * 7919) %% 10000 AS b,
                            'bench_' || (g %% 10) AS job_type,
                            %(t0)s::timestamptz + (g - 1) * %(step)s::interval AS created) AS t
 CROSS JOIN LATERAL (SELECT CASE WHEN g > %(recent)s THEN {_RECENT} ELSE {_OLD} END AS status
                    ) AS f
 CROSS JOIN LATERAL (
     SELECT f.status,
            f.status IN (11, 12) AS published,
            least(t.created + make_interval(mins => (10 + t.b %% 110)::int),
                  %(now)s::timestamptz) AS changed) AS s
"""

# The history of each job: the path to its final status (about 5 rows a job), evenly
# spread from its creation to its last change; the processed row carries step durations.
_PATHS = """CASE j.status
    WHEN 12 THEN CASE WHEN j.id % 4 = 0 THEN '{1,3,4,5,9,12}' ELSE '{1,4,5,9,12}' END
    WHEN 16 THEN '{1,16}' WHEN 1 THEN '{1}' WHEN 2 THEN '{1,2}' WHEN 3 THEN '{1,3}'
    WHEN 4 THEN '{1,3,4}' WHEN 5 THEN '{1,3,4,5}' WHEN 6 THEN '{1,3,4,5,6}'
    WHEN 7 THEN '{1,3,4,5,6,7}' WHEN 8 THEN '{1,3,4,5,6,7,8}' WHEN 9 THEN '{1,3,4,5,9}'
    WHEN 10 THEN '{1,3,4,5,9,10}' WHEN 11 THEN '{1,3,4,5,9,10,11}'
    WHEN 13 THEN '{1,3,4,5,13}' WHEN 14 THEN '{1,3,4,5,14}' WHEN 15 THEN '{1,3,4,5,14,15}'
    END::smallint[]"""
_SEED_HISTORY = f"""
INSERT INTO job_status_changes (job_id, previous_status, status, time, message, details)
SELECT j.id, p.path[i - 1], p.path[i],
       j.created_at + (j.status_changed_at - j.created_at)
                      * ((i - 1)::float8 / greatest(cardinality(p.path) - 1, 1)),
       CASE WHEN i = 1 THEN 'created' END,
       CASE WHEN p.path[i] = 9 THEN jsonb_build_object('durations', jsonb_build_object(
                'pre_processing', 2 + j.id %% 7, 'processing', 60 + j.id %% 600,
                'post_processing', 5 + j.id %% 30))
            ELSE '{{}}'::jsonb END
  FROM jobs j
 CROSS JOIN LATERAL (SELECT {_PATHS.replace("%", "%%")} AS path) AS p
 CROSS JOIN LATERAL generate_series(1, cardinality(p.path)) AS i
 WHERE j.id BETWEEN %(lo)s AND %(hi)s
"""


# --- database ----------------------------------------------------------------------------


def configure_environment(url: URL, data_dir: Path) -> Settings:
    """Point joblife's settings at the bench database (defaults otherwise)."""
    joblife_environment(sqlalchemy_url(url), data_dir)
    return get_settings()


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@contextmanager
def step(what: str) -> Iterator[None]:
    print(f"{what} ...", end=" ", flush=True)
    began = time.perf_counter()
    yield
    print(f"{time.perf_counter() - began:.1f} s (load {load()})", flush=True)


def plain_indexes(cur: Any) -> list[tuple[str, str]]:
    """(name, definition) of the indexes of jobs and the history that back no constraint."""
    cur.execute(
        """SELECT c.relname, pg_get_indexdef(i.indexrelid)
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            WHERE i.indrelid IN ('jobs'::regclass, 'job_status_changes'::regclass)
              AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)"""
    )
    return list(cur.fetchall())


@dataclass
class Seed:
    jobs: int
    history: int
    seeded_at: datetime
    seconds: float


def seed(url: URL, jobs: int, days: int) -> Seed:
    """Seed the database (see the module docstring); the seed's figures."""
    began = time.perf_counter()
    now = datetime.now(UTC).replace(microsecond=0)
    t0 = now - timedelta(days=days)
    conn = connect(url, autocommit=True)
    try:
        cur = conn.cursor()
        cur.execute("SET synchronous_commit = off")
        cur.execute("SET maintenance_work_mem = '1GB'")
        cur.execute("SET work_mem = '256MB'")
        indexes = plain_indexes(cur)
        with step(f"drop {len(indexes)} plain indexes"):
            for name, _ in indexes:
                cur.execute(f'DROP INDEX "{name}"')
        cur.execute("ALTER TABLE jobs DISABLE TRIGGER jobs_record_creation")
        recent = jobs - jobs * RECENT_DAYS // days
        params = {"t0": t0, "now": now, "step": timedelta(days=days) / jobs, "recent": recent}
        for lo in range(1, jobs + 1, CHUNK):
            hi = min(lo + CHUNK - 1, jobs)
            with step(f"jobs {lo:,}-{hi:,}"):
                cur.execute(_SEED_JOBS, {**params, "lo": lo, "hi": hi})
        cur.execute("ALTER TABLE jobs ENABLE TRIGGER jobs_record_creation")
        cur.execute("SELECT setval(pg_get_serial_sequence('jobs', 'id'), %s)", (jobs,))
        cur.execute("SELECT set_config('joblife.status_door', 'open', false)")
        for lo in range(1, jobs + 1, CHUNK):
            hi = min(lo + CHUNK - 1, jobs)
            with step(f"history of jobs {lo:,}-{hi:,}"):
                cur.execute(_SEED_HISTORY, {"lo": lo, "hi": hi})
        cur.execute("SELECT set_config('joblife.status_door', '', false)")
        for name, definition in indexes:
            with step(f"index {name}"):
                # A partitioned table's index is defined ON ONLY the parent: built here on
                # the parent and every partition, as CREATE INDEX ... ON does.
                cur.execute(definition.replace(" ON ONLY ", " ON ", 1))
        with step("VACUUM ANALYZE, CHECKPOINT"):
            cur.execute("VACUUM ANALYZE jobs")
            cur.execute("VACUUM ANALYZE job_status_changes")
            cur.execute("VACUUM ANALYZE job_counts")
            cur.execute("CHECKPOINT")
        cur.execute("SELECT count(*) FROM job_status_changes")
        history = cur.fetchone()[0]
        seconds = time.perf_counter() - began
        cur.execute(
            "CREATE TABLE bench_scale_seed (jobs bigint, history bigint, seeded_at timestamptz, "
            "seconds float8)"
        )
        cur.execute(
            "INSERT INTO bench_scale_seed VALUES (%s, %s, %s, %s)", (jobs, history, now, seconds)
        )
    finally:
        conn.close()
    return Seed(jobs, history, now, seconds)


def read_seed(engine: Engine) -> Seed:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM bench_scale_seed")).one()
    return Seed(row.jobs, row.history, row.seeded_at, row.seconds)


def sizes(engine: Engine) -> str:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT pg_size_pretty(pg_total_relation_size('jobs')), "
                "pg_size_pretty((SELECT sum(pg_total_relation_size(relid)) "
                "FROM pg_partition_tree('job_status_changes'))), "
                "pg_size_pretty(pg_database_size(current_database()))"
            )
        ).one()
    return f"jobs {row[0]}, history {row[1]} (indexes included), database {row[2]}"


# --- timing ------------------------------------------------------------------------------


@dataclass
class Figure:
    label: str
    samples_ms: list[float] = field(default_factory=list)
    target_ms: float | None = None  # p95 target (median for writes)
    median_target: bool = False
    server_ms: float | None = None  # EXPLAIN ANALYZE execution time, summed over statements
    note: str = ""

    def quantile(self, q: float) -> float:
        values = sorted(self.samples_ms)
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]

    def row(self) -> tuple[str, str, str, str]:
        p50, p95 = self.quantile(0.5), self.quantile(0.95)
        measured = f"p50 {p50:.2f} / p95 {p95:.2f} ms (n={len(self.samples_ms)})"
        if self.server_ms is not None:
            measured += f"; server {self.server_ms:.1f} ms"
        if self.target_ms is None:
            return (self.label, measured + self.note, "", "")
        kind = "p50" if self.median_target else "p95"
        value = p50 if self.median_target else p95
        verdict = "PASS" if value < self.target_ms else "FAIL"
        return (self.label, measured + self.note, f"{kind} < {self.target_ms:g} ms", verdict)


class Capture:
    """The statements an engine executes while ``on``."""

    def __init__(self, engine: Engine) -> None:
        self.on = False
        self.statements: list[tuple[str, Any]] = []
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if self.on and not statement.lstrip().upper().startswith(("EXPLAIN", "ROLLBACK")):
            self.statements.append((statement, params))


def explain(engine: Engine, capture: Capture, read: Callable[[Session], Any], out: Any) -> float:
    """EXPLAIN (ANALYZE, BUFFERS) of every statement ``read`` runs; the summed execution
    time (ms). Each statement runs again in a transaction that is rolled back."""
    capture.statements.clear()
    capture.on = True
    try:
        with Session(engine) as session:
            read(session)
            session.rollback()
    finally:
        capture.on = False
    total = 0.0
    conn = engine.raw_connection()
    try:
        cur = conn.cursor()
        for statement, params in capture.statements:
            if statement.lstrip().upper().startswith("SET "):  # e.g. SET LOCAL jit = off
                cur.execute(statement, params)
                continue
            cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)
            lines = [row[0] for row in cur.fetchall()]
            total += next(
                float(line.split(":")[1].split()[0])
                for line in lines
                if line.startswith("Execution Time")
            )
            if out is not None:
                out.write(cur.mogrify(statement, params).decode() + "\n")
                out.write("\n".join(lines) + "\n\n")
        conn.rollback()
    finally:
        conn.close()
    return total


def time_read(
    engine: Engine,
    capture: Capture,
    label: str,
    read: Callable[[Session], Any],
    runs: int,
    target_ms: float | None,
    plans: Any,
) -> Figure:
    figure = Figure(label, target_ms=target_ms)
    if plans is not None:
        plans.write(f"===== {label} =====\n")
    figure.server_ms = explain(engine, capture, read, plans)  # also the warm-up
    with Session(engine) as session:
        for _ in range(runs):
            began = time.perf_counter()
            read(session)
            figure.samples_ms.append((time.perf_counter() - began) * 1000)
            session.rollback()
    print(f"  {label}: {figure.row()[1]}", flush=True)
    return figure


# --- writes ------------------------------------------------------------------------------


def set_triggers(engine: Engine, enabled: bool) -> None:
    with engine.begin() as conn:
        for trigger in TRIGGERS:
            verb = "ENABLE" if enabled else "DISABLE"
            conn.execute(text(f"ALTER TABLE jobs {verb} TRIGGER {trigger}"))


def time_singles(
    engine: Engine, ids: Sequence[tuple[int, JobStatus]], blocks: int
) -> tuple[Figure, Figure, Figure, Figure]:
    """Single status changes (initialized -> ready or ready -> queued, commit) and heartbeat
    updates (commit), in alternating blocks with the counting triggers enabled and
    disabled."""
    on = Figure("single status change + commit, counters on", target_ms=1.0, median_target=True)
    off = Figure("single status change + commit, counters off")
    beat_on = Figure("heartbeat UPDATE + commit, counters on")
    beat_off = Figure("heartbeat UPDATE + commit, counters off")
    per_block = len(ids) // (2 * blocks)
    chunks = [ids[i * per_block : (i + 1) * per_block] for i in range(2 * blocks)]
    with Session(engine) as session:
        for index, chunk in enumerate(chunks):
            enabled = index % 2 == 0
            set_triggers(engine, enabled)
            changes, beats = (on, beat_on) if enabled else (off, beat_off)
            for job_id, status in chunk:
                target = S.READY if status is S.INITIALIZED else S.QUEUED
                began = time.perf_counter()
                set_job_status(session, job_id, target, status, "bench single")
                session.commit()
                changes.samples_ms.append((time.perf_counter() - began) * 1000)
                began = time.perf_counter()
                session.execute(
                    text("UPDATE jobs SET heartbeat_at = now() WHERE id = :id"), {"id": job_id}
                )
                session.commit()
                beats.samples_ms.append((time.perf_counter() - began) * 1000)
    set_triggers(engine, True)
    return on, off, beat_on, beat_off


def time_creation(
    engine: Engine, settings: Settings, products: int, rounds: int, first: datetime
) -> tuple[Figure, Figure]:
    """Creation of ``products`` test jobs as ``joblife create`` does it, alternately with
    the counting triggers enabled and disabled (rates in jobs/s, as 'samples')."""
    on = Figure("creation, counters on (jobs/s)")
    off = Figure("creation, counters off (jobs/s)")
    # A first creation, not timed: the first one into a large table is slower (its index
    # pages are read in), and would count against whichever variant came first.
    screened = screen_discovered(TestJob, no_op_test_jobs("W-", products, first), [])
    insert_discovered(engine, TestJob, screened.to_create, [], parallelism=2)
    for index in range(2 * rounds):
        enabled = index % 2 == 0
        set_triggers(engine, enabled)
        jobs = no_op_test_jobs(f"C{index}-", products, first + timedelta(hours=index))
        with engine.connect() as conn:
            conn.execute(text("CHECKPOINT"))
        began = time.perf_counter()
        screened = screen_discovered(TestJob, jobs, [])
        inserted = insert_discovered(
            engine,
            TestJob,
            screened.to_create,
            screened.to_cancel,
            parallelism=settings.creation_parallelism,
        )
        elapsed = time.perf_counter() - began
        if inserted[S.INITIALIZED] != products:
            raise RuntimeError(f"creation inserted {inserted} of {products}")
        (on if enabled else off).samples_ms.append(products / elapsed)
        print(
            f"  creation {index + 1}, counters {'on' if enabled else 'off'}: "
            f"{products / elapsed:,.0f} jobs/s ({elapsed:.2f} s)",
            flush=True,
        )
    set_triggers(engine, True)
    return on, off


def rate_row(figure: Figure, target: float | None = None) -> tuple[str, str, str, str]:
    rates = figure.samples_ms
    measured = ", ".join(f"{r:,.0f}" for r in rates) + f" (median {statistics.median(rates):,.0f})"
    if target is None:
        return (figure.label, measured, "", "")
    ok = statistics.median(rates) >= target
    return (figure.label, measured, f">= {target:,.0f} jobs/s", "PASS" if ok else "FAIL")


# --- the run -------------------------------------------------------------------------------


def deep_before(engine: Engine, offset: int, where: str = "") -> int:
    """The id of the job ``offset`` jobs down the list order (the plain query: slow, once)."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                f"SELECT id FROM jobs {where} ORDER BY status_changed_at DESC, id DESC "
                "OFFSET :n LIMIT 1"
            ),
            {"n": offset},
        ).scalar_one()


def measure(engine: Engine, settings: Settings, seed_: Seed, args: argparse.Namespace) -> None:
    at = seed_.seeded_at
    job_types = dict.fromkeys(JOB_TYPES, TestJob)
    capture = Capture(engine)
    plans = Path(args.plans).open("w", encoding="utf-8") if args.plans else None  # noqa: SIM115
    figures: list[tuple[str, str, str, str]] = []
    try:
        with step("deep pages: the jobs 500,000 and 100,000 down the list order"):
            deep_all = deep_before(engine, min(500_000, seed_.jobs // 2))
            deep_done = deep_before(engine, min(100_000, seed_.jobs // 4), "WHERE status = 12")
        print(f"reads (load {load()}):", flush=True)
        runs = args.runs
        reads: list[tuple[str, Callable[[Session], Any], float | None, int]] = [
            ("status", status_summary, 50, runs),
            ("jobs list (first page)", lambda s: list_jobs(s, limit=51), 300, runs),
            ("jobs list --type bench_3", lambda s: list_jobs(s, job_type="bench_3", limit=51),
             300, runs),
            ("jobs list --status ready", lambda s: list_jobs(s, statuses=[S.READY], limit=51),
             300, runs),
            ("jobs list -s internal_error,external_error",
             lambda s: list_jobs(s, statuses=[S.INTERNAL_ERROR, S.EXTERNAL_ERROR], limit=51),
             300, runs),
            ("jobs list --type bench_3 -s done --since 24h",
             lambda s: list_jobs(s, job_type="bench_3", statuses=[S.DONE],
                                 since=at - timedelta(hours=24), limit=51), 300, runs),
            ("jobs list --before (500,000 down)",
             lambda s: list_jobs(s, limit=51, before=deep_all), 300, runs),
            ("jobs list -s done --before (100,000 down)",
             lambda s: list_jobs(s, statuses=[S.DONE], limit=51, before=deep_done), 300, runs),
            ("stats --since 24h",
             lambda s: job_stats(s, at - timedelta(hours=24), at), 300, runs),
            ("timeliness --since 24h",
             lambda s: timeliness_summary(s, timedelta(hours=3), at - timedelta(hours=24), at),
             300, runs),
            ("timeliness --since 7d",
             lambda s: timeliness_summary(s, timedelta(hours=3), at - timedelta(days=7), at),
             300, runs),
            ("jobs stale", lambda s: stale_jobs(s, settings, job_types, at, 200), 300, runs),
            ("SELECT * FROM job_status_summary (oldest/newest too)",
             lambda s: s.execute(text("SELECT * FROM job_status_summary")).all(), None, runs),
            ("timeliness, all time (the default; reads every published job)",
             lambda s: timeliness_summary(s, timedelta(hours=3)), None, 3),
            ("stats --since 7d",
             lambda s: job_stats(s, at - timedelta(days=7), at), None, 5),
        ]  # fmt: skip
        for label, read, target, n in reads:
            figures.append(time_read(engine, capture, label, read, n, target, plans).row())
    finally:
        if plans is not None:
            plans.close()

    with engine.connect() as conn:
        waiting = [
            (row.id, S(row.status))
            for row in conn.execute(
                text(
                    "SELECT id, status FROM jobs WHERE status IN (1, 3) ORDER BY id DESC LIMIT :n"
                ),
                {"n": args.singles * 3},
            )
        ]
    random.Random(15).shuffle(waiting)
    with step(f"single changes and heartbeats, {args.singles:,} each, counters on / off"):
        singles = time_singles(engine, waiting[: args.singles], blocks=4)
    figures += [f.row() for f in singles]
    with Session(engine) as session:
        pending = session.execute(text("SELECT count(*) FROM job_count_deltas")).scalar_one()
    figures.append(
        time_read(
            engine, capture, f"status with {pending:,} deltas pending", status_summary,
            args.runs, 50, None,
        ).row()
    )  # fmt: skip
    with (
        step("repair_job_counts() (the singles made with the counters off)"),
        Session(engine) as session,
    ):
        repaired = repair_job_counts(session)
        session.commit()
    print(f"  repaired {len(repaired)} (type, status) counts")
    with step(f"creation of {args.products:,} jobs x {args.creation_rounds}, counters on / off"):
        created_on, created_off = time_creation(
            engine, settings, args.products, args.creation_rounds, at - timedelta(days=1)
        )
    figures += [rate_row(created_on, 30_000), rate_row(created_off)]
    with (
        step("repair_job_counts() (the creations made with the counters off)"),
        Session(engine) as session,
    ):
        repair_job_counts(session)
        session.commit()
    with step("delete the created jobs (counted by the triggers)"), engine.begin() as conn:
        conn.execute(text("DELETE FROM jobs WHERE job_type = 'test'"))
    with step("VACUUM ANALYZE (a kept database is left as seeded)"):
        conn = connect(make_url(settings.database_url.get_secret_value()), autocommit=True)
        try:
            conn.cursor().execute("VACUUM ANALYZE jobs, job_status_changes, test_jobs")
        finally:
            conn.close()
    with Session(engine) as session:
        began = time.perf_counter()
        folded = fold_job_counts(session)
        session.commit()
        fold_s = time.perf_counter() - began
        began = time.perf_counter()
        differences = check_job_counts(session)
        check_s = time.perf_counter() - began
    figures.append((f"fold_job_counts(): {folded:,} deltas", f"{fold_s * 1000:.1f} ms", "", ""))
    figures.append(
        (
            "check_job_counts() (a full count)",
            f"{check_s:.2f} s, {len(differences)} differences",
            "0 differences",
            "PASS" if not differences else "FAIL",
        )
    )
    print()
    print_table(figures)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_database_url_argument(parser)
    parser.add_argument("--jobs", type=int, default=10_000_000, help="jobs seeded")
    parser.add_argument("--days", type=int, default=730, help="days the jobs were created over")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per read")
    parser.add_argument("--singles", type=int, default=2_000, help="single changes timed")
    parser.add_argument("--products", type=int, default=100_000, help="jobs per creation")
    parser.add_argument("--creation-rounds", type=int, default=2, help="creations on and off")
    parser.add_argument("--plans", help="write EXPLAIN (ANALYZE, BUFFERS) of the reads here")
    parser.add_argument("--keep", action="store_true", help="keep the seeded database")
    parser.add_argument("--reuse", metavar="NAME", help="measure on this kept database")
    return parser.parse_args(argv)


@contextmanager
def reused_database(admin_url: URL, name: str) -> Iterator[URL]:
    print(f"database: {name} (reused, kept)")
    yield admin_url.set(database=name)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    print(f"machine: {os.cpu_count()} CPUs, load average {load()}")
    admin_url = make_url(args.database_url)
    data_dir = Path(tempfile.mkdtemp(prefix="joblife-bench-"))
    database = (
        reused_database(admin_url, args.reuse)
        if args.reuse
        else bench_database(admin_url, args.keep)
    )
    try:
        with database as url:
            settings = configure_environment(url, data_dir)
            engine = create_joblife_engine(settings=settings)
            try:
                with step("migrate"):
                    upgrade(engine, settings=settings)
                with engine.connect() as conn:
                    print(f"server: {conn.execute(text('SELECT version()')).scalar()}")
                    shown = ", ".join(
                        f"{name}={conn.execute(text(f'SHOW {name}')).scalar()}"
                        for name in ("shared_buffers", "work_mem", "synchronous_commit",
                                     "random_page_cost", "max_parallel_workers_per_gather")
                    )  # fmt: skip
                print(f"settings: {shown} (the server's, unchanged)")
                if args.reuse:
                    seeded = read_seed(engine)
                    print(
                        f"seed: {seeded.jobs:,} jobs, {seeded.history:,} history rows, seeded "
                        f"{seeded.seeded_at:%Y-%m-%d %H:%M} UTC in {seeded.seconds:.0f} s"
                    )
                else:
                    print(f"seeding {args.jobs:,} jobs over {args.days} days:", flush=True)
                    seeded = seed(url, args.jobs, args.days)
                    print(
                        f"seeded: {seeded.jobs:,} jobs, {seeded.history:,} history rows in "
                        f"{seeded.seconds:.0f} s"
                    )
                    with (
                        step("check_job_counts() after seeding (the triggers' counts)"),
                        Session(engine) as session,
                    ):
                        fold_job_counts(session)
                        session.commit()
                        differences = check_job_counts(session)
                    if differences:
                        raise RuntimeError(f"seeded counts differ: {differences}")
                print(sizes(engine))
                measure(engine, settings, seeded, args)
            finally:
                engine.dispose()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"\nload average at the end {load()}; total run time {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
