-- History details are always a JSON object (revision 0018; issue 17, item 1).
--
-- Before this revision the Python layer sent "no details" as JSON null (SQLAlchemy's JSON
-- type turns None into 'null', not SQL NULL), which coalesce(p_details, '{}') lets through:
-- set_job_status stored JSON null, and worker_set_job_status stored
-- 'null'::jsonb || {"attempt": n}, which jsonb concatenation makes the ARRAY
-- [null, {"attempt": n}] (the worker's started -> pre_processing and
-- pre_processing -> processing rows). Readers of the history expect an object.
--
-- Here:
--   1. joblife_details_object(): any details as an object (below);
--   2. the two doors that take details from their caller, set_job_status (as
--      v0013_status_door.sql defined it) and worker_set_job_status (as
--      v0011_worker_doors.sql defined it), store joblife_details_object(p_details),
--      whoever calls them and with whatever. Nothing else in them changes. The other
--      writers of the history store objects already: the creation trigger leaves the
--      column's default '{}', and the operator procedures (v0017) pass the object they
--      build to set_job_status;
--   3. the rows written before are repaired in place (section 3);
--   4. a CHECK constraint, NOT VALID, refuses any new row whose details are not an object.
--
-- CREATE OR REPLACE keeps a function's owner and grants, but resets its security to
-- INVOKER and replaces its SET clauses: SECURITY DEFINER and the fixed search_path are set
-- again at the end, as joblife_grant_role_privileges sets them. (That function itself is
-- not called: it would also re-grant SELECT on every table, attempt_proof_keys included,
-- which revision 0016 revoked.)

