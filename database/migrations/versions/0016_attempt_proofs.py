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
from joblife.db.migration_helpers import run_sql_file

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: worker_check_attempt_secret() as database/sql/v0011_worker_doors.sql defined it.
_CHECK_0011 = """
CREATE OR REPLACE FUNCTION worker_check_attempt_secret(p_job_id bigint, p_hash bytea)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_secret text := current_setting('joblife.attempt_secret', true);
BEGIN
    IF p_hash IS NULL OR v_secret IS NULL OR v_secret = ''
       OR sha256(convert_to(v_secret, 'UTF8')) IS DISTINCT FROM p_hash THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = format('job %s: wrong or missing attempt secret (the session setting '
                             'joblife.attempt_secret the executor gave this attempt)', p_job_id);
    END IF;
END;
$$;
"""


def upgrade() -> None:
    run_sql_file("v0016_attempt_proofs.sql")


def downgrade() -> None:
    op.execute(_CHECK_0011)
    op.execute("DROP FUNCTION IF EXISTS joblife_store_attempt_secrets(bigint[], bytea[], bytea[])")
    op.execute("DROP FUNCTION IF EXISTS joblife_hmac_sha256(bytea, bytea)")
    op.execute("DROP TABLE IF EXISTS attempt_proof_keys")
