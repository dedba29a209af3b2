"""SQL shared by the reads that must not scan ``jobs`` (``jobs list``, ``jobs stale``).

PostgreSQL (before 18) has no skip scan: a condition on the second column of an index
led by ``job_type`` reads the whole index. These reads take each job type in turn
(:data:`PRESENT_JOB_TYPES`, one probe per type) and read one short range of
``ix_jobs_type_status_changed`` (job_type, status, status_changed_at, id) per (type,
status), then merge.
"""

from __future__ import annotations

#: A query of the job types that have jobs, ``SELECT job_type``: one probe per type of an
#: index led by job_type (a skip scan written as a recursive query).
PRESENT_JOB_TYPES = """
    WITH RECURSIVE types AS (
        (SELECT job_type FROM jobs ORDER BY job_type LIMIT 1)
        UNION ALL
        SELECT (SELECT j.job_type FROM jobs j WHERE j.job_type > t.job_type
                 ORDER BY j.job_type LIMIT 1)
          FROM types t WHERE t.job_type IS NOT NULL
    )
    SELECT job_type FROM types WHERE job_type IS NOT NULL
"""
