-- joblife procedures for services and operators. Installed by migration 0001.

-- A type's (or every type's, p_job_type NULL) jobs in the given statuses, in work order:
-- priority, then input publication date, then id.
--
-- One ordered scan of ix_jobs_selection (job_type, status, priority, input_publication_date,
-- id) per (type, status), each stopping after p_limit rows, merged: with
-- "status = ANY (array)" PostgreSQL would fetch every matching job and sort them all to keep
-- p_limit. For every type, the types are found by a skip scan of the same index (one probe
-- per type), so the cost stays that of types x statuses short index scans. No JIT: the
-- planner's estimate for these plans is far above their cost, and compiling them would take
-- longer than running them.
CREATE OR REPLACE FUNCTION jobs_with_last_status(
    p_job_type text,
    p_statuses text[],
    p_limit integer DEFAULT NULL
) RETURNS SETOF jobs
LANGUAGE plpgsql STABLE
SET jit = off
AS $$
DECLARE
    v_statuses smallint[] := joblife_status_ids(p_statuses);
BEGIN
    IF p_job_type IS NOT NULL THEN
        RETURN QUERY
        SELECT j.*
          FROM (SELECT DISTINCT s FROM unnest(v_statuses) AS s) AS st
         CROSS JOIN LATERAL (
                SELECT * FROM jobs j
                 WHERE j.job_type = p_job_type AND j.status = st.s
                 ORDER BY j.priority, j.input_publication_date, j.id
                 LIMIT p_limit) AS j
         ORDER BY j.priority, j.input_publication_date, j.id
         LIMIT p_limit;
    ELSE
        RETURN QUERY
        WITH RECURSIVE types (job_type) AS (
            SELECT min(j.job_type) FROM jobs j
            UNION ALL
            SELECT (SELECT min(j.job_type) FROM jobs j WHERE j.job_type > t.job_type)
              FROM types t WHERE t.job_type IS NOT NULL
        )
        SELECT j.*
          FROM types t
         CROSS JOIN (SELECT DISTINCT s FROM unnest(v_statuses) AS s) AS st
         CROSS JOIN LATERAL (
                SELECT * FROM jobs j
                 WHERE j.job_type = t.job_type AND j.status = st.s
                 ORDER BY j.priority, j.input_publication_date, j.id
                 LIMIT p_limit) AS j
         ORDER BY j.priority, j.input_publication_date, j.id
         LIMIT p_limit;
    END IF;
END;
$$;

-- The full status timeline of the given jobs, oldest change first.
CREATE OR REPLACE FUNCTION job_status_history(p_job_ids bigint[])
RETURNS TABLE (job_id bigint, change_id bigint, previous_status text, status text,
               "time" timestamptz, message text, details jsonb)
LANGUAGE sql STABLE AS $$
    SELECT c.job_id, c.id, ps.name, s.name, c.time, c.message, c.details
      FROM job_status_changes c
      JOIN job_statuses s ON s.id = c.status
      LEFT JOIN job_statuses ps ON ps.id = c.previous_status
     WHERE c.job_id = ANY (p_job_ids)
     ORDER BY c.job_id, c.id;
$$;

