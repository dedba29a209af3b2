-- joblife status machine: the one door for status changes, and the guards that make it the
-- only one. Installed by migration 0001. Error codes (SQLSTATE) raised here:
--   JL001 unknown status name            JL004 job not found
--   JL002 transition not allowed         JL005 status written outside set_job_status()
--   JL003 current status not the expected one (compare-and-set lost)
--   JL006 history is append-only
-- The DETAIL of JL002/JL003/JL004 is a JSON object the Python layer turns into typed errors.

-- Status name -> id; raises JL001 for an unknown name.
CREATE OR REPLACE FUNCTION joblife_status_id(p_name text) RETURNS smallint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_id smallint;
BEGIN
    SELECT s.id INTO v_id FROM job_statuses s WHERE s.name = p_name;
    IF v_id IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'JL001',
            MESSAGE = format('unknown job status %L', p_name),
            DETAIL = json_build_object('status', p_name)::text,
            HINT = (SELECT 'known statuses: ' || string_agg(s.name, ', ' ORDER BY s.id)
                    FROM job_statuses s);
    END IF;
    RETURN v_id;
END;
$$;

-- Status names -> ids, in the given order (a NULL array stays NULL); raises JL001 for an
-- unknown name. plpgsql, not SQL: PostgreSQL before 18 plans a SQL function's body on every
-- call, which costs more than the lookups themselves.
CREATE OR REPLACE FUNCTION joblife_status_ids(p_names text[]) RETURNS smallint[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_ids smallint[] := '{}';
    v_name text;
    v_id smallint;
BEGIN
    IF p_names IS NULL THEN
        RETURN NULL;
    END IF;
    FOREACH v_name IN ARRAY p_names LOOP
        SELECT s.id INTO v_id FROM job_statuses s WHERE s.name = v_name;
        IF v_id IS NULL THEN
            v_id := joblife_status_id(v_name);  -- raises JL001
        END IF;
        v_ids := v_ids || v_id;
    END LOOP;
    RETURN v_ids;
END;
$$;

-- THE ONE DOOR. Moves every job of p_job_ids to p_new_status, all or nothing:
--  * locks the job rows in id order (so concurrent batches never deadlock each other);
--  * if p_expected_statuses is given, every job must currently be in one of them
--    (compare-and-set: of concurrent writers expecting the same status, exactly one wins);
--  * every (current -> new) pair must be in job_status_transitions;
--  * updates jobs.status / status_changed_at and appends one history row per job.
-- Cost per job is constant: it reads the jobs row, never the history. The checks are made
-- in the same pass as the locking read; the refused job named in an error is the one with
-- the lowest id.
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

    -- Open the guard for these two writes only, then restore the caller's value. Not a
    -- SET clause on the function: one on a custom parameter can be created only by a
    -- superuser (or, on PostgreSQL 15+, a user granted SET ON PARAMETER); set_config is
    -- any user's, and an error undoes it with the rest of the (sub)transaction.
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

-- Guard: jobs.status and status_changed_at change only inside set_job_status(). A statement
-- trigger, so the door pays one check per call, not one per job: any UPDATE that names
-- either column outside the door is refused, even one that would not change them.
CREATE OR REPLACE FUNCTION jobs_guard_status() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('joblife.status_door', true) IS DISTINCT FROM 'open' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'JL005',
            MESSAGE = 'refused: jobs.status and status_changed_at are written only by '
                      'set_job_status()',
            HINT = 'SELECT * FROM set_job_status(ARRAY[job_id], new_status, expected_statuses, message, details)';
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS jobs_guard_status ON jobs;
CREATE TRIGGER jobs_guard_status
    BEFORE UPDATE OF status, status_changed_at ON jobs
    FOR EACH STATEMENT
    EXECUTE FUNCTION jobs_guard_status();

-- Creation: a new job starts in a creation status (transition from NULL) and gets its
-- first history row in the same statement; set-based, so batch inserts stay fast.
CREATE OR REPLACE FUNCTION jobs_record_creation() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_bad record;
BEGIN
    SELECT n.id, s.name INTO v_bad
      FROM new_jobs n LEFT JOIN job_statuses s ON s.id = n.status
     WHERE NOT EXISTS (SELECT 1 FROM job_status_transitions tr
                        WHERE tr.from_status IS NULL AND tr.to_status = n.status)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'JL002',
            MESSAGE = format('job %s: a job cannot be created in status %s', v_bad.id,
                             coalesce(v_bad.name, 'NULL')),
            DETAIL = json_build_object('job_id', v_bad.id, 'from', NULL, 'to', v_bad.name)::text;
    END IF;
    INSERT INTO job_status_changes (job_id, previous_status, status, time, message)
    SELECT n.id, NULL, n.status, n.status_changed_at, 'created' FROM new_jobs n;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS jobs_record_creation ON jobs;
CREATE TRIGGER jobs_record_creation
    AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT
    EXECUTE FUNCTION jobs_record_creation();

-- History is appended only by set_job_status() and by job creation.
CREATE OR REPLACE FUNCTION job_status_changes_guard_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('joblife.status_door', true) IS DISTINCT FROM 'open'
       AND pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'JL005',
            MESSAGE = 'refused: job_status_changes is appended only by set_job_status() and job creation';
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS job_status_changes_guard_insert ON job_status_changes;
CREATE TRIGGER job_status_changes_guard_insert
    BEFORE INSERT ON job_status_changes
    FOR EACH STATEMENT
    EXECUTE FUNCTION job_status_changes_guard_insert();

-- History is append-only: never updated; deleted only together with its job (cascade).
CREATE OR REPLACE FUNCTION job_status_changes_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        -- Inside ON DELETE CASCADE the parent job is already gone.
        IF NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = OLD.job_id) THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'JL006',
        MESSAGE = format('refused: job_status_changes is append-only (%s); history is '
                         'removed only with its job', TG_OP);
END;
$$;

DROP TRIGGER IF EXISTS job_status_changes_append_only ON job_status_changes;
CREATE TRIGGER job_status_changes_append_only
    BEFORE UPDATE OR DELETE ON job_status_changes
    FOR EACH ROW
    EXECUTE FUNCTION job_status_changes_append_only();

DROP TRIGGER IF EXISTS job_status_changes_no_truncate ON job_status_changes;
CREATE TRIGGER job_status_changes_no_truncate
    BEFORE TRUNCATE ON job_status_changes
    FOR EACH STATEMENT
    EXECUTE FUNCTION job_status_changes_append_only();
