"""Work-queue indexes: the discovery cursor and the dispatch order of ready jobs.

- ``ix_jobs_discovery_cursor`` (job_type, input_publication_date DESC NULLS LAST, id DESC):
  ``get_last_inserted_job`` reads one index entry instead of sorting a type's jobs.
- ``ix_jobs_ready_order`` (priority, input_publication_date, id) WHERE status = ready:
  dispatch reads the ready queue of every type in order instead of sorting it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_jobs_discovery_cursor",
        "jobs",
        ["job_type", sa.text("input_publication_date DESC NULLS LAST"), sa.text("id DESC")],
    )
    op.create_index(
        "ix_jobs_ready_order",
        "jobs",
        ["priority", "input_publication_date", "id"],
        postgresql_where=sa.text("status = 3"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_ready_order", table_name="jobs")
    op.drop_index("ix_jobs_discovery_cursor", table_name="jobs")
