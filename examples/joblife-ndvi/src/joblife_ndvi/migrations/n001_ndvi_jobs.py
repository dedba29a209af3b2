"""The ndvi job type's table and per-type procedure.

Revision ID: n001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from joblife.db.migration_helpers import create_job_type_procedure, drop_job_type_procedure

revision = "n001"
down_revision = None
branch_labels = ("ndvi",)
depends_on = "0001"  # joblife's revision that creates jobs


def upgrade() -> None:
    op.create_table(
        "ndvi_jobs",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column(
            "vegetation_threshold", sa.Float(), server_default=sa.text("0.3"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["id"], ["jobs.id"], name="fk_ndvi_jobs_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_ndvi_jobs"),
    )
    create_job_type_procedure("get_ndvi_jobs_with_status", "ndvi_jobs", "ndvi")


def downgrade() -> None:
    drop_job_type_procedure("get_ndvi_jobs_with_status")
    op.drop_table("ndvi_jobs")
