"""The history partitioned by month (revision 0015): a populated database upgraded in place
(and back), rows routed to their month, partitions kept ahead, rows of the DEFAULT
partition moved out, and ``joblife cleanup`` dropping whole months (export first, the
rows of kept jobs kept) while it deletes the partial month row by row."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from joblife.cli.main import app
from joblife.config import get_settings
from joblife.db import migrate
from joblife.db.engine import create_joblife_engine
from joblife.db.history_partitions import (
    PartitionKeeper,
    ensure_history_partitions,
    history_partitions,
)
from joblife.db.status import set_job_status
from joblife.model import JobStatus
from joblife.ops.cleanup import cleanup
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from tests.support.factories import make_jobs, move_to
from tests.test_ops_cleanup import backdate

S = JobStatus
HISTORY = "SELECT id, job_id, previous_status, status, time, message, details FROM {table}"


def month(offset: int, day: int = 10) -> datetime:
    """``day`` of the UTC month ``offset`` months from this one, at noon."""
    now = datetime.now(UTC)
    index = now.year * 12 + now.month - 1 + offset
    return datetime(index // 12, index % 12 + 1, day, 12, tzinfo=UTC)


def month_name(offset: int) -> str:
    start = month(offset)
    return f"job_status_changes_{start.year:04d}{start.month:02d}"


def history(engine: Engine, where: str = "") -> dict[int, tuple]:
    """Every history row by id (``where``: a condition on it)."""
    with engine.connect() as conn:
        rows = conn.execute(text(HISTORY.format(table="job_status_changes c") + where)).all()
    return {row.id: tuple(row) for row in rows}


def located(engine: Engine, job_ids: list[int] | None = None) -> dict[int, str]:
    """The partition of every history row (of these jobs), by id."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, tableoid::regclass::text FROM job_status_changes "
                "WHERE CAST(:ids AS bigint[]) IS NULL OR job_id = ANY (:ids)"
            ),
            {"ids": job_ids},
        )
        return dict(rows.all())


def insert_jobs(engine: Engine, count: int, prefix: str, when: datetime) -> list[int]:
    """Jobs created (their first history row dated) ``when``, in SQL."""
    with engine.begin() as conn:
        return list(
            conn.execute(
                text(
                    "INSERT INTO jobs (job_type, input_product_id, worker_flavor, "
                    "status_changed_at) SELECT 'example', :p || g, 'small', :t "
                    "FROM generate_series(1, :n) AS g RETURNING id"
                ),
                {"p": prefix, "t": when, "n": count},
            ).scalars()
        )


def change_status(engine: Engine, job_ids: list[int], status: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("SELECT set_job_status(CAST(:ids AS bigint[]), :s)"), {"ids": job_ids, "s": status}
        )


