"""Helpers for Alembic migrations, joblife's and partners'.

A job type's migration creates its table and then its per-type procedure::

    from joblife.db.migration_helpers import create_job_type_procedure

    def upgrade() -> None:
        op.create_table("repack_jobs", sa.Column("id", sa.BigInteger(),
                        sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True), ...)
        create_job_type_procedure("get_repack_jobs_with_status", "repack_jobs", "repack")
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib.resources import files
from typing import NamedTuple

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
    execute_raw(read_sql_file(name))


def execute_raw(sql: str) -> None:
    """Execute ``sql`` in the migration's transaction through the DB-API cursor, without
    parameters: neither a '%' (format()) nor a ':name' in a function body is taken for a
    placeholder, as through ``op.execute``."""
    cursor = op.get_bind().connection.cursor()
    try:
        cursor.execute(sql)
    finally:
        cursor.close()


# The dollar-quote tag opening a function's body: ``AS $$`` or ``AS $body$``.
_BODY_TAG = re.compile(r"\bAS\s+(\$\w*\$)", re.IGNORECASE)


def previous_definition(name: str, sql_file: str) -> str:
    """The ``CREATE OR REPLACE FUNCTION name(...) ... AS $$ ... $$ ...;`` statement of
    ``name`` in ``database/sql/<sql_file>``, for a downgrade that puts back the definition
    a later revision replaced (the file that installed it is its text). ValueError unless
    the file defines ``name`` exactly once."""
    sql = read_sql_file(sql_file)
    starts = [m.start() for m in re.finditer(re.escape(f"CREATE OR REPLACE FUNCTION {name}("), sql)]
    if len(starts) != 1:
        raise ValueError(f"{sql_file} defines {name} {len(starts)} times, not once")
    tag = _BODY_TAG.search(sql, starts[0])
    if tag is None:
        raise ValueError(f"{sql_file}: the definition of {name} has no dollar-quoted body")
    body_end = sql.index(tag.group(1), tag.end()) + len(tag.group(1))
    return sql[starts[0] : sql.index(";", body_end) + 1] + "\n"


class PreviousProcedure(NamedTuple):
    """A SECURITY DEFINER procedure's argument types, and the SQL file that defined it
    before the revision being downgraded."""

    signature: str
    sql_file: str


def restore_definer_procedures(procedures: Mapping[str, PreviousProcedure]) -> None:
    """Put back each procedure (by name) as its ``sql_file`` defined it, running with its
    owner's rights and a fixed search_path again.

    CREATE OR REPLACE keeps a function's owner and grants but resets it to SECURITY INVOKER
    and drops its SET clauses: both are set again as ``joblife_grant_role_privileges()``
    (0007) sets them, without calling it (it would also grant SELECT on every table again,
    ``attempt_proof_keys`` included, which revision 0016 revoked).
    """
    for name, (signature, sql_file) in procedures.items():
        execute_raw(previous_definition(name, sql_file))
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
