"""The worker doors take the attempt secret per transaction: the dispatcher stores each
attempt's proof key in ``attempt_proof_keys`` (owner-only: row level security without a
policy) through ``joblife_store_attempt_secrets()``, and ``worker_check_attempt_secret``
accepts, besides the session setting of 0011, a proof bound to the calling transaction's id
(``joblife.attempt_proof``), so that workers can reach PostgreSQL through PgBouncer in
transaction mode. See database/sql/v0016_attempt_proofs.sql.

Attempts queued before this revision have no proof key: their workers present the secret
at connection start (a direct connection), as before.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
from joblife.db.migration_helpers import execute_raw, previous_definition, run_sql_file

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    run_sql_file("v0016_attempt_proofs.sql")


def downgrade() -> None:
    # worker_check_attempt_secret() as revision 0011 defined it (session setting only).
    execute_raw(previous_definition("worker_check_attempt_secret", "v0011_worker_doors.sql"))
    op.execute("DROP FUNCTION IF EXISTS joblife_store_attempt_secrets(bigint[], bytea[], bytea[])")
    op.execute("DROP FUNCTION IF EXISTS joblife_hmac_sha256(bytea, bytea)")
    op.execute("DROP TABLE IF EXISTS attempt_proof_keys")
