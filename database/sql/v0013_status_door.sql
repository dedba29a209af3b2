-- The status door without a placeholder parameter in its definition (issue 13, item 11).
--
-- Migration 0001 created set_job_status() with `SET joblife.status_door = 'open'`: a
-- function SET clause on a custom (placeholder) parameter, which PostgreSQL validates at
-- CREATE FUNCTION time and lets only a superuser make, or (PostgreSQL 15+) a user granted
-- `SET ON PARAMETER joblife.status_door`. A non-superuser owner could not migrate.
--
-- Here the function opens the door itself with set_config(..., is_local => true) just
-- before its two guarded writes and closes it again (to the caller's value) right after,
-- which any user may do. Same guarantees as the SET clause: the door is open only while
-- the function runs its writes; if they fail, the error aborts the transaction or rolls
-- back to the caller's savepoint, and either undoes the set_config with it. The door is a
-- guard against mistakes, not a privilege: the roles have no column privilege on
-- jobs.status and no INSERT on the history, whatever the setting says.
--
-- Everything else is v0001_status_machine.sql's set_job_status(), unchanged. The owner's
-- SECURITY DEFINER and search_path (set by joblife_grant_role_privileges, 0007) stay:
-- CREATE OR REPLACE keeps the function's grants, but replaces its SET clauses and its
-- security, so they are applied again below when the roles' function exists.

CREATE OR REPLACE FUNCTION set_job_status(
    p_job_ids bigint[],
    p_new_status text,
    p_expected_statuses text[] DEFAULT NULL,
    p_message text DEFAULT NULL,
    p_details jsonb DEFAULT NULL
) RETURNS TABLE (job_id bigint, previous_status text, status text, changed_at timestamptz)
LANGUAGE plpgsql
-- The statements below take the id array as a parameter. With a custom plan (PostgreSQL's
-- choice for the first 5 calls of a session) the planner sees a 10,000-element array and
-- reads the whole of jobs; the generic plan always finds the rows through the primary key.
SET plan_cache_mode = 'force_generic_plan'
AS $$
#variable_conflict use_column
DECLARE
    v_new smallint;
    v_sources smallint[];  -- the statuses from which p_new_status may be reached
    v_expected smallint[] := joblife_status_ids(p_expected_statuses);
    v_now timestamptz := clock_timestamp();
    v_wanted bigint[];
    v_ids bigint[];
    v_old smallint[];
    v_unexpected bigint;   -- lowest id not in an expected status
    v_refused bigint;      -- lowest id whose transition is not allowed
    v_bad record;
    v_door text := current_setting('joblife.status_door', true);
BEGIN
    SELECT s.id, ARRAY(SELECT tr.from_status FROM job_status_transitions tr
                        WHERE tr.to_status = s.id AND tr.from_status IS NOT NULL)
      INTO v_new, v_sources
      FROM job_statuses s WHERE s.name = p_new_status;
    IF v_new IS NULL THEN
        v_new := joblife_status_id(p_new_status);  -- raises JL001
    END IF;

    SELECT array_agg(DISTINCT i ORDER BY i) INTO v_wanted
      FROM unnest(p_job_ids) AS i WHERE i IS NOT NULL;
    IF v_wanted IS NULL THEN
        RETURN;
    END IF;

    -- Lock (in id order), read the current statuses and check them, in one pass.
    SELECT array_agg(l.id ORDER BY l.id), array_agg(l.status ORDER BY l.id),
           min(l.id) FILTER (WHERE l.status <> ALL (v_expected)),
           min(l.id) FILTER (WHERE l.status <> ALL (v_sources))
      INTO v_ids, v_old, v_unexpected, v_refused
      FROM (SELECT j.id, j.status FROM jobs j
             WHERE j.id = ANY (v_wanted) ORDER BY j.id FOR NO KEY UPDATE) AS l;

    IF v_ids IS NULL OR cardinality(v_ids) <> cardinality(v_wanted) THEN
        SELECT array_agg(w ORDER BY w) AS missing INTO v_bad
          FROM unnest(v_wanted) AS w WHERE v_ids IS NULL OR w <> ALL (v_ids);
        RAISE EXCEPTION USING
            ERRCODE = 'JL004',
            MESSAGE = format('job(s) %s not found', array_to_string(v_bad.missing, ', ')),
            DETAIL = json_build_object('job_ids', v_bad.missing)::text;
    END IF;

    IF v_unexpected IS NOT NULL THEN
        SELECT j.id, s.name AS actual INTO v_bad
          FROM jobs j JOIN job_statuses s ON s.id = j.status WHERE j.id = v_unexpected;
        RAISE EXCEPTION USING
            ERRCODE = 'JL003',
            MESSAGE = format('job %s is %s, not %s as expected (wanted to set %s)',
                             v_bad.id, v_bad.actual,
                             array_to_string(p_expected_statuses, ' or '), p_new_status),
            DETAIL = json_build_object('job_id', v_bad.id, 'actual', v_bad.actual,
                                       'expected', p_expected_statuses,
                                       'requested', p_new_status)::text;
    END IF;

    IF v_refused IS NOT NULL THEN
        SELECT j.id, s.name AS from_name, j.status AS from_id INTO v_bad
          FROM jobs j JOIN job_statuses s ON s.id = j.status WHERE j.id = v_refused;
        RAISE EXCEPTION USING
            ERRCODE = 'JL002',
            MESSAGE = format('job %s: transition %s -> %s is not allowed',
                             v_bad.id, v_bad.from_name, p_new_status),
            DETAIL = json_build_object('job_id', v_bad.id, 'from', v_bad.from_name,
                                       'to', p_new_status)::text,
            HINT = (SELECT 'allowed from ' || v_bad.from_name || ': '
                           || coalesce(string_agg(s.name, ', ' ORDER BY s.id), 'nothing')
                      FROM job_status_transitions tr JOIN job_statuses s ON s.id = tr.to_status
                     WHERE tr.from_status = v_bad.from_id);
    END IF;

    -- Open the door for the two writes below only (see the header).
    PERFORM set_config('joblife.status_door', 'open', true);
    UPDATE jobs AS j SET status = v_new, status_changed_at = v_now
     WHERE j.id = ANY (v_ids);

    INSERT INTO job_status_changes (job_id, previous_status, status, time, message, details)
    SELECT t.id, t.st, v_new, v_now, p_message, coalesce(p_details, '{}'::jsonb)
      FROM unnest(v_ids, v_old) AS t(id, st);

    PERFORM set_config('joblife.status_door', coalesce(v_door, ''), true);

    RETURN QUERY
    SELECT t.id, s.name, p_new_status, v_now
      FROM unnest(v_ids, v_old) AS t(id, st) JOIN job_statuses s ON s.id = t.st
     ORDER BY t.id;
END;
$$;

DO $$
BEGIN
    IF to_regprocedure('joblife_grant_role_privileges()') IS NOT NULL THEN
        PERFORM joblife_grant_role_privileges();
    END IF;
END;
$$;