def partition_names(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [p.name for p in history_partitions(conn)]


def backdate_history(engine: Engine, job_ids: list[int], when: datetime) -> None:
    """Date every history row of these jobs ``when`` (test set-up, as the superuser, past
    the append-only trigger; the rows move to that month's partition)."""
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(
            text("UPDATE job_status_changes SET time = :t WHERE job_id = ANY (:ids)"),
            {"t": when, "ids": job_ids},
        )


def created_at(session: Session, count: int, prefix: str, when: datetime) -> list[int]:
    """Jobs created (their first history row dated) ``when``."""
    return [j.id for j in make_jobs(session, count, prefix, status_changed_at=when)]


# -- the upgrade in place --------------------------------------------------------------------


@pytest.fixture
def blank_engine(admin_engine: Engine, pg_admin_url: str) -> Iterator[Engine]:
    """An engine on a new, empty database of this test's own."""
    name = f"jl_hist_{uuid.uuid4().hex[:12]}"
    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_joblife_engine(pg_admin_url.rsplit("/", 1)[0] + f"/{name}")
    yield engine
    engine.dispose()
    with admin_engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _previous_revision() -> str:
    script = ScriptDirectory.from_config(migrate.alembic_config())
    down = script.get_revision("0015").down_revision
    assert isinstance(down, str)
    return down


def test_upgrade_in_place_keeps_every_row_and_downgrades(blank_engine: Engine) -> None:
    engine = blank_engine
    migrate.upgrade(engine, _previous_revision())
    # History over six months (creation rows dated back) and today (status changes), in
    # SQL: the models may describe columns of later revisions.
    everyone = [i for k in range(6) for i in insert_jobs(engine, 5, f"M{k}-", month(-k))]
    change_status(engine, everyone[::2], "ready")
    before = history(engine)
    assert len(before) == 30 + 15
    assert len({(t.year, t.month) for *_, t, _m, _d in before.values()}) == 6
    max_id = max(before)

    migrate.upgrade(engine, "0015")

    assert history(engine) == before  # every row, as it was
    with engine.connect() as conn:
        parts = history_partitions(conn)
        kind = conn.execute(
            text("SELECT relkind FROM pg_class WHERE oid = 'job_status_changes'::regclass")
        ).scalar_one()
        # The legacy table's indexes were attached to the parent's, not built anew.
        attached, parents = conn.execute(
            text(
                "SELECT (SELECT count(*) FROM pg_inherits i JOIN pg_index x "
                "ON x.indexrelid = i.inhrelid "
                "WHERE x.indrelid = 'job_status_changes_legacy'::regclass), "
                "(SELECT count(*) FROM pg_index WHERE indrelid = 'job_status_changes'::regclass)"
            )
        ).one()
    assert kind == "p"
    assert attached == parents >= 1  # (job_id, id), and (time) since 0014
    legacy, *months, default = parts
    assert (legacy.name, legacy.lower, legacy.upper) == (
        "job_status_changes_legacy",
        None,
        month(1, day=1).replace(hour=0),
    )
    assert set(located(engine).values()) == {"job_status_changes_legacy"}
    assert [p.name for p in months] == [month_name(k) for k in range(1, 4)]
    assert default.is_default

    # The door goes on; ids go on from where they were.
    change_status(engine, [everyone[1]], "ready")
    later = insert_jobs(engine, 1, "F", month(2))  # a month created ahead
    far = insert_jobs(engine, 1, "X", month(9))  # a month without partition
    rows = located(engine)
    new = {i: rows[i] for i in rows if i not in before}
    assert min(new) > max_id
    assert sorted(new.values()) == sorted(
        ["job_status_changes_legacy", month_name(2), "job_status_changes_default"]
    )

    # The service role keeps the months ahead; it writes no partition itself.
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL ROLE joblife_service"))
        created = conn.execute(text("SELECT joblife_ensure_history_partitions(3)")).all()
        writable = conn.execute(
            text(
                "SELECT count(*) FROM joblife_history_partitions() p "
                "WHERE has_table_privilege(p.partition, 'INSERT, UPDATE, DELETE')"
            )
        ).scalar_one()
    assert [tuple(r) for r in created] == [(month_name(9),)]
    assert writable == 0
    assert set(located(engine, far).values()) == {month_name(9)}

    # Back to one table: every row again, and up again.
    after = history(engine)
    with engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn), _previous_revision())
    assert history(engine) == after
    with engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT relkind FROM pg_class WHERE oid = 'job_status_changes'::regclass")
            ).scalar_one()
            == "r"
        )
    change_status(engine, later, "ready")
    migrate.upgrade(engine)
    assert len(history(engine)) == len(after) + 1


# -- routing, months ahead, the DEFAULT partition --------------------------------------------


def test_fresh_database_routes_rows_to_their_month(session: Session, engine: Engine) -> None:
    names = partition_names(engine)
    assert names == [
        "job_status_changes_legacy",
        *(month_name(k) for k in range(0, 4)),
        "job_status_changes_default",
    ]
    [job] = make_jobs(session, 1)
    move_to(session, [job.id], S.READY)
    assert set(located(engine).values()) == {month_name(0)}


def test_rows_of_a_month_without_partition_are_moved_out_of_the_default(
    session: Session, engine: Engine
) -> None:
    far = created_at(session, 3, "F", month(14))
    move_to(session, far[:1], S.READY)  # a row of today among them
    rows = located(engine)
    assert sorted(rows.values()) == sorted([month_name(0), *["job_status_changes_default"] * 3])
    before = history(engine)

    with engine.begin() as conn:
        created = ensure_history_partitions(conn, 5)
    assert created == [*(month_name(k) for k in (4, 5)), month_name(14)]
    assert history(engine) == before
    moved = located(engine)
    assert sorted(moved.values()) == sorted([month_name(0), *[month_name(14)] * 3])
    assert partition_names(engine)[-1] == "job_status_changes_default"
    with engine.begin() as conn:
        assert ensure_history_partitions(conn, 5) == []  # nothing left to do


