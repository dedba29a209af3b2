"""Helpers for Alembic migrations, joblife's and partners'.

A job type's migration creates its table and then its per-type procedure::

    from joblife.db.migration_helpers import create_job_type_procedure

    def upgrade() -> None:
        op.create_table("repack_jobs", sa.Column("id", sa.BigInteger(),
                        sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True), ...)
        create_job_type_procedure("get_repack_jobs_with_status", "repack_jobs", "repack")
"""

from __future__ import annotations

from importlib.resources import files

from alembic import op
from sqlalchemy import text

ASSETS_PACKAGE = "joblife._database"


def read_sql_file(name: str) -> str:
    """The text of ``database/sql/<name>``."""
    return files(ASSETS_PACKAGE).joinpath("sql", name).read_text(encoding="utf-8")


def run_sql_file(name: str) -> None:
    """Execute ``database/sql/<name>`` (functions, triggers, views) in the migration.

    SQL files are named after the revision that installs them (``v0001_*.sql``) and never
    edited once released: a later change ships a new file with ``CREATE OR REPLACE``.
    """
    # Through the DB-API cursor without parameters, so that '%' in the SQL (format())
    # is not taken for a placeholder; same connection, same transaction.
    cursor = op.get_bind().connection.cursor()
    try:
        cursor.execute(read_sql_file(name))
    finally:
        cursor.close()


def create_job_type_procedure(procedure_name: str, type_table: str, job_type: str) -> None:
    """(Re)create the per-type stored procedure named by a job type's
    ``GET_JOBS_WITH_STATUS_PROCEDURE_NAME``: ``procedure_name(statuses text[], limit int)``
    returns that type's jobs with their parent columns in one query."""
    op.get_bind().execute(
        text("SELECT create_jobs_with_status_function(:name, CAST(:table AS regclass), :type)"),
        {"name": procedure_name, "table": type_table, "type": job_type},
    )


def drop_job_type_procedure(procedure_name: str) -> None:
    """Drop a per-type procedure (for a job type migration's downgrade)."""
    op.execute(f'DROP FUNCTION IF EXISTS "{procedure_name}"(text[], integer)')
