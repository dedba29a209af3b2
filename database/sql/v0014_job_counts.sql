-- Job counts by type and status, maintained as jobs change, and reads that do not grow
-- with the tables. Installed by migration 0014, which creates the tables job_counts and
-- job_count_deltas and the indexes first (see its docstring).
--
-- Why deltas: a count row per (type, status) updated by every change would be a hot row
-- (every transaction that changes a job of that type and status would queue on its row
-- lock until the previous one commits). Instead every statement that inserts, updates or
-- deletes jobs appends one row per (type, status) it changed to job_count_deltas
-- (append-only, no lock between writers), and fold_job_counts() moves them into
-- job_counts now and then (the orchestrator's monitor cycle). A reader sums both in one
-- statement, hence one snapshot: the deltas are written in the transaction of the change,
-- so what it reads is exact, whatever has been folded.

-- 1. The counting triggers ---------------------------------------------------------------
-- One function for the three statement triggers below; each reads its statement's
-- transition tables (every row the statement inserted, updated or deleted, however it did:
-- the status door, creation's INSERT ... SELECT, COPY, cleanup's DELETE, an owner's manual
-- UPDATE). An update writes the net change per (type, status): none at all for a heartbeat
-- or any update that changes neither the type nor the status. With the owner's rights
-- (set below), so that every role that may change jobs counts its changes; no role may
-- write the counts otherwise.
CREATE OR REPLACE FUNCTION jobs_count_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO job_count_deltas (job_type, status, delta)
        SELECT n.job_type, n.status, count(*) FROM counted_new n GROUP BY 1, 2;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO job_count_deltas (job_type, status, delta)
        SELECT o.job_type, o.status, -count(*) FROM counted_old o GROUP BY 1, 2;
    ELSE
        INSERT INTO job_count_deltas (job_type, status, delta)
        SELECT c.job_type, c.status, sum(c.delta)
          FROM (SELECT n.job_type, n.status, 1 AS delta FROM counted_new n
                UNION ALL
                SELECT o.job_type, o.status, -1 FROM counted_old o) AS c
         GROUP BY 1, 2
        HAVING sum(c.delta) <> 0;
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS jobs_count_inserts ON jobs;
CREATE TRIGGER jobs_count_inserts
    AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS counted_new
    FOR EACH STATEMENT
    EXECUTE FUNCTION jobs_count_changes();

-- A column list (UPDATE OF status, job_type) is not allowed with transition tables: the
-- trigger fires for every UPDATE of jobs and writes nothing when the counts do not move.
DROP TRIGGER IF EXISTS jobs_count_updates ON jobs;
CREATE TRIGGER jobs_count_updates
    AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS counted_old NEW TABLE AS counted_new
    FOR EACH STATEMENT
    EXECUTE FUNCTION jobs_count_changes();

DROP TRIGGER IF EXISTS jobs_count_deletes ON jobs;
CREATE TRIGGER jobs_count_deletes
    AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS counted_old
    FOR EACH STATEMENT
    EXECUTE FUNCTION jobs_count_changes();

-- (TRUNCATE jobs is refused by jobs_no_truncate, migration 0009.)

-- 2. Reading the counts ------------------------------------------------------------------
-- Folded counts plus the deltas not folded yet; one row per (type, status) with jobs.
CREATE OR REPLACE VIEW job_status_counts AS
SELECT c.job_type, c.status, sum(c.jobs)::bigint AS jobs
  FROM (SELECT k.job_type, k.status, k.jobs FROM job_counts k
        UNION ALL
        SELECT d.job_type, d.status, d.delta FROM job_count_deltas d) AS c
 GROUP BY c.job_type, c.status
HAVING sum(c.jobs) <> 0;

-- `joblife status` and the operators' summary: the same columns as before (revision
-- 0001), from the maintained counts instead of a scan of jobs. The oldest and newest
-- status change of each (type, status) are two probes of ix_jobs_type_status_changed,
-- made only when a query reads them.
CREATE OR REPLACE VIEW job_status_summary AS
SELECT c.job_type,
       s.id AS status_id,
       s.name AS status,
       c.jobs,
       (SELECT min(j.status_changed_at) FROM jobs j
         WHERE j.job_type = c.job_type AND j.status = c.status) AS oldest_status_change,
       (SELECT max(j.status_changed_at) FROM jobs j
         WHERE j.job_type = c.job_type AND j.status = c.status) AS newest_status_change
  FROM job_status_counts c
  JOIN job_statuses s ON s.id = c.status;

