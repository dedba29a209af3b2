"""Worker writes only through SECURITY DEFINER procedures that check the attempt and its
secret: ``jobs.attempt_secret_hash`` (SHA-256 of the attempt secret, written by the
dispatcher), the doors ``worker_heartbeat``, ``worker_record_outcome`` and
``worker_write_publications``, ``worker_set_job_status`` checking the secret too, and the
worker role's column privileges on jobs and its INSERT on publications revoked. See
database/sql/v0011_worker_doors.sql.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from joblife.db.migration_helpers import run_sql_file

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DOORS = (
    "worker_heartbeat(bigint, integer)",
    "worker_record_outcome(bigint, integer, integer, text, text, timestamptz)",
    "worker_write_publications(bigint, integer, jsonb)",
    "worker_check_attempt_secret(bigint, bytea)",
    "worker_location_is_safe(text)",
)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("attempt_secret_hash", sa.LargeBinary(), nullable=True))
    run_sql_file("v0011_worker_doors.sql")


def downgrade() -> None:
    for function in _DOORS:
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
    op.drop_column("jobs", "attempt_secret_hash")
    # Revision 0007's worker door (no secret) and grants (the worker's column privileges
    # and outbox INSERT), re-applied.
    run_sql_file("v0007_roles.sql")
