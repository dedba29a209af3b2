"""Least-privilege database roles: joblife_service, joblife_worker, joblife_operator
(NOLOGIN group roles), the worker's door ``worker_set_job_status``, and the status door
and operator procedures run with the owner's rights. See database/sql/v0007_roles.sql.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
from joblife.db.migration_helpers import run_sql_file

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = ("joblife_service", "joblife_worker", "joblife_operator")
_DEFINER_FUNCTIONS = ("set_job_status", "acknowledge_jobs", "cancel_jobs", "retry_jobs")


def upgrade() -> None:
    run_sql_file("v0007_roles.sql")


def downgrade() -> None:
    # The roles are cluster-wide (other databases may use them): only this database's
    # privileges are revoked; the roles themselves stay.
    roles = ", ".join(ROLES)
    names = ", ".join(f"'{name}'" for name in (*_DEFINER_FUNCTIONS, "republish_jobs"))
    op.execute(
        f"""
        DO $$
        DECLARE
            v_schema text := current_schema();
            v_fn regprocedure;
        BEGIN
            EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I REVOKE ALL ON TABLES
                            FROM {roles}', v_schema);
            EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM {roles}', v_schema);
            EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA %I FROM {roles}', v_schema);
            EXECUTE format('REVOKE ALL ON SCHEMA %I FROM {roles}', v_schema);
            FOR v_fn IN
                SELECT p.oid::regprocedure FROM pg_proc p
                 WHERE p.pronamespace = v_schema::regnamespace AND p.proname IN ({names})
            LOOP
                EXECUTE format('ALTER FUNCTION %s SECURITY INVOKER RESET search_path', v_fn);
                EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO PUBLIC', v_fn);
            END LOOP;
            ALTER FUNCTION jobs_record_creation() SECURITY INVOKER RESET search_path;
            GRANT EXECUTE ON FUNCTION create_jobs_with_status_function(text, regclass, text)
                TO PUBLIC;
        END;
        $$
        """
    )
    op.execute("DROP FUNCTION IF EXISTS joblife_grant_role_privileges()")
    op.execute(
        "DROP FUNCTION IF EXISTS worker_set_job_status(bigint, integer, text, text[], text, jsonb)"
    )
