"""The ``test`` job type's table (joblife.jobtypes.test_job): behaviour chosen per job.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from joblife.db.migration_helpers import create_job_type_procedure, drop_job_type_procedure

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "test_jobs",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("behaviour", sa.Text(), server_default=sa.text("'succeed'"), nullable=False),
        sa.Column("behaviour_attempts", sa.Integer(), nullable=True),
        sa.Column("sleep_seconds", sa.Float(), server_default=sa.text("0"), nullable=False),
        sa.Column("depends_on_product", sa.Text(), nullable=True),
        sa.Column("publish", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.ForeignKeyConstraint(
            ["id"], ["jobs.id"], name="fk_test_jobs_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_test_jobs"),
    )
    create_job_type_procedure("get_test_jobs_with_status", "test_jobs", "test")


def downgrade() -> None:
    drop_job_type_procedure("get_test_jobs_with_status")
    op.drop_table("test_jobs")
