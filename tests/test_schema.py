"""The schema: built by the migration chain, equal to what the models describe, with the
procedures and views operators and services rely on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from joblife.db import migrate
from joblife.db.history_partitions import include_name
from joblife.db.status import set_job_status
from joblife.model import Base, JobStatus, Priority
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from tests.support.example_type import ExampleJob
from tests.support.factories import make_jobs, move_to


def _diff(engine: Engine) -> list:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                # The history's monthly partitions are not in the models (revision 0015).
                "include_name": include_name,
            },
        )
        return compare_metadata(context, Base.metadata)


def test_migrations_build_exactly_the_schema_the_models_describe(engine: Engine) -> None:
    assert "example_jobs" in Base.metadata.tables  # the partner type is part of it
    assert _diff(engine) == []


def test_autogenerate_comparison_does_see_a_drift(engine: Engine) -> None:
    """The comparison above is not blind: a column the models lack is reported."""
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE jobs ADD COLUMN surprise integer"))
    assert any("surprise" in repr(entry) for entry in _diff(engine))


def test_database_is_at_every_head(engine: Engine) -> None:
    assert migrate.head_revisions() == {"0020", "e001"}
    assert migrate.pending_revisions(engine) == set()
    with engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn), "example@base")
    assert migrate.pending_revisions(engine) == {"e001"}


def test_downgrade_to_base_and_back(engine: Engine) -> None:
    with engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn), "base")
    with engine.connect() as conn:
        left = conn.execute(
            text(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'alembic_version'"
            )
        ).scalar()
    assert left == 0
    migrate.upgrade(engine)
    assert _diff(engine) == []


def test_jobs_with_last_status_selects_in_work_order(session: Session, engine: Engine) -> None:
    now = datetime.now(UTC)
    late = make_jobs(
        session,
        3,
        prefix="late",
        priority=Priority.DELAYED,
        input_publication_date=now - timedelta(hours=5),
    )
    fresh = make_jobs(session, 3, prefix="nrt", priority=Priority.NRT, input_publication_date=now)
    old_nrt = make_jobs(
        session,
        1,
        prefix="old",
        priority=Priority.NRT,
        input_publication_date=now - timedelta(days=1),
    )
    other = make_jobs(session, 2, prefix="other")
    move_to(session, [j.id for j in late + fresh + old_nrt], JobStatus.READY)
    move_to(session, [j.id for j in other], JobStatus.CANCELLED)
    with engine.connect() as conn:
        ids = (
            conn.execute(text("SELECT id FROM jobs_with_last_status('example', ARRAY['ready'], 5)"))
            .scalars()
            .all()
        )
        all_types = conn.execute(
            text("SELECT count(*) FROM jobs_with_last_status(NULL, ARRAY['ready','cancelled'])")
        ).scalar()
        none = conn.execute(
            text("SELECT count(*) FROM jobs_with_last_status('nope', ARRAY['ready'])")
        ).scalar()
    assert ids == [old_nrt[0].id, *[j.id for j in fresh], late[0].id]
    assert all_types == 9
    assert none == 0


def test_per_type_procedure_returns_parent_and_type_columns(
    session: Session, engine: Engine
) -> None:
    jobs = make_jobs(session, 4, band="B03", resolution_m=20, tile_id="31TCJ")
    move_to(session, [jobs[0].id, jobs[1].id], JobStatus.READY)
    with engine.connect() as conn:
        rows = (
            conn.execute(
                text(
                    f"SELECT * FROM {ExampleJob.GET_JOBS_WITH_STATUS_PROCEDURE_NAME}"
                    "(ARRAY['ready'])"
                )
            )
            .mappings()
            .all()
        )
    assert sorted(r["id"] for r in rows) == sorted([jobs[0].id, jobs[1].id])
    row = rows[0]
    assert row["status_name"] == "ready"
    assert (row["band"], row["resolution_m"], row["tile_id"]) == ("B03", 20, "31TCJ")
    assert row["job_type"] == "example" and row["worker_flavor"] == "small"
    assert ExampleJob.from_database_value("band", row["band"]) == "B03"


def test_operator_views(session: Session, engine: Engine) -> None:
    published = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    jobs = make_jobs(session, 3, input_publication_date=published)
    move_to(session, [jobs[0].id], JobStatus.DONE)
    move_to(session, [jobs[1].id], JobStatus.READY)
    jobs[0].output_publication_date = published + timedelta(hours=2, minutes=30)
    session.commit()
    set_job_status(session, jobs[2].id, JobStatus.EXTERNAL_ERROR, message="s3 down")
    session.commit()
    with engine.connect() as conn:
        summary = {
            (r.job_type, r.status): r.jobs
            for r in conn.execute(text("SELECT * FROM job_status_summary"))
        }
        overview = {r.id: r for r in conn.execute(text("SELECT * FROM jobs_overview"))}
        timeliness = {r.id: r for r in conn.execute(text("SELECT * FROM job_timeliness"))}
    assert summary == {
        ("example", "done"): 1,
        ("example", "ready"): 1,
        ("example", "external_error"): 1,
    }
    assert overview[jobs[2].id].status == "external_error"
    assert overview[jobs[2].id].priority == "nrt"
    assert overview[jobs[2].id].time_in_status >= timedelta(0)
    assert timeliness[jobs[0].id].timeliness_seconds == 9000
    assert timeliness[jobs[1].id].timeliness is None


# What a revision's schema is made of, compared before and after a round trip: functions
# (definition, SECURITY DEFINER, settings such as search_path, grants), constraints,
# relations and their grants, triggers and indexes of joblife's schema.
_SCHEMA_PARTS = {
    "functions": (
        "SELECT p.oid::regprocedure::text, md5(pg_get_functiondef(p.oid)), p.prosecdef, "
        "p.proconfig::text, p.proacl::text FROM pg_proc p "
        "WHERE p.pronamespace = current_schema()::regnamespace AND p.prokind IN ('f', 'p')"
    ),
    "constraints": (
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
        "FROM pg_constraint WHERE connamespace = current_schema()::regnamespace"
    ),
    "relations": (
        "SELECT relname, relkind, relacl::text FROM pg_class "
        "WHERE relnamespace = current_schema()::regnamespace"
    ),
    "triggers": (
        "SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger "
        "WHERE NOT tgisinternal"
    ),
    "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()",
}


def _schema(engine: Engine) -> dict[str, set[tuple]]:
    with engine.connect() as conn:
        return {
            part: {tuple(row) for row in conn.execute(text(sql))}
            for part, sql in _SCHEMA_PARTS.items()
        }


def test_each_downgrade_restores_what_its_upgrade_built(engine: Engine) -> None:
    """From 0013 on (0013's own downgrade is empty by design), going down from the head to
    a revision gives back the very schema going up to it built: every procedure's text,
    its SECURITY DEFINER and search_path, the grants, constraints, triggers, indexes."""
    revisions = [f"{n:04d}" for n in range(13, 20)]
    with engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn), "base")
    built = {}
    for revision in revisions:
        migrate.upgrade(engine, revision)
        built[revision] = _schema(engine)
    migrate.upgrade(engine, "0020")
    for revision in reversed(revisions):
        with engine.begin() as conn:
            command.downgrade(migrate.alembic_config(conn), revision)
        restored = _schema(engine)
        for part, rows in built[revision].items():
            assert restored[part] == rows, (
                f"{revision} {part}: only after the upgrade {sorted(rows - restored[part])[:3]}, "
                f"only after the downgrade {sorted(restored[part] - rows)[:3]}"
            )
