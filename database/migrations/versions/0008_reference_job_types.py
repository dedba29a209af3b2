"""The reference job types' tables (joblife.jobtypes): h5repack, image_ingest, tile_series,
with their per-type procedures.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from joblife.db.migration_helpers import create_job_type_procedure, drop_job_type_procedure

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (table, procedure, job type) of each reference type.
TYPES = (
    ("h5repack_jobs", "get_h5repack_jobs_with_status", "h5repack"),
    ("image_ingest_jobs", "get_image_ingest_jobs_with_status", "image_ingest"),
    ("tile_series_jobs", "get_tile_series_jobs_with_status", "tile_series"),
)


def _parent(table: str) -> list[sa.SchemaItem]:
    return [
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["id"], ["jobs.id"], name=f"fk_{table}_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
    ]


def upgrade() -> None:
    op.create_table(
        "h5repack_jobs",
        *_parent("h5repack_jobs"),
        sa.Column("file_name", sa.Text(), nullable=False),
        sa.Column("channel_axis", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("gzip_level", sa.Integer(), nullable=True),
        sa.Column(
            "chunk_bytes", sa.BigInteger(), server_default=sa.text("1048576"), nullable=False
        ),
    )
    op.create_table(
        "image_ingest_jobs",
        *_parent("image_ingest_jobs"),
        sa.Column("input_filter", sa.Text(), server_default=sa.text("'.*'"), nullable=False),
        sa.Column("min_size", sa.Integer(), server_default=sa.text("64"), nullable=False),
        sa.Column("tile_size", sa.Integer(), server_default=sa.text("256"), nullable=False),
    )
    op.create_table(
        "tile_series_jobs",
        *_parent("tile_series_jobs"),
        sa.Column("measurement_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("previous_job_id", sa.BigInteger(), nullable=True),
    )
    for table, procedure, job_type in TYPES:
        create_job_type_procedure(procedure, table, job_type)


def downgrade() -> None:
    for table, procedure, _job_type in reversed(TYPES):
        drop_job_type_procedure(procedure)
        op.drop_table(table)
