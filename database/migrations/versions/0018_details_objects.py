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
from joblife.db.migration_helpers import (
    PreviousProcedure,
    restore_definer_procedures,
    run_sql_file,
)

revision: str = "0018"
down_revision: str | Sequence[str] | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Each door's signature, and the file that defined it before this revision.
_PREVIOUS = {
    "set_job_status": PreviousProcedure(
        "bigint[], text, text[], text, jsonb", "v0013_status_door.sql"
    ),
    "worker_set_job_status": PreviousProcedure(
        "bigint, integer, text, text[], text, jsonb", "v0011_worker_doors.sql"
    ),
}


def upgrade() -> None:
    run_sql_file("v0018_details_objects.sql")


def downgrade() -> None:
    op.execute(
        "ALTER TABLE job_status_changes DROP CONSTRAINT IF EXISTS "
        "ck_job_status_changes_details_object"
    )
    restore_definer_procedures(_PREVIOUS)
    op.execute("DROP FUNCTION IF EXISTS joblife_details_object(jsonb)")
