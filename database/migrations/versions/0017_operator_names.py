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
from joblife.db.migration_helpers import read_sql_file, run_sql_file

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Where each procedure was last defined before this revision (released SQL files are never
#: edited, so their text is the previous definition).
_PREVIOUS = {
    "acknowledge_jobs": "v0001_procedures.sql",
    "cancel_jobs": "v0001_procedures.sql",
    "retry_jobs": "v0001_procedures.sql",
    "republish_jobs": "v0006_publication.sql",
}


def _previous_definition(name: str) -> str:
    """The ``CREATE OR REPLACE FUNCTION name(...) ... $$;`` statement of ``name`` in the
    file that defined it before this revision."""
    sql = read_sql_file(_PREVIOUS[name])
    start = sql.index(f"CREATE OR REPLACE FUNCTION {name}(")
    end = sql.index("\n$$;\n", start) + len("\n$$;\n")
    return sql[start:end]


def upgrade() -> None:
    run_sql_file("v0017_operator_names.sql")


def downgrade() -> None:
    for name in _PREVIOUS:
        op.execute(_previous_definition(name))
        # CREATE OR REPLACE kept the grants but reset the owner's rights (see the SQL file).
        op.execute(
            f"""
            DO $$
            BEGIN
                EXECUTE format('ALTER FUNCTION {name}(bigint[], text) SECURITY DEFINER '
                               'SET search_path = %I, pg_temp', current_schema());
            END;
            $$
            """
        )
    op.execute("DROP FUNCTION IF EXISTS joblife_operator_name()")
