"""Each job keeps the list of input objects its creation found: ``jobs.input_listing``,
``{key relative to input_path: size}`` for an input made of many objects (NULL otherwise).
The worker fetches exactly those objects, or fails naming the ones missing or resized.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable without a default: adding it rewrites no row, and a single-object job keeps
    # a NULL (no TOAST, no bytes beyond the null bitmap).
    op.add_column("jobs", sa.Column("input_listing", JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "input_listing")