-- 3. Folding, checking, repairing --------------------------------------------------------
-- Moves every delta row this statement's snapshot sees into job_counts and deletes it, in
-- one statement: a delta written by a transaction that commits later is not seen, stays,
-- and is folded next time; a reader sees the counts before or after the fold, never half
-- of it. One fold (or repair) at a time, on a lock of job_counts that readers do not wait
-- for; a fold that finds it taken does nothing and returns NULL at once (the one running
-- folds the same deltas; the monitor never waits behind a repair's full count). Returns
-- the number of delta rows folded.
CREATE OR REPLACE FUNCTION fold_job_counts() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_folded bigint;
BEGIN
    BEGIN
        LOCK TABLE job_counts IN SHARE ROW EXCLUSIVE MODE NOWAIT;
    EXCEPTION WHEN lock_not_available THEN
        RETURN NULL;
    END;
    WITH folded AS (
        DELETE FROM job_count_deltas RETURNING job_type, status, delta
    ), sums AS (
        SELECT f.job_type, f.status, sum(f.delta) AS delta, count(*) AS n
          FROM folded f GROUP BY f.job_type, f.status
    ), applied AS (
        INSERT INTO job_counts AS k (job_type, status, jobs)
        SELECT s.job_type, s.status, s.delta FROM sums s WHERE s.delta <> 0
            ON CONFLICT (job_type, status) DO UPDATE SET jobs = k.jobs + excluded.jobs
    )
    SELECT coalesce(sum(s.n), 0) INTO v_folded FROM sums s;
    DELETE FROM job_counts WHERE jobs = 0;
    RETURN v_folded;
END;
$$;

-- The (type, status) pairs whose maintained count differs from a count of jobs, in one
-- statement (one snapshot: exact while jobs change). Reads the whole of jobs.
CREATE OR REPLACE FUNCTION check_job_counts()
RETURNS TABLE (job_type text, status smallint, maintained bigint, actual bigint)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(m.job_type, a.job_type), coalesce(m.status, a.status),
           coalesce(m.jobs, 0), coalesce(a.jobs, 0)
      FROM job_status_counts m
      FULL JOIN (SELECT j.job_type, j.status, count(*) AS jobs FROM jobs j
                  GROUP BY j.job_type, j.status) AS a
        ON a.job_type = m.job_type AND a.status = m.status
     WHERE m.jobs IS DISTINCT FROM a.jobs
     ORDER BY 1, 2;
$$;

-- Sets job_counts to a count of jobs and drops the deltas that count includes, in one
-- statement under the folds' lock: deltas of transactions that commit later stay and are
-- folded as usual. Returns the pairs it changed, as check_job_counts() saw them.
CREATE OR REPLACE FUNCTION repair_job_counts()
RETURNS TABLE (job_type text, status smallint, maintained bigint, actual bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    LOCK TABLE job_counts IN SHARE ROW EXCLUSIVE MODE;
    RETURN QUERY
    WITH actual AS (
        SELECT j.job_type, j.status, count(*) AS jobs FROM jobs j GROUP BY j.job_type, j.status
    ), pending AS (
        DELETE FROM job_count_deltas RETURNING job_type, status, delta
    ), pending_sums AS (
        SELECT p.job_type, p.status, sum(p.delta) AS delta
          FROM pending p GROUP BY p.job_type, p.status
    ), maintained AS (
        SELECT coalesce(k.job_type, p.job_type) AS job_type,
               coalesce(k.status, p.status) AS status,
               (coalesce(k.jobs, 0) + coalesce(p.delta, 0))::bigint AS jobs
          FROM job_counts k
          FULL JOIN pending_sums p ON p.job_type = k.job_type AND p.status = k.status
    ), wanted AS (
        SELECT coalesce(a.job_type, k.job_type) AS job_type,
               coalesce(a.status, k.status) AS status,
               coalesce(a.jobs, 0) AS jobs
          FROM actual a
          FULL JOIN job_counts k ON k.job_type = a.job_type AND k.status = a.status
    ), written AS (
        INSERT INTO job_counts AS k (job_type, status, jobs)
        SELECT w.job_type, w.status, w.jobs FROM wanted w
            ON CONFLICT (job_type, status) DO UPDATE SET jobs = excluded.jobs
    )
    SELECT coalesce(m.job_type, a.job_type), coalesce(m.status, a.status),
           coalesce(m.jobs, 0), coalesce(a.jobs, 0)
      FROM (SELECT * FROM maintained WHERE jobs <> 0) AS m
      FULL JOIN actual a ON a.job_type = m.job_type AND a.status = m.status
     WHERE m.jobs IS DISTINCT FROM a.jobs
     ORDER BY 1, 2;
    DELETE FROM job_counts WHERE jobs = 0;
END;
$$;

-- 4. Timeliness on indexes ---------------------------------------------------------------
-- Same result as revision 0006's definition, on jobs directly (status ids, not names, so
-- that the conditions match the partial index predicates): two index-only range scans,
-- ix_jobs_output_published for the outputs published in the window and
-- ix_jobs_publication_pending for the jobs whose output is pending (only the jobs not
-- published, done or cancelled have an entry). Without a window the first still reads
-- every published job: percentiles over all time cannot be maintained as jobs change;
-- give --since to bound the read. A SQL function, inlined into the caller's query (its
-- plan shows in EXPLAIN).
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
        SELECT j.job_type,
               extract(epoch FROM j.output_publication_date - j.input_publication_date)
                   ::double precision AS seconds
          FROM jobs j
         WHERE j.output_publication_date IS NOT NULL
           AND j.input_publication_date IS NOT NULL
           AND j.output_publication_date >= coalesce(p_since, '-infinity')
           AND j.output_publication_date < coalesce(p_until, 'infinity')
    ), pending AS (
        SELECT j.job_type, count(*) AS jobs
          FROM jobs j
         WHERE j.output_publication_date IS NULL AND j.status NOT IN (12, 16)
           AND j.input_publication_date >= coalesce(p_since, '-infinity')
           AND j.input_publication_date < coalesce(p_until, 'infinity')
         GROUP BY j.job_type
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
$$;

-- 5. Rights ------------------------------------------------------------------------------
-- The trigger function, the fold and the repair run with the owner's rights (no role may
-- write the counts); the fold is the services' and the operators', the repair the
-- operators'. CREATE OR REPLACE of these functions resets SECURITY DEFINER: a later
-- revision that replaces one sets it again.
DO $$
DECLARE
    v_schema text := current_schema();
    v_fn text;
BEGIN
    FOREACH v_fn IN ARRAY ARRAY['jobs_count_changes()', 'fold_job_counts()',
                                'repair_job_counts()'] LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = %I, pg_temp',
                       v_fn, v_schema);
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', v_fn);
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'joblife_service') THEN
        GRANT EXECUTE ON FUNCTION fold_job_counts() TO joblife_service, joblife_operator;
        GRANT EXECUTE ON FUNCTION repair_job_counts() TO joblife_operator;
    END IF;
    IF to_regprocedure('joblife_grant_role_privileges()') IS NOT NULL THEN
        PERFORM joblife_grant_role_privileges();  -- SELECT on the new tables and views
    END IF;
END;
$$;

-- 6. The counts of the jobs already there ------------------------------------------------
-- After the triggers exist, in the migration's transaction (the triggers' creation locks
-- jobs against writes until it commits): nothing is counted twice or missed.
INSERT INTO job_counts (job_type, status, jobs)
SELECT j.job_type, j.status, count(*) FROM jobs j GROUP BY j.job_type, j.status;
