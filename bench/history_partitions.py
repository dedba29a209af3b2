"""The status door with the history partitioned by month (issue 15, item 4), side by side
with the unpartitioned history, and the in-place upgrade of a populated history.

Run: ``python bench/history_partitions.py`` (see ``bench/README.md``). Not a test: it prints
figures; ``docs/benchmarks.md`` records a run.

Two scratch databases on the server of ``--database-url`` / ``JOBLIFE_BENCH_DATABASE_URL``
(an admin URL), dropped at the end: one migrated to the revision before 0015 (one history
table), one to 0015 (partitioned). The same ``--jobs`` jobs are created in both (the
creation trigger writes their history), then, alternately on one and the other so that the
load of a shared machine falls on both alike:

1. single change: ``set_job_status`` on one job (initialized -> ready, expected status
   given), then ``commit()``; ``--singles`` per database, in runs of 50;
2. the same change looped in the server (a DO block), one commit per 200: the door's own
   cost, without the round trip and the commit's WAL flush; ``--singles`` per database;
3. batched change: ``set_job_status`` on ``--batch-size`` random initialized jobs, commit
   included; ``--batches`` per database.

Then the unpartitioned database is upgraded to 0015 in place, timed: the history is
attached as one partition after one read of it (no copy).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Sequence

from alembic.script import ScriptDirectory
from benchkit import add_database_url_argument, bench_database, connect, sqlalchemy_url
from joblife.db import migrate
from joblife.db.engine import create_joblife_engine
from psycopg2.extensions import connection as PgConnection
from sqlalchemy.engine import URL, make_url

REVISION = "0015"
SINGLE = (
    "SELECT * FROM set_job_status(ARRAY[%s]::bigint[], 'ready', ARRAY['initialized'], NULL, NULL)"
)
BATCH = (
    "SELECT count(*) FROM set_job_status(%s::bigint[], 'ready', ARRAY['initialized'], NULL, NULL)"
)
RUN = 50
# The same change looped inside the server, without commit: the door's own cost, without
# the round trip and the WAL flush of the commit (which a shared machine makes noisy).
SERVER_SINGLES = """
DO $$
DECLARE
    t0 timestamptz := clock_timestamp();
    i bigint;
BEGIN
    FOREACH i IN ARRAY %s::bigint[] LOOP
        PERFORM * FROM set_job_status(ARRAY[i], 'ready', ARRAY['initialized'], NULL, NULL);
    END LOOP;
    RAISE NOTICE 'elapsed %%', extract(epoch FROM clock_timestamp() - t0);
END;
$$
"""


def upgrade(url: URL, revision: str) -> None:
    engine = create_joblife_engine(sqlalchemy_url(url))
    try:
        migrate.upgrade(engine, revision)
    finally:
        engine.dispose()


def load(conn: PgConnection, jobs: int) -> int:
    """``jobs`` initialized jobs over 10 types; returns the history's row count."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO jobs (job_type, input_product_id, worker_flavor) "
            "SELECT 'type' || (g %% 10), 'product-' || g, 'small' "
            "FROM generate_series(1, %s) AS g",
            (jobs,),
        )
    conn.commit()
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE")
            cur.execute("CHECKPOINT")
            cur.execute("SELECT count(*) FROM job_status_changes")
            return int(cur.fetchone()[0])
    finally:
        conn.autocommit = False


def single(conn: PgConnection, job: int) -> int:
    start = time.perf_counter_ns()
    with conn.cursor() as cur:
        cur.execute(SINGLE, (job,))
        cur.fetchall()
    conn.commit()
    return time.perf_counter_ns() - start


def batch(conn: PgConnection, ids: list[int]) -> float:
    start = time.perf_counter()
    with conn.cursor() as cur:
        cur.execute(BATCH, (ids,))
        cur.fetchall()
    conn.commit()
    return time.perf_counter() - start


def server_singles(conn: PgConnection, jobs: list[int]) -> float:
    """Mean server time of one change (microseconds) over ``jobs``, one each, committed
    together at the end."""
    conn.notices.clear()
    with conn.cursor() as cur:
        cur.execute(SERVER_SINGLES, (jobs,))
    conn.commit()
    return float(conn.notices[-1].split("elapsed")[1]) / len(jobs) * 1e6


