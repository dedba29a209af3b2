"""``joblife cleanup`` on a mixed database: only jobs done or cancelled before the cutoff go,
with their history, type rows and outbox rows; a dry run changes nothing; the export holds
exactly what was removed; a job locked by someone else is skipped, not waited for."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from joblife.cli.main import app
from joblife.config import get_settings
from joblife.model import JobStatus
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from tests.support.factories import make_jobs, move_to

S = JobStatus


def counts(engine: Engine) -> dict[str, Any]:
    """Per job id: (status, history rows, outbox rows, has a type row)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT j.id, j.status, "
                "(SELECT count(*) FROM job_status_changes c WHERE c.job_id = j.id) AS history, "
                "(SELECT count(*) FROM publications p WHERE p.job_id = j.id) AS outbox, "
                "EXISTS (SELECT 1 FROM example_jobs e WHERE e.id = j.id) AS typed FROM jobs j"
            )
        ).all()
    return {r.id: (JobStatus(r.status), r.history, r.outbox, r.typed) for r in rows}


def backdate(engine: Engine, job_ids: list[int], days: int) -> None:
    """Make these jobs' last status change ``days`` old (test set-up, as the superuser,
    past the trigger guard)."""
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(
            text(
                "UPDATE jobs SET status_changed_at = now() - make_interval(days => :d) "
                "WHERE id = ANY (:ids)"
            ),
            {"d": days, "ids": job_ids},
        )


def cli(*args: str) -> Any:
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["cleanup", *args])
    assert result.exit_code == 0, result.output
    return result


def test_cleanup_removes_only_old_finished_jobs(
    session: Session, engine: Engine, joblife_env: str, tmp_path: Path
) -> None:
    # One old job in every status, plus recent done and cancelled ones.
    old = {status: job.id for status, job in zip(S, make_jobs(session, 16, "O"), strict=True)}
    for status, job_id in old.items():
        move_to(session, [job_id], status)
    recent_done, recent_cancelled = (j.id for j in make_jobs(session, 2, "R"))
    move_to(session, [recent_done], S.DONE)
    move_to(session, [recent_cancelled], S.CANCELLED)
    extra_done = [j.id for j in make_jobs(session, 3, "D")]
    move_to(session, extra_done, S.DONE)
    with engine.begin() as conn:
        for job_id in [old[S.DONE], *extra_done, recent_done]:
            conn.execute(
                text(
                    "INSERT INTO publications (job_id, attempt, product, message_id, body, "
                    "published_at) VALUES (:id, 1, 'mask', :m, '{\"k\": 1}', now())"
                ),
                {"id": job_id, "m": str(uuid.uuid4())},
            )
    backdate(engine, [*old.values(), *extra_done], days=40)
    before = counts(engine)
    gone = {old[S.DONE], old[S.CANCELLED], *extra_done}

    # Dry run: the count, nothing removed.
    report = json.loads(cli("--older-than", "30d", "--json").stdout)
    assert report["executed"] is False
    assert report["jobs"] == len(gone)
    assert report["by_status"] == {"done": 4, "cancelled": 1}
    assert report["history_rows"] == sum(before[i][1] for i in gone)
    assert report["publications"] == 4
    assert counts(engine) == before

    # A job someone holds locked is skipped by this run, not waited for.
    locked = extra_done[0]
    holder = engine.connect()
    try:
        holder.execute(text("SELECT 1 FROM jobs WHERE id = :id FOR UPDATE"), {"id": locked})
        export = tmp_path / "export.jsonl"
        result = cli(
            "--older-than", "30d", "--execute", "--export", str(export), "--batch-size", "2"
        )
    finally:
        holder.rollback()
        holder.close()
    assert "removed 4 jobs" in result.stdout and "2 batches" in result.stdout, result.stdout
    after = counts(engine)
    assert set(after) == set(before) - (gone - {locked})
    for job_id, values in after.items():
        assert values == before[job_id]  # nothing else touched, history included
    with engine.connect() as conn:
        orphans = conn.execute(
            text(
                "SELECT (SELECT count(*) FROM job_status_changes c WHERE NOT EXISTS "
                "(SELECT 1 FROM jobs j WHERE j.id = c.job_id)) + (SELECT count(*) FROM "
                "example_jobs e WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = e.id))"
            )
        ).scalar_one()
    assert orphans == 0

    exported = [json.loads(line) for line in export.read_text().splitlines()]
    assert sorted(e["job"]["id"] for e in exported) == sorted(gone - {locked})
    for entry in exported:
        job_id = entry["job"]["id"]
        status, history, outbox, typed = before[job_id]
        assert entry["job"]["status"] == int(status)
        assert len(entry["history"]) == history
        assert [h["status"] for h in entry["history"]][-1] == int(status)
        assert len(entry["publications"]) == outbox
        assert (entry["type_fields"] is not None) == typed
        assert "band" in entry["type_fields"]

    # Next run: the job no longer locked goes too; appended to the same export.
    cli("--older-than", "30d", "--execute", "--export", str(export))
    assert locked not in counts(engine)
    assert len(export.read_text().splitlines()) == len(gone)


def test_cleanup_refuses_a_bad_duration(joblife_env: str) -> None:
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["cleanup", "--older-than", "soon"])
    assert result.exit_code == 2  # a usage error
    msg = " ".join(result.stderr.replace("│", " ").split())
    assert "Invalid value for '--older-than': invalid duration 'soon'" in msg
