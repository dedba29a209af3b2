"""Foundation: jobs, statuses and transitions, history, outbox; the status machine,
procedures and operator views.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from joblife.db.migration_helpers import run_sql_file
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("joblife",)
depends_on: str | Sequence[str] | None = None

# Frozen here on purpose: a migration must not change when application code does.
STATUSES = [
    (1, "initialized", "created from a discovered input product"),
    (2, "configured", "waiting for a dependency; re-checked until its deadline"),
    (3, "ready", "ready to be dispatched"),
    (4, "queued", "dispatch requested from the executor"),
    (5, "started", "a worker took the attempt"),
    (6, "pre_processing", "fetching inputs and dependencies"),
    (7, "processing", "running the science step"),
    (8, "post_processing", "checking and uploading outputs"),
    (9, "processed", "outputs uploaded; publication messages in the outbox"),
    (10, "start_publication", "publication messages being sent"),
    (11, "published", "every publication message confirmed by the broker"),
    (12, "done", "finished"),
    (13, "internal_error", "a bug or invalid input: not retried automatically"),
    (14, "external_error", "a dependency failed: retried with backoff up to max_attempts"),
    (15, "error_checked", "an operator acknowledged the error"),
    (16, "cancelled", "will not be processed"),
]

_NEW = None
_TERMINAL = {"done", "cancelled"}
_ERRORS = {"internal_error", "external_error", "error_checked"}
_IN_FLIGHT = ["queued", "started", "pre_processing", "processing", "post_processing"]
TRANSITIONS = [
    (_NEW, "initialized"),
    (_NEW, "cancelled"),
    ("initialized", "configured"),
    ("initialized", "ready"),
    ("initialized", "cancelled"),
    ("configured", "ready"),
    ("configured", "cancelled"),
    ("ready", "queued"),
    ("ready", "cancelled"),
    ("queued", "started"),
    ("started", "pre_processing"),
    ("pre_processing", "processing"),
    ("processing", "post_processing"),
    ("post_processing", "processed"),
    ("processed", "start_publication"),
    ("processed", "done"),
    ("start_publication", "published"),
    ("published", "done"),
    ("done", "start_publication"),
    ("external_error", "ready"),
    ("external_error", "error_checked"),
    ("external_error", "internal_error"),
    ("external_error", "cancelled"),
    ("internal_error", "error_checked"),
    ("internal_error", "cancelled"),
    ("error_checked", "initialized"),
    ("error_checked", "ready"),
    ("error_checked", "processed"),
    ("error_checked", "cancelled"),
    *[
        (name, error)
        for _, name, _ in STATUSES
        if name not in _TERMINAL | _ERRORS
        for error in ("internal_error", "external_error")
    ],
    *[(name, "cancelled") for name in _IN_FLIGHT if name != "queued"],
    ("queued", "cancelled"),
]

TIMESTAMPTZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "job_statuses",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_job_statuses"),
        sa.UniqueConstraint("name", name="uq_job_statuses_name"),
    )
    statuses = sa.table(
        "job_statuses", sa.column("id"), sa.column("name"), sa.column("description")
    )
    op.bulk_insert(statuses, [{"id": i, "name": n, "description": d} for i, n, d in STATUSES])

    op.create_table(
        "job_status_transitions",
        sa.Column("id", sa.SmallInteger(), sa.Identity(), nullable=False),
        sa.Column("from_status", sa.SmallInteger(), nullable=True),
        sa.Column("to_status", sa.SmallInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["from_status"],
            ["job_statuses.id"],
            name="fk_job_status_transitions_from_status_job_statuses",
        ),
        sa.ForeignKeyConstraint(
            ["to_status"],
            ["job_statuses.id"],
            name="fk_job_status_transitions_to_status_job_statuses",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_job_status_transitions"),
        sa.UniqueConstraint(
            "from_status",
            "to_status",
            name="uq_job_status_transitions_from_status_to_status",
            postgresql_nulls_not_distinct=True,
        ),
    )
    ids = {name: i for i, name, _ in STATUSES}
    transitions = sa.table(
        "job_status_transitions", sa.column("from_status"), sa.column("to_status")
    )
    op.bulk_insert(
        transitions,
        [
            {"from_status": ids[a] if a else None, "to_status": ids[b]}
            for a, b in sorted(set(TRANSITIONS), key=lambda t: (ids.get(t[0], 0), ids[t[1]]))
        ],
    )

    op.create_table(
        "jobs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "unique_id",
            postgresql.UUID(as_uuid=True),
            server_default=sa.text("gen_random_uuid()"),
            nullable=False,
        ),
        sa.Column("job_type", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("input_product_id", sa.Text(), nullable=False),
        sa.Column("tile_id", sa.Text(), nullable=True),
        sa.Column("input_path", sa.Text(), nullable=True),
        sa.Column("input_publication_date", TIMESTAMPTZ, nullable=True),
        sa.Column("output_path", sa.Text(), nullable=True),
        sa.Column("output_publication_date", TIMESTAMPTZ, nullable=True),
        sa.Column("priority", sa.SmallInteger(), server_default=sa.text("1"), nullable=False),
        sa.Column("reprocessing_context", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("status", sa.SmallInteger(), server_default=sa.text("1"), nullable=False),
        sa.Column(
            "status_changed_at", TIMESTAMPTZ, server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("max_attempts", sa.Integer(), server_default=sa.text("3"), nullable=False),
        sa.Column("worker_flavor", sa.Text(), nullable=False),
        sa.Column("nomad_job_id", sa.Text(), nullable=True),
        sa.Column("heartbeat_at", TIMESTAMPTZ, nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("created_at", TIMESTAMPTZ, server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "attempt >= 0 AND max_attempts >= 0", name=op.f("ck_jobs_attempts_not_negative")
        ),
        sa.CheckConstraint("priority BETWEEN 1 AND 3", name=op.f("ck_jobs_priority_level")),
        # Status ids are checked, not foreign keys: a foreign key costs a lookup of
        # job_statuses on every status change, and the door only writes statuses found in
        # job_status_transitions (whose foreign keys point at job_statuses).
        sa.CheckConstraint("status BETWEEN 1 AND 16", name=op.f("ck_jobs_status_known")),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.UniqueConstraint(
            "job_type",
            "input_product_id",
            "reprocessing_context",
            name="uq_jobs_job_type_input_product_id_reprocessing_context",
        ),
        sa.UniqueConstraint("unique_id", name="uq_jobs_unique_id"),
    )
    op.create_index(
        "ix_jobs_selection",
        "jobs",
        ["job_type", "status", "priority", "input_publication_date", "id"],
    )
    # Partial: initialized and ready jobs are found by type in work order (ix_jobs_selection).
    op.create_index(
        "ix_jobs_status_changed",
        "jobs",
        ["status", "status_changed_at"],
        postgresql_where=sa.text("status NOT IN (1, 3)"),
    )

    op.create_table(
        "job_status_changes",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("previous_status", sa.SmallInteger(), nullable=True),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("time", TIMESTAMPTZ, server_default=sa.text("now()"), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column(
            "details",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_job_status_changes_job_id_jobs", ondelete="CASCADE"
        ),
        sa.CheckConstraint(
            "status BETWEEN 1 AND 16", name=op.f("ck_job_status_changes_status_known")
        ),
        sa.CheckConstraint(
            "previous_status BETWEEN 1 AND 16",
            name=op.f("ck_job_status_changes_previous_status_known"),
        ),
        sa.PrimaryKeyConstraint("id", name="pk_job_status_changes"),
    )
    op.create_index("ix_job_status_changes_job_id_id", "job_status_changes", ["job_id", "id"])

    op.create_table(
        "publications",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("product", sa.Text(), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("routing_key", sa.Text(), nullable=True),
        sa.Column("body", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", TIMESTAMPTZ, server_default=sa.text("now()"), nullable=False),
        sa.Column("published_at", TIMESTAMPTZ, nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_publications_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_publications"),
        sa.UniqueConstraint(
            "job_id", "product", "attempt", name="uq_publications_job_id_product_attempt"
        ),
        sa.UniqueConstraint("message_id", name="uq_publications_message_id"),
    )
    op.create_index(
        "ix_publications_unpublished",
        "publications",
        ["id"],
        postgresql_where=sa.text("published_at IS NULL"),
    )

    run_sql_file("v0001_status_machine.sql")
    run_sql_file("v0001_procedures.sql")
    run_sql_file("v0001_views.sql")


def downgrade() -> None:
    for view in ("job_timeliness", "jobs_overview", "job_status_summary"):
        op.execute(f"DROP VIEW IF EXISTS {view}")
    for function in (
        "retry_jobs(bigint[], text)",
        "cancel_jobs(bigint[], text)",
        "acknowledge_jobs(bigint[], text)",
        "create_jobs_with_status_function(text, regclass, text)",
        "job_status_history(bigint[])",
        "jobs_with_last_status(text, text[], integer)",
    ):
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
    op.drop_table("publications")
    op.drop_table("job_status_changes")
    op.drop_table("jobs")
    for function in (
        "job_status_changes_append_only()",
        "job_status_changes_guard_insert()",
        "jobs_record_creation()",
        "jobs_guard_status()",
        "set_job_status(bigint[], text, text[], text, jsonb)",
        "joblife_status_ids(text[])",
        "joblife_status_id(text)",
    ):
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
    op.drop_table("job_status_transitions")
    op.drop_table("job_statuses")
