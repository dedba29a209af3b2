"""Products that cannot be stored are recorded apart: the ``rejected_products`` table and
its one writer ``record_rejected_products()``; the creation trigger writes a per-job first
history message (a product refused for an unsafe key is a cancelled job that says why).
See database/sql/v0012_rejected_products.sql.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from joblife.db.migration_helpers import run_sql_file

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WRITER = "record_rejected_products(text, text[], text[], text[], timestamptz)"

#: jobs_record_creation() as database/sql/v0001_status_machine.sql defined it.
_CREATION_TRIGGER_0001 = """
CREATE OR REPLACE FUNCTION jobs_record_creation() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_bad record;
BEGIN
    SELECT n.id, s.name INTO v_bad
      FROM new_jobs n LEFT JOIN job_statuses s ON s.id = n.status
     WHERE NOT EXISTS (SELECT 1 FROM job_status_transitions tr
                        WHERE tr.from_status IS NULL AND tr.to_status = n.status)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'JL002',
            MESSAGE = format('job %s: a job cannot be created in status %s', v_bad.id,
                             coalesce(v_bad.name, 'NULL')),
            DETAIL = json_build_object('job_id', v_bad.id, 'from', NULL, 'to', v_bad.name)::text;
    END IF;
    INSERT INTO job_status_changes (job_id, previous_status, status, time, message)
    SELECT n.id, NULL, n.status, n.status_changed_at, 'created' FROM new_jobs n;
    RETURN NULL;
END;
$$;
"""


def upgrade() -> None:
    timestamptz = sa.DateTime(timezone=True)
    op.create_table(
        "rejected_products",
        sa.Column("job_type", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("reason_class", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("first_seen", timestamptz, nullable=False),
        sa.Column("last_seen", timestamptz, nullable=False),
        sa.Column("times_seen", sa.BigInteger(), server_default=sa.text("1"), nullable=False),
        sa.PrimaryKeyConstraint("job_type", "name", name=op.f("pk_rejected_products")),
    )
    run_sql_file("v0012_rejected_products.sql")
    # CREATE OR REPLACE reset the trigger function to SECURITY INVOKER: the grants put it
    # back (and give every role SELECT on the new table); the writer runs with the
    # owner's rights, for the service role only.
    op.execute("SELECT joblife_grant_role_privileges()")
    op.execute(
        f"""
        DO $$
        BEGIN
            EXECUTE format('ALTER FUNCTION {_WRITER} SECURITY DEFINER '
                           'SET search_path = %I, pg_temp', current_schema());
            REVOKE ALL ON FUNCTION {_WRITER} FROM PUBLIC;
            GRANT EXECUTE ON FUNCTION {_WRITER} TO joblife_service;
        END;
        $$
        """
    )


def downgrade() -> None:
    op.execute(f"DROP FUNCTION IF EXISTS {_WRITER}")
    op.drop_table("rejected_products")
    op.execute(_CREATION_TRIGGER_0001)
    op.execute("SELECT joblife_grant_role_privileges()")
