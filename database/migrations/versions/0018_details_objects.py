"""History details are always a JSON object: ``set_job_status`` and
``worker_set_job_status`` store any details as an object (``joblife_details_object()``:
SQL NULL and JSON ``null`` become ``{}``), the rows written before are repaired in one
pass over the history (JSON ``null`` → ``{}``, ``[null, {"attempt": 1}]`` →
``{"attempt": 1}``), and a NOT VALID CHECK constraint refuses any new row whose details
are not an object. See database/sql/v0018_details_objects.sql.

Downgrade: the doors as revisions 0013 and 0011 defined them, with their rights; the
constraint and the function dropped. Repaired rows stay repaired (objects are what every
version reads).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
from joblife.db.migration_helpers import read_sql_file, run_sql_file

revision: str = "0018"
down_revision: str | Sequence[str] | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Each door's signature, and the file that defined it before this revision (released SQL
#: files are never edited, so their text is the previous definition).
_PREVIOUS = {
    "set_job_status": ("bigint[], text, text[], text, jsonb", "v0013_status_door.sql"),
    "worker_set_job_status": (
        "bigint, integer, text, text[], text, jsonb",
        "v0011_worker_doors.sql",
    ),
}


def _previous_definition(name: str) -> str:
    """The ``CREATE OR REPLACE FUNCTION name(...) ... $$;`` statement of ``name`` in the
    file that defined it before this revision."""
    sql = read_sql_file(_PREVIOUS[name][1])
    start = sql.index(f"CREATE OR REPLACE FUNCTION {name}(")
    end = sql.index("\n$$;\n", start) + len("\n$$;\n")
    return sql[start:end]


def upgrade() -> None:
    run_sql_file("v0018_details_objects.sql")


def downgrade() -> None:
    op.execute(
        "ALTER TABLE job_status_changes DROP CONSTRAINT IF EXISTS "
        "ck_job_status_changes_details_object"
    )
    for name, (signature, _) in _PREVIOUS.items():
        op.execute(_previous_definition(name))
        # CREATE OR REPLACE kept the grants but reset the owner's rights (see the SQL file).
        op.execute(
            f"""
            DO $$
            BEGIN
                EXECUTE format('ALTER FUNCTION {name}({signature}) SECURITY DEFINER '
                               'SET search_path = %I, pg_temp', current_schema());
            END;
            $$
            """
        )
    op.execute("DROP FUNCTION IF EXISTS joblife_details_object(jsonb)")
