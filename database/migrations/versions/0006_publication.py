"""Publication outbox: republication rounds and ``republish_jobs``, delivery errors, the
timeliness summary.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from joblife.db.migration_helpers import run_sql_file

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMPTZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column(
        "publications",
        sa.Column("republication", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column("publications", sa.Column("error", sa.Text(), nullable=True))
    op.add_column("publications", sa.Column("error_at", TIMESTAMPTZ, nullable=True))
    # An operator's republication adds a round of rows for the same attempt.
    op.drop_constraint("uq_publications_job_id_product_attempt", "publications", type_="unique")
    op.create_unique_constraint(
        "uq_publications_job_id_product_attempt_republication",
        "publications",
        ["job_id", "product", "attempt", "republication"],
    )
    run_sql_file("v0006_publication.sql")


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS republish_jobs(bigint[], text)")
    op.execute("DROP FUNCTION IF EXISTS joblife_message_uuid(text)")
    op.execute("DROP FUNCTION IF EXISTS job_timeliness_summary(interval, timestamptz, timestamptz)")
    op.execute("DELETE FROM publications WHERE republication > 0")
    op.drop_constraint(
        "uq_publications_job_id_product_attempt_republication", "publications", type_="unique"
    )
    op.create_unique_constraint(
        "uq_publications_job_id_product_attempt", "publications", ["job_id", "product", "attempt"]
    )
    op.drop_column("publications", "error_at")
    op.drop_column("publications", "error")
    op.drop_column("publications", "republication")