def quantile(samples: Sequence[int], q: float) -> float:
    ordered = sorted(samples)
    return ordered[round(q * (len(ordered) - 1))] / 1e6


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_database_url_argument(parser)
    parser.add_argument("--jobs", type=int, default=300_000)
    parser.add_argument("--singles", type=int, default=2000, help="per database")
    parser.add_argument("--batches", type=int, default=12, help="per database")
    parser.add_argument("--batch-size", type=int, default=10_000)
    args = parser.parse_args(argv)
    needed = 2 * args.singles + args.batches * args.batch_size
    if needed > args.jobs:
        parser.error(f"--jobs must be at least {needed} (2 x singles + batches x batch size)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    admin = make_url(args.database_url)
    script = ScriptDirectory.from_config(migrate.alembic_config())
    before = script.get_revision(REVISION).down_revision
    assert isinstance(before, str)
    started = time.monotonic()
    with bench_database(admin, False) as url_before, bench_database(admin, False) as url_after:
        urls = {before: url_before, REVISION: url_after}
        conns: dict[str, PgConnection] = {}
        try:
            for revision, url in urls.items():
                upgrade(url, revision)
                conns[revision] = connect(url)
                rows = load(conns[revision], args.jobs)
                print(f"revision {revision}: {args.jobs:,} jobs, {rows:,} history rows")
            ids = list(range(1, args.jobs + 1))
            random.Random(20261205).shuffle(ids)
            singles: dict[str, list[int]] = {r: [] for r in urls}
            batches: dict[str, list[float]] = {r: [] for r in urls}
            order = [before, REVISION]
            position = 0
            for _ in range(0, args.singles, RUN):
                for revision in order:
                    for job in ids[position : position + RUN]:
                        singles[revision].append(single(conns[revision], job))
                position += RUN
                order.reverse()
            server: dict[str, list[float]] = {r: [] for r in urls}
            for _ in range(0, args.singles, RUN * 4):
                for revision in order:
                    server[revision].append(
                        server_singles(conns[revision], ids[position : position + RUN * 4])
                    )
                position += RUN * 4
                order.reverse()
            for _ in range(args.batches):
                chunk = ids[position : position + args.batch_size]
                for revision in order:
                    batches[revision].append(batch(conns[revision], chunk))
                position += args.batch_size
                order.reverse()
        finally:
            for conn in conns.values():
                conn.close()

        conn = connect(url_before)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM job_status_changes")
                history_rows = int(cur.fetchone()[0])
        finally:
            conn.close()
        start = time.monotonic()
        upgrade(url_before, REVISION)
        upgraded = time.monotonic() - start

    rows = [("figure", f"revision {before}", f"revision {REVISION}")]
    for label, pick in (
        ("single change + commit, median", lambda r: f"{quantile(singles[r], 0.5):.3f} ms"),
        (
            "single change + commit, p90 / p99",
            lambda r: f"{quantile(singles[r], 0.9):.3f} / {quantile(singles[r], 0.99):.3f} ms",
        ),
        (
            "single change in the server (no commit), median",
            lambda r: f"{statistics.median(server[r]):.1f} us",
        ),
        (
            f"batched change ({args.batch_size:,} jobs + commit)",
            lambda r: f"{args.batch_size * len(batches[r]) / sum(batches[r]):,.0f} jobs/s",
        ),
        (
            "batched change, median batch",
            lambda r: f"{statistics.median(batches[r]) * 1000:.0f} ms",
        ),
    ):
        rows.append((label, pick(before), pick(REVISION)))
    widths = [max(len(row[c]) for row in rows) for c in range(3)]
    print()
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    ratio = quantile(singles[REVISION], 0.5) / quantile(singles[before], 0.5)
    print(f"single change median, {REVISION} / {before}: {ratio:.2f}x")
    print(
        f"upgrade {before} -> {REVISION} in place ({history_rows:,} history rows): {upgraded:.2f} s"
    )
    print(f"total run time: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
