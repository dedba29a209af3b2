"""Worker runtime: ``jobs.science_image``, the science image an attempt ran (name:tag@id).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from joblife.db.migration_helpers import create_job_type_procedure

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: adding it rewrites nothing, whatever the size of jobs.
    op.add_column("jobs", sa.Column("science_image", sa.Text(), nullable=True))
    # The per-type procedures list the parent columns they return: re-create the test type's.
    create_job_type_procedure("get_test_jobs_with_status", "test_jobs", "test")


def downgrade() -> None:
    op.drop_column("jobs", "science_image")
    create_job_type_procedure("get_test_jobs_with_status", "test_jobs", "test")
