-- The history's rows are deleted with their job by a statement trigger on jobs, not by a
-- foreign key. Installed by migration 0009.
--
-- Why: a foreign key checks every history row on insert, one index probe and one tuple
-- lock of the job per row, for each status change and each created job (creation of
-- 100,000 jobs: 27,900-35,200 jobs/s with it, 33,900-36,600 without, docs/benchmarks.md).
-- Nothing else needs it: history is written only by set_job_status() (for the jobs it has just locked
-- and updated) and by the creation trigger (for the jobs just inserted), both guarded by
-- job_status_changes_guard_insert, so every history row names a job that exists. What
-- the foreign key also gave, the history going with its job, is this trigger, set-based:
-- one DELETE per statement that deletes jobs, instead of one per deleted job.

CREATE OR REPLACE FUNCTION jobs_delete_history() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- TRUNCATE jobs CASCADE used to reach the history through the foreign key, whose
        -- no-truncate trigger refused it; without it the history would be left behind.
        RAISE EXCEPTION USING
            ERRCODE = 'JL006',
            MESSAGE = 'refused: TRUNCATE jobs would leave their history behind; delete '
                      'the jobs instead (their history goes with them)';
    END IF;
    -- job_status_changes_append_only lets these go: their jobs are gone.
    DELETE FROM job_status_changes c USING gone_jobs g WHERE c.job_id = g.id;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS jobs_delete_history ON jobs;
CREATE TRIGGER jobs_delete_history
    AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS gone_jobs
    FOR EACH STATEMENT
    EXECUTE FUNCTION jobs_delete_history();

DROP TRIGGER IF EXISTS jobs_no_truncate ON jobs;
CREATE TRIGGER jobs_no_truncate
    BEFORE TRUNCATE ON jobs
    FOR EACH STATEMENT
    EXECUTE FUNCTION jobs_delete_history();

-- With the owner's rights, like the creation trigger: whoever may delete a job deletes
-- its history, which no role may write.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION jobs_delete_history() SECURITY DEFINER '
                   'SET search_path = %I, pg_temp', current_schema());
END;
$$;
