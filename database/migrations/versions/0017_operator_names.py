"""The operator procedures record who acted: every history row that ``acknowledge_jobs``,
``cancel_jobs``, ``retry_jobs`` and ``republish_jobs`` write carries the acting operator's
name under ``"operator"`` in its details, from ``joblife_operator_name()``: the
transaction-local setting ``joblife.operator`` (set by joblife.db.status for a named
operator), else the session's login. See database/sql/v0017_operator_names.sql.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
from joblife.db.migration_helpers import (
    PreviousProcedure,
    restore_definer_procedures,
    run_sql_file,
)

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Each procedure's signature, and the file that defined it before this revision.
_PREVIOUS = {
    "acknowledge_jobs": PreviousProcedure("bigint[], text", "v0001_procedures.sql"),
    "cancel_jobs": PreviousProcedure("bigint[], text", "v0001_procedures.sql"),
    "retry_jobs": PreviousProcedure("bigint[], text", "v0001_procedures.sql"),
    "republish_jobs": PreviousProcedure("bigint[], text", "v0006_publication.sql"),
}


def upgrade() -> None:
    run_sql_file("v0017_operator_names.sql")


def downgrade() -> None:
    restore_definer_procedures(_PREVIOUS)
    op.execute("DROP FUNCTION IF EXISTS joblife_operator_name()")
