"""History without a foreign key to jobs: a statement trigger deletes it with its jobs.

The foreign key cost a lookup and a tuple lock of the job for every history row, on every
status change and every created job; history is written only by the guarded door and the
creation trigger, for jobs that exist. See database/sql/v0009_history_cascade.sql.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
from joblife.db.migration_helpers import run_sql_file

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint(
        "fk_job_status_changes_job_id_jobs", "job_status_changes", type_="foreignkey"
    )
    run_sql_file("v0009_history_cascade.sql")


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS jobs_no_truncate ON jobs")
    op.execute("DROP TRIGGER IF EXISTS jobs_delete_history ON jobs")
    op.execute("DROP FUNCTION IF EXISTS jobs_delete_history()")
    # History rows whose job is gone (only the owner could have made them, e.g. deleting
    # jobs with triggers disabled) would fail the key; append-only lets them be deleted.
    op.execute(
        "DELETE FROM job_status_changes c "
        "WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = c.job_id)"
    )
    op.create_foreign_key(
        "fk_job_status_changes_job_id_jobs",
        "job_status_changes",
        "jobs",
        ["job_id"],
        ["id"],
        ondelete="CASCADE",
    )
