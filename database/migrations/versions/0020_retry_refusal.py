"""``retry_jobs`` refuses a job that has not failed with a message naming every status it
accepts ("job 12 is ready: only a job in internal_error, external_error or error_checked
can be retried"), instead of the door's "not external_error or error_checked as
expected", which left out internal_error (accepted, acknowledged on the way). Same
SQLSTATE (JL003) and detail keys. See database/sql/v0020_retry_refusal.sql.

Downgrade: revision 0017's definitions again (its SQL file, idempotent, redefines the
operator procedures as they were and re-applies their rights).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from joblife.db.migration_helpers import run_sql_file

revision: str = "0020"
down_revision: str | Sequence[str] | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    run_sql_file("v0020_retry_refusal.sql")


def downgrade() -> None:
    run_sql_file("v0017_operator_names.sql")
