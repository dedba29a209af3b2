"""Counts of jobs by type and status maintained as jobs change, and indexes for the reads
that used to scan everything (issue 15).

- ``job_count_deltas``: append-only, one row per (type, status) per statement that
  inserts, updates or deletes jobs (statement triggers with transition tables, function
  ``jobs_count_changes``); ``job_counts``: the folded counts, which
  ``fold_job_counts()`` (run by the orchestrator's monitor cycle) brings up to date;
  ``job_status_counts``: the two summed (exact in any snapshot); ``job_status_summary``
  now reads it instead of scanning jobs; ``check_job_counts()`` / ``repair_job_counts()``
  behind ``joblife jobs check-counts``. The counts of the jobs already there are written
  by this migration, in its transaction.
- ``ix_jobs_type_status_changed`` (job_type, status, status_changed_at, id): the newest
  (or oldest) jobs of a type in a status in order, behind ``jobs list``, ``jobs stale``
  and the summary's oldest/newest change.
- ``ix_jobs_output_published`` (output_publication_date, where set) and
  ``ix_jobs_publication_pending`` (input_publication_date of the jobs not published, done
  or cancelled), both with the job type and covering: ``timeliness`` over a window reads
  two index ranges; ``job_timeliness_summary`` rewritten on jobs to use them.
- ``ix_job_status_changes_time`` (time): ``stats --since`` reads the history of its period
  only.

Building the four indexes reads both tables once and blocks writes to them meanwhile
(in the migration's transaction): minutes for tens of millions of rows.

See database/sql/v0014_job_counts.sql.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from joblife.db.migration_helpers import run_sql_file

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Jobs whose output is not published yet and that are not done or cancelled (the
#: timeliness summary's "pending"), as ix_jobs_publication_pending's predicate.
PENDING_WHERE = "output_publication_date IS NULL AND status NOT IN (12, 16)"

_FUNCTIONS = (
    "check_job_counts()",
    "repair_job_counts()",
    "fold_job_counts()",
)

#: job_status_summary as database/sql/v0001_views.sql defined it.
_SUMMARY_0001 = """
CREATE OR REPLACE VIEW job_status_summary AS
SELECT j.job_type,
       s.id AS status_id,
       s.name AS status,
       count(*) AS jobs,
       min(j.status_changed_at) AS oldest_status_change,
       max(j.status_changed_at) AS newest_status_change
  FROM jobs j
  JOIN job_statuses s ON s.id = j.status
 GROUP BY j.job_type, s.id, s.name
"""

#: job_timeliness_summary as database/sql/v0006_publication.sql defined it.
_TIMELINESS_0006 = """
CREATE OR REPLACE FUNCTION job_timeliness_summary(
    p_target interval DEFAULT interval '3 hours',
    p_since timestamptz DEFAULT NULL,
    p_until timestamptz DEFAULT NULL
) RETURNS TABLE (
    job_type text,
    published bigint,
    pending bigint,
    p50_seconds double precision,
    p90_seconds double precision,
    p99_seconds double precision,
    max_seconds double precision,
    within_target bigint,
    within_target_share double precision
)
LANGUAGE sql STABLE AS $$
    WITH published AS (
        SELECT t.job_type, t.timeliness_seconds::double precision AS seconds
          FROM job_timeliness t
         WHERE t.output_publication_date IS NOT NULL
           AND (p_since IS NULL OR t.output_publication_date >= p_since)
           AND (p_until IS NULL OR t.output_publication_date < p_until)
    ), pending AS (
        SELECT t.job_type, count(*) AS jobs
          FROM job_timeliness t
         WHERE t.output_publication_date IS NULL
           AND t.status NOT IN ('done', 'cancelled')
           AND (p_since IS NULL OR t.input_publication_date >= p_since)
           AND (p_until IS NULL OR t.input_publication_date < p_until)
         GROUP BY t.job_type
    ), summary AS (
        SELECT p.job_type,
               count(*) AS published,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY p.seconds) AS p50,
               percentile_cont(0.9) WITHIN GROUP (ORDER BY p.seconds) AS p90,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY p.seconds) AS p99,
               max(p.seconds) AS worst,
               count(*) FILTER (WHERE p.seconds <= extract(epoch FROM p_target)) AS within
          FROM published p
         GROUP BY p.job_type
    )
    SELECT coalesce(s.job_type, q.job_type),
           coalesce(s.published, 0),
           coalesce(q.jobs, 0),
           s.p50, s.p90, s.p99, s.worst,
           coalesce(s.within, 0),
           CASE WHEN s.published > 0 THEN s.within::double precision / s.published END
      FROM summary s
      FULL JOIN pending q ON q.job_type = s.job_type
     ORDER BY 1;
$$
"""


def upgrade() -> None:
    op.create_table(
        "job_counts",
        sa.Column("job_type", sa.Text(), nullable=False),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("job_type", "status", name=op.f("pk_job_counts")),
    )
    # No key, no index: rows are only appended, then read and deleted all together.
    op.create_table(
        "job_count_deltas",
        sa.Column("job_type", sa.Text(), nullable=False),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("delta", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        "ix_jobs_type_status_changed",
        "jobs",
        ["job_type", "status", "status_changed_at", "id"],
    )
    op.create_index(
        "ix_jobs_output_published",
        "jobs",
        ["output_publication_date"],
        postgresql_include=["job_type", "input_publication_date"],
        postgresql_where=sa.text("output_publication_date IS NOT NULL"),
    )
    op.create_index(
        "ix_jobs_publication_pending",
        "jobs",
        ["input_publication_date"],
        postgresql_include=["job_type"],
        postgresql_where=sa.text(PENDING_WHERE),
    )
    op.create_index("ix_job_status_changes_time", "job_status_changes", ["time"])
    run_sql_file("v0014_job_counts.sql")


def downgrade() -> None:
    for trigger in ("jobs_count_inserts", "jobs_count_updates", "jobs_count_deletes"):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON jobs")
    op.execute("DROP FUNCTION IF EXISTS jobs_count_changes()")
    for function in _FUNCTIONS:
        op.execute(f"DROP FUNCTION IF EXISTS {function}")
    op.execute(_SUMMARY_0001)
    op.execute("DROP VIEW IF EXISTS job_status_counts")
    op.execute(_TIMELINESS_0006)
    op.drop_index("ix_job_status_changes_time", table_name="job_status_changes")
    op.drop_index("ix_jobs_publication_pending", table_name="jobs")
    op.drop_index("ix_jobs_output_published", table_name="jobs")
    op.drop_index("ix_jobs_type_status_changed", table_name="jobs")
    op.drop_table("job_count_deltas")
    op.drop_table("job_counts")
