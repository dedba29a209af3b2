"""The status door opens its trigger guard with set_config, not a function SET clause.

A SET clause on the custom parameter ``joblife.status_door`` can be created only by a
superuser (or, on PostgreSQL 15+, a user granted ``SET ON PARAMETER``), so a non-superuser
owner could not migrate. 0001 installs the new definition on fresh databases; this revision
replaces the old one on databases migrated before. See database/sql/v0013_status_door.sql.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from joblife.db.migration_helpers import run_sql_file

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    run_sql_file("v0013_status_door.sql")


def downgrade() -> None:
    # The new definition does what the old one did; putting the SET clause back would
    # need the parameter privilege this revision exists to avoid.
    pass