-- 1. Details as an object ---------------------------------------------------------------
--   an object                 itself;
--   SQL NULL, JSON null       {};
--   an array                  its objects merged in order (a later key wins, as with ||),
--                             its other elements but nulls kept under "value" as an array:
--                             [null, {"attempt": 1}] -> {"attempt": 1};
--   a string, number, boolean {"value": it}.
-- So nothing a caller wrote is lost but JSON nulls. IMMUTABLE: also used by the repair.
CREATE OR REPLACE FUNCTION joblife_details_object(p_details jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_merged jsonb := '{}';
    v_others jsonb := '[]';
    v_element jsonb;
BEGIN
    IF jsonb_typeof(p_details) = 'object' THEN
        RETURN p_details;
    ELSIF p_details IS NULL OR jsonb_typeof(p_details) = 'null' THEN
        RETURN '{}';
    ELSIF jsonb_typeof(p_details) <> 'array' THEN
        RETURN jsonb_build_object('value', p_details);
    END IF;
    FOR v_element IN SELECT e.value FROM jsonb_array_elements(p_details) AS e LOOP
        IF jsonb_typeof(v_element) = 'object' THEN
            v_merged := v_merged || v_element;
        ELSIF jsonb_typeof(v_element) <> 'null' THEN
            v_others := v_others || jsonb_build_array(v_element);
        END IF;
    END LOOP;
    IF v_others <> '[]' THEN
        v_merged := v_merged || jsonb_build_object('value', v_others);
    END IF;
    RETURN v_merged;
END;
$$;

-- 2. The doors ----------------------------------------------------------------------------
-- set_job_status of v0013_status_door.sql; only v_details is new (see its file for the rest).
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
    v_details jsonb := joblife_details_object(p_details);  -- always an object (above)
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

    -- Open the door for the two writes below only (see v0013_status_door.sql).
    PERFORM set_config('joblife.status_door', 'open', true);
    UPDATE jobs AS j SET status = v_new, status_changed_at = v_now
     WHERE j.id = ANY (v_ids);

    INSERT INTO job_status_changes (job_id, previous_status, status, time, message, details)
    SELECT t.id, t.st, v_new, v_now, p_message, v_details
      FROM unnest(v_ids, v_old) AS t(id, st);

    PERFORM set_config('joblife.status_door', coalesce(v_door, ''), true);

    RETURN QUERY
    SELECT t.id, s.name, p_new_status, v_now
      FROM unnest(v_ids, v_old) AS t(id, st) JOIN job_statuses s ON s.id = t.st
     ORDER BY t.id;
END;
$$;

-- worker_set_job_status of v0011_worker_doors.sql; only the details of the last statement
-- change: the caller's as an object, with the attempt.
CREATE OR REPLACE FUNCTION worker_set_job_status(
    p_job_id bigint,
    p_attempt integer,
    p_new_status text,
    p_expected_statuses text[] DEFAULT NULL,
    p_message text DEFAULT NULL,
    p_details jsonb DEFAULT NULL
) RETURNS TABLE (job_id bigint, previous_status text, status text, changed_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
#variable_conflict use_column
DECLARE
    v_running CONSTANT text[] := ARRAY['started', 'pre_processing', 'processing',
                                       'post_processing'];
    v_sources text[];
    v_job record;
BEGIN
    v_sources := CASE p_new_status
        WHEN 'started' THEN ARRAY['queued']
        WHEN 'pre_processing' THEN ARRAY['started']
        WHEN 'processing' THEN ARRAY['pre_processing']
        WHEN 'post_processing' THEN ARRAY['processing']
        WHEN 'processed' THEN ARRAY['post_processing']
        WHEN 'done' THEN ARRAY['processed']
        WHEN 'internal_error' THEN v_running
        WHEN 'external_error' THEN v_running
    END;
    IF v_sources IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = format('a worker may not set a job %s', p_new_status);
    END IF;
    IF p_expected_statuses IS NOT NULL THEN
        v_sources := ARRAY(SELECT s FROM unnest(v_sources) AS s
                            WHERE s = ANY (p_expected_statuses));
        IF cardinality(v_sources) = 0 THEN
            RAISE EXCEPTION USING
                ERRCODE = 'insufficient_privilege',
                MESSAGE = format('a worker may not move a job from %s to %s',
                                 array_to_string(p_expected_statuses, ' or '), p_new_status);
        END IF;
    END IF;

    SELECT j.attempt, j.attempt_secret_hash,
           (SELECT s.name FROM job_statuses s WHERE s.id = j.status) AS status
      INTO v_job FROM jobs j
     WHERE j.id = p_job_id FOR NO KEY UPDATE OF j;
    IF FOUND AND v_job.attempt IS DISTINCT FROM p_attempt THEN
        RAISE EXCEPTION USING
            ERRCODE = 'JL003',
            MESSAGE = format('job %s is at attempt %s (%s), not attempt %s (wanted to set %s)',
                             p_job_id, v_job.attempt, v_job.status, p_attempt, p_new_status),
            DETAIL = json_build_object('job_id', p_job_id, 'actual', v_job.status,
                                       'expected', v_sources, 'requested', p_new_status)::text;
    END IF;
    -- From a status the change starts from, only with the attempt's secret; from any
    -- other, set_job_status answers with the conflict (JL003) and the worker stops.
    IF FOUND AND v_job.status = ANY (v_sources) THEN
        PERFORM worker_check_attempt_secret(p_job_id, v_job.attempt_secret_hash);
    END IF;
    IF p_new_status = 'done' AND EXISTS (
        SELECT 1 FROM publications p WHERE p.job_id = p_job_id AND p.attempt = p_attempt
    ) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = format('job %s attempt %s has publication messages: the publication '
                             'service moves it to done', p_job_id, p_attempt);
    END IF;

    RETURN QUERY
    SELECT * FROM set_job_status(ARRAY[p_job_id], p_new_status, v_sources, p_message,
                                 joblife_details_object(p_details)
                                 || jsonb_build_object('attempt', p_attempt));
END;
$$;

-- The owner's rights and a fixed search_path again (see the header); grants are kept.
DO $$
DECLARE
    v_fn text;
BEGIN
    FOREACH v_fn IN ARRAY ARRAY['set_job_status(bigint[], text, text[], text, jsonb)',
                                'worker_set_job_status(bigint, integer, text, text[], text, '
                                'jsonb)']
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = %I, pg_temp',
                       v_fn, current_schema());
    END LOOP;
END;
$$;

-- 3. The rows written before ------------------------------------------------------------
-- Every row whose details are not an object becomes joblife_details_object(details): JSON
-- null -> {}, [null, {"attempt": 1}] -> {"attempt": 1}. (SQL NULL cannot be there: the
-- column is NOT NULL since revision 0001.)
--
-- The history is append-only: job_status_changes_append_only refuses every UPDATE. The
-- migration, as the owner, lifts that guard for this one statement: ALTER TABLE ...
-- DISABLE TRIGGER on the partitioned parent, which PostgreSQL (15 and later) applies to
-- the trigger's clone on every partition too, and ENABLE right after. Both are catalog
-- changes of this transaction: no other session ever sees the guard lifted (they read
-- the committed catalog), and if anything fails the rollback restores it. The lock (SHARE
-- ROW EXCLUSIVE, on every partition) keeps writers out until the migration commits;
-- readers go on. The check after ENABLE makes sure no partition was left unguarded.
--
-- Cost: ONE UPDATE, which scans the whole history once (every partition, sequentially:
-- no index can find "not an object") and writes only the bad rows, each a new row
-- version with its index entries. Before this revision most status changes made without
-- details were bad (ready, queued, the worker's first two steps, ...): on a big history,
-- expect a large share of the rows to be rewritten, and the dead versions to be left for
-- autovacuum. A second run finds nothing to write.
LOCK TABLE job_status_changes IN SHARE ROW EXCLUSIVE MODE;
ALTER TABLE job_status_changes DISABLE TRIGGER job_status_changes_append_only;

UPDATE job_status_changes
   SET details = joblife_details_object(details)
 WHERE jsonb_typeof(details) IS DISTINCT FROM 'object';

ALTER TABLE job_status_changes ENABLE TRIGGER job_status_changes_append_only;
DO $$
DECLARE
    v_unguarded text;
BEGIN
    SELECT string_agg(t.tgrelid::regclass::text, ', ') INTO v_unguarded
      FROM pg_trigger t
     WHERE t.tgname = 'job_status_changes_append_only' AND t.tgenabled <> 'O';
    IF v_unguarded IS NOT NULL THEN
        RAISE EXCEPTION 'job_status_changes_append_only is still disabled on %', v_unguarded;
    END IF;
END;
$$;

-- 4. New rows are checked -----------------------------------------------------------------
-- NOT VALID: the constraint checks every row inserted or updated from now on (and is copied
-- to each partition made later, with LIKE ... INCLUDING CONSTRAINTS), without reading the
-- existing rows. VALIDATE CONSTRAINT would read the whole history a second time, right
-- after the repair above made every row pass, only to mark it validated; an operator who
-- wants the mark may run it at any time (it takes SHARE UPDATE EXCLUSIVE: the doors go on):
--   ALTER TABLE job_status_changes VALIDATE CONSTRAINT ck_job_status_changes_details_object;
-- Added last: it takes ACCESS EXCLUSIVE, which would otherwise keep readers out during the
-- repair.
ALTER TABLE job_status_changes ADD CONSTRAINT ck_job_status_changes_details_object
    CHECK (jsonb_typeof(details) = 'object') NOT VALID;
