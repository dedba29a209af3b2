"""The test job type's table and per-type procedure (a partner migration).

Revision ID: e001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from joblife.db.migration_helpers import create_job_type_procedure, drop_job_type_procedure

revision: str = "e001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("example",)
depends_on: str | Sequence[str] | None = "0001"


def upgrade() -> None:
    op.create_table(
        "example_jobs",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("band", sa.Text(), nullable=True),
        sa.Column("resolution_m", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["id"], ["jobs.id"], name="fk_example_jobs_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_example_jobs"),
    )
    create_job_type_procedure("get_example_jobs_with_status", "example_jobs", "example")


def downgrade() -> None:
    drop_job_type_procedure("get_example_jobs_with_status")
    op.drop_table("example_jobs")