-- Migration helper: (re)creates, for a job type, the stored procedure named by its
-- GET_JOBS_WITH_STATUS_PROCEDURE_NAME. The generated function
--     <p_function_name>(p_statuses text[], p_limit integer DEFAULT NULL)
-- returns that type's jobs in the given statuses with every parent column, the status name
-- and the type's own columns, in one query, in work order. Its columns are read from the
-- catalog when the helper runs: call it again after adding columns.
CREATE OR REPLACE FUNCTION create_jobs_with_status_function(
    p_function_name text,
    p_type_table regclass,
    p_job_type text
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_out text;
    v_select text;
BEGIN
    WITH cols AS (
        SELECT 1 AS part, a.attnum, a.attname::text AS name,
               format_type(a.atttypid, a.atttypmod) AS type, 'j.' AS alias
          FROM pg_attribute a
         WHERE a.attrelid = 'jobs'::regclass AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL
        SELECT 2, 0, 'status_name', 'text', 's.'
        UNION ALL
        SELECT 3, a.attnum, a.attname::text, format_type(a.atttypid, a.atttypmod), 't.'
          FROM pg_attribute a
         WHERE a.attrelid = p_type_table AND a.attnum > 0 AND NOT a.attisdropped
           AND a.attname <> 'id'
    )
    SELECT string_agg(format('%I %s', name, type), ', ' ORDER BY part, attnum),
           string_agg(format('%s AS %I', CASE WHEN part = 2 THEN 's.name'
                                              ELSE alias || quote_ident(name) END, name),
                      ', ' ORDER BY part, attnum)
      INTO v_out, v_select
      FROM cols;

    -- One ordered scan of ix_jobs_selection per requested status, merged, without JIT (see
    -- jobs_with_last_status).
    EXECUTE format('DROP FUNCTION IF EXISTS %I(text[], integer)', p_function_name);
    EXECUTE format($f$
        CREATE FUNCTION %I(p_statuses text[], p_limit integer DEFAULT NULL)
        RETURNS TABLE (%s)
        LANGUAGE sql STABLE
        SET jit = off
        AS $body$
            SELECT l.*
              FROM (SELECT DISTINCT st FROM unnest(joblife_status_ids(p_statuses)) AS st) AS w
              JOIN job_statuses s ON s.id = w.st
             CROSS JOIN LATERAL (
                    SELECT %s
                      FROM jobs j JOIN %s t ON t.id = j.id
                     WHERE j.job_type = %L AND j.status = w.st
                     ORDER BY j.priority, j.input_publication_date, j.id
                     LIMIT p_limit) AS l
             ORDER BY l.priority, l.input_publication_date, l.id
             LIMIT p_limit
        $body$
    $f$, p_function_name, v_out, v_select, p_type_table, p_job_type);
END;
$$;

-- Operator procedures. Each is all-or-nothing over the given jobs and goes through the
-- one door, so every change lands in the history with the operator's message.

-- Acknowledge errors: internal_error | external_error -> error_checked.
CREATE OR REPLACE FUNCTION acknowledge_jobs(
    p_job_ids bigint[],
    p_message text DEFAULT NULL
) RETURNS TABLE (job_id bigint, previous_status text, status text, changed_at timestamptz)
LANGUAGE sql AS $$
    SELECT * FROM set_job_status(p_job_ids, 'error_checked',
                                 ARRAY['internal_error', 'external_error'],
                                 coalesce(p_message, 'acknowledged by an operator'),
                                 jsonb_build_object('by', 'operator', 'action', 'acknowledge'));
$$;

-- Cancel: any job whose status allows it -> cancelled (running executions are stopped by
-- the monitor, which sees the job cancelled).
CREATE OR REPLACE FUNCTION cancel_jobs(
    p_job_ids bigint[],
    p_message text DEFAULT NULL
) RETURNS TABLE (job_id bigint, previous_status text, status text, changed_at timestamptz)
LANGUAGE sql AS $$
    SELECT * FROM set_job_status(p_job_ids, 'cancelled', NULL,
                                 coalesce(p_message, 'cancelled by an operator'),
                                 jsonb_build_object('by', 'operator', 'action', 'cancel'));
$$;

-- Retry: external_error | error_checked -> ready; internal_error is acknowledged first
-- (-> error_checked -> ready, both in the history). A job whose attempts are used up gets
-- one more. Any other status refuses the whole call.
CREATE OR REPLACE FUNCTION retry_jobs(
    p_job_ids bigint[],
    p_message text DEFAULT NULL
) RETURNS TABLE (job_id bigint, previous_status text, status text, changed_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_internal bigint[];
    v_details jsonb := jsonb_build_object('by', 'operator', 'action', 'retry');
BEGIN
    p_message := coalesce(p_message, 'retried by an operator');
    -- Lock first, so the statuses read here cannot change before the door is called.
    PERFORM 1 FROM jobs j WHERE j.id = ANY (p_job_ids) ORDER BY j.id FOR UPDATE;
    SELECT array_agg(j.id) INTO v_internal
      FROM jobs j WHERE j.id = ANY (p_job_ids) AND j.status = joblife_status_id('internal_error');
    IF v_internal IS NOT NULL THEN
        PERFORM set_job_status(v_internal, 'error_checked', ARRAY['internal_error'],
                               p_message, v_details);
    END IF;
    UPDATE jobs j SET max_attempts = j.attempt + 1
     WHERE j.id = ANY (p_job_ids) AND j.max_attempts <= j.attempt;
    RETURN QUERY
    SELECT * FROM set_job_status(p_job_ids, 'ready', ARRAY['external_error', 'error_checked'],
                                 p_message, v_details);
END;
$$;
