"""Life cycle: when a job is due for a service's attention, and what it waits for.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("waiting_for", sa.Text(), nullable=True))
    # Only configured jobs are re-checked by due_at: no index entry for the other statuses.
    op.create_index(
        "ix_jobs_configured_due", "jobs", ["due_at"], postgresql_where=sa.text("status = 2")
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_configured_due", table_name="jobs")
    op.drop_column("jobs", "waiting_for")
    op.drop_column("jobs", "due_at")