def test_the_keeper_checks_at_most_once_per_interval(engine: Engine) -> None:
    keeper = PartitionKeeper(interval=3600)
    assert keeper.maybe_run(engine, 6) == [month_name(k) for k in (4, 5, 6)]
    assert keeper.maybe_run(engine, 8) is None  # not due yet
    assert month_name(7) not in partition_names(engine)


# -- cleanup ------------------------------------------------------------------------------


def snapshot(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        jobs = conn.execute(text("SELECT id, status, status_changed_at FROM jobs")).all()
    return {"jobs": sorted(map(tuple, jobs)), "history": history(engine), "at": located(engine)}


@pytest.fixture
def months_of_history(session: Session, engine: Engine) -> dict[str, list[int]]:
    """Jobs whose history spans whole months before the cutoff and the current one:

    - ``gone``: created 5 months ago, done today but finished 40 days ago for the cutoff;
    - ``gone_alone``: created 3 months ago, cancelled, finished 40 days ago: their month
      holds nothing else;
    - ``running``: created 5 months ago, still ready (kept);
    - ``recent``: created 5 months ago, done 5 days ago (kept: after the cutoff);
    - ``waiting``: created 4 months ago, initialized (kept: their month holds nothing else).
    The empty legacy partition is dropped first, so that these months get a partition each.
    """
    with engine.begin() as conn:
        conn.execute(text("SELECT joblife_drop_history_partition('job_status_changes_legacy')"))
    groups = {
        "gone": created_at(session, 4, "G", month(-5)),
        "gone_alone": created_at(session, 2, "A", month(-3)),
        "running": created_at(session, 2, "R", month(-5)),
        "recent": created_at(session, 2, "C", month(-5)),
        "waiting": created_at(session, 1, "W", month(-4)),
    }
    move_to(session, groups["gone"] + groups["recent"], S.DONE)
    move_to(session, groups["gone_alone"], S.CANCELLED)
    move_to(session, groups["running"], S.READY)
    backdate(engine, groups["gone"] + groups["gone_alone"], days=40)
    backdate(engine, groups["recent"], days=5)
    with engine.begin() as conn:
        ensure_history_partitions(conn, 3)  # the months of the rows in the DEFAULT partition
    assert set(located(engine).values()) == {month_name(k) for k in (-5, -4, -3, 0)}
    return groups


def test_cleanup_dry_run_reports_the_months_and_changes_nothing(
    engine: Engine, months_of_history: dict[str, list[int]], joblife_env: str
) -> None:
    before = snapshot(engine)
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["cleanup", "--older-than", "30d", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert snapshot(engine) == before
    assert partition_names(engine) == [
        *(month_name(k) for k in (-5, -4, -3, 0, 1, 2, 3)),
        "job_status_changes_default",
    ]
    assert report["jobs"] == 6 and report["by_status"] == {"done": 4, "cancelled": 2}
    # Outside the months to drop: the rows of today of the 6 jobs (10 + 1 each).
    assert report["history_rows"] == 4 * 10 + 2 * 1
    assert report["history_rows_dropped"] == 6
    assert [
        (p["name"], p["rows"], p["dropped"], p["kept"], p["left"]) for p in report["partitions"]
    ] == [
        (month_name(-5), 8, 4, 4, None),
        (month_name(-4), 1, 0, 1, "every row belongs to a job kept"),
        (month_name(-3), 2, 2, 0, None),
    ]

    text_report = CliRunner().invoke(app, ["cleanup", "--older-than", "30d"]).stdout
    assert f"history {month_name(-3)}: would drop 2 of 2 rows" in text_report
    assert "dry run: nothing removed" in text_report


def test_cleanup_drops_whole_months_and_exports_them(
    engine: Engine, months_of_history: dict[str, list[int]], tmp_path: Path
) -> None:
    groups = months_of_history
    gone = set(groups["gone"] + groups["gone_alone"])
    before = snapshot(engine)
    rows_of_gone = {i: r for i, r in before["history"].items() if r[1] in gone}
    export = tmp_path / "export.jsonl"

    report = cleanup(
        engine, timedelta(days=30), datetime.now(UTC), execute=True, export=export, batch_size=4
    )

    assert report.jobs == 6 and report.batches == 2
    assert report.history_rows == 4 * 10 + 2  # the partial month, row by row
    assert report.history_rows_dropped == 6
    assert [(p.name, p.rows, p.dropped, p.kept, p.left) for p in report.partitions] == [
        (month_name(-5), 8, 4, 4, None),
        (month_name(-4), 1, 0, 1, "every row belongs to a job kept"),
        (month_name(-3), 2, 2, 0, None),
    ]
    # The month of kept jobs' rows is replaced by them (same name); the month with
    # nothing kept is gone; the rows of every kept job are all there, where they were.
    assert partition_names(engine) == [
        *(month_name(k) for k in (-5, -4, 0, 1, 2, 3)),
        "job_status_changes_default",
    ]
    after = snapshot(engine)
    assert after["history"] == {i: r for i, r in before["history"].items() if r[1] not in gone}
    assert after["at"] == {i: p for i, p in before["at"].items() if i in after["history"]}
    assert {j[0] for j in after["jobs"]} == {j[0] for j in before["jobs"]} - gone

    # The export holds exactly the rows removed: the dropped months' rows of the jobs
    # gone, one line each, and every job gone with its other rows.
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    jobs = [line for line in lines if "job" in line]
    dropped = [line for line in lines if "history_row" in line]
    assert len(jobs) + len(dropped) == len(lines)
    assert {line["job"]["id"] for line in jobs} == gone
    exported = {h["id"]: (h["job_id"], h["time"]) for h in (d["history_row"] for d in dropped)}
    for line in jobs:
        for h in line["history"]:
            exported[h["id"]] = (line["job"]["id"], h["time"])
    assert set(exported) == set(rows_of_gone)
    assert {d["partition"] for d in dropped} == {month_name(-5), month_name(-3)}
    assert all(exported[i][0] == rows_of_gone[i][1] for i in exported)

    # The replaced month is a partition like the others: indexes, door, privileges.
    with engine.connect() as conn:
        indexes = conn.execute(
            text("SELECT count(*) FROM pg_index WHERE indrelid = CAST(:p AS regclass)"),
            {"p": month_name(-5)},
        ).scalar_one()
    assert indexes == 3  # its primary key, (job_id, id), (time)
    with Session(engine) as session:
        set_job_status(session, groups["running"], S.QUEUED)
        session.commit()
    # Nothing left to do the next time.
    again = cleanup(engine, timedelta(days=30), datetime.now(UTC), execute=True)
    assert again.jobs == 0
    assert [(p.name, p.left) for p in again.partitions] == [
        (month_name(-5), "every row belongs to a job kept"),
        (month_name(-4), "every row belongs to a job kept"),
    ]


def test_a_month_whose_lock_is_not_granted_is_left_for_the_next_run(
    engine: Engine, months_of_history: dict[str, list[int]], tmp_path: Path
) -> None:
    export = tmp_path / "export.jsonl"
    holder = engine.connect()
    try:
        # A long reader of the history: the drop cannot take its exclusive lock.
        holder.execute(text("SELECT count(*) FROM job_status_changes"))
        report = cleanup(
            engine,
            timedelta(days=30),
            datetime.now(UTC),
            execute=True,
            export=export,
            lock_timeout_ms=50,
            lock_attempts=2,
            lock_retry_pause=0,
        )
    finally:
        holder.rollback()
        holder.close()
    assert report.jobs == 6
    left = {p.name: p.left for p in report.partitions}
    assert "not granted" in (left[month_name(-5)] or "")
    assert "not granted" in (left[month_name(-3)] or "")
    assert report.history_rows_dropped == 0
    # The rows of the jobs gone wait in their month; the export holds the jobs only.
    assert month_name(-3) in partition_names(engine)
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert all("job" in line for line in lines) and len(lines) == 6

    report = cleanup(engine, timedelta(days=30), datetime.now(UTC), execute=True, export=export)
    assert report.jobs == 0 and report.history_rows_dropped == 6
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert len(lines) == 6 + 6
    with engine.connect() as conn:
        orphans = conn.execute(
            text(
                "SELECT count(*) FROM job_status_changes c "
                "WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = c.job_id)"
            )
        ).scalar_one()
    assert orphans == 0
