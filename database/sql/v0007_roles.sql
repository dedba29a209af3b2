-- joblife least-privilege database roles. Installed by migration 0007.
--
-- Three NOLOGIN group roles; a deployment grants them to its login users:
--   joblife_service   the life-cycle services (joblife run, publication relay)
--   joblife_worker    joblife worker run JOB_ID (one attempt of one job)
--   joblife_operator  people and tools that watch and steer (views, retry/cancel/acknowledge)
-- The owner of the schema objects (the user that runs the migrations) keeps every right:
-- migrations and `joblife cleanup` run as that user.
--
-- What none of the roles can do: write jobs.status / status_changed_at (no column
-- privilege: the status changes only through the SECURITY DEFINER door set_job_status),
-- write or delete history (no privilege on job_status_changes but SELECT, no DELETE on
-- jobs, whose delete cascades to the history), truncate anything, create objects.
--
-- Roles are cluster-wide, privileges are per database: the roles are created once per
-- server (race-safe: concurrent migrations of several databases may try at once) and the
-- grants are made in every database the migration runs in.

-- 1. The roles ---------------------------------------------------------------------------
DO $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['joblife_service', 'joblife_worker', 'joblife_operator'] LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = v_role);
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
        EXCEPTION
            -- Another database's migration created it first: committed before our check
            -- (duplicate_object) or while we waited on its lock (unique_violation).
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION USING
                    ERRCODE = 'insufficient_privilege',
                    MESSAGE = format('cannot create role %s: the migrating user needs '
                                     'CREATEROLE', v_role),
                    HINT = 'as a superuser: CREATE ROLE joblife_service NOLOGIN; CREATE ROLE '
                           'joblife_worker NOLOGIN; CREATE ROLE joblife_operator NOLOGIN; '
                           'then run the migration again';
        END;
    END LOOP;
END;
$$;

-- 2. The worker's door -------------------------------------------------------------------
-- A worker changes the status of one job, at one attempt, along the worker's own
-- transitions only:
--   queued -> started -> pre_processing -> processing -> post_processing -> processed
--   processed -> done            only when the attempt wrote no publication message
--   started..post_processing -> internal_error | external_error
-- The job must be at attempt p_attempt (checked under the row lock) and in a status the
-- transition starts from; else JL003 (the worker sees StatusConflict and stops). Any
-- other target is refused with insufficient_privilege (42501).
--
-- What "its own job" means here: the database cannot tell one worker from another (they
-- share the role). It guarantees that a worker credential moves only jobs that are in
-- flight at the attempt it names, only forward along the worker's path or into an
-- error; it cannot create, configure, dispatch, retry, cancel or acknowledge jobs, touch a
-- job that is not in flight (ready, waiting, failed, done...), skip publication, or
-- rewrite history. It does not prove that the caller is the process the executor started
-- for that attempt: a worker credential can read the jobs table and so name any in-flight
-- job and its attempt.
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

    SELECT j.attempt, s.name AS status INTO v_job
      FROM jobs j JOIN job_statuses s ON s.id = j.status
     WHERE j.id = p_job_id FOR NO KEY UPDATE OF j;
    IF FOUND AND v_job.attempt IS DISTINCT FROM p_attempt THEN
        RAISE EXCEPTION USING
            ERRCODE = 'JL003',
            MESSAGE = format('job %s is at attempt %s (%s), not attempt %s (wanted to set %s)',
                             p_job_id, v_job.attempt, v_job.status, p_attempt, p_new_status),
            DETAIL = json_build_object('job_id', p_job_id, 'actual', v_job.status,
                                       'expected', v_sources, 'requested', p_new_status)::text;
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
                                 coalesce(p_details, '{}'::jsonb)
                                 || jsonb_build_object('attempt', p_attempt));
END;
$$;

-- 3. Grants, re-runnable -----------------------------------------------------------------
-- (Re)applies every privilege of the three roles in this database, from the catalog: the
-- jobs columns a role may update are "all but" lists, and job-type tables are found by
-- their id referencing jobs(id). A later migration that adds a jobs column or a core
-- table calls it again (SELECT joblife_grant_role_privileges()); job-type tables created
-- later by the same owner are covered by the default privileges set here.
CREATE OR REPLACE FUNCTION joblife_grant_role_privileges() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_schema text := current_schema();
    v_roles CONSTANT text := 'joblife_service, joblife_worker, joblife_operator';
    v_service_cols text;
    v_worker_cols text;
    v_fn regprocedure;
    v_table regclass;
BEGIN
    -- Clean slate for this database's tables, then grant what each role must have.
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %s', v_schema, v_roles);
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %s', v_schema, v_roles);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %s', v_schema, v_roles);

    -- jobs: the service may write every column but identity, type and status; creation
    -- inserts (the creation trigger admits only creation statuses and writes the first
    -- history row with the owner's rights).
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO v_service_cols
      FROM pg_attribute a
     WHERE a.attrelid = 'jobs'::regclass AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attname NOT IN ('id', 'unique_id', 'job_type', 'status', 'status_changed_at',
                             'created_at');
    EXECUTE 'GRANT INSERT ON jobs TO joblife_service';
    EXECUTE format('GRANT UPDATE (%s) ON jobs TO joblife_service', v_service_cols);
    -- The worker stamps its heartbeat and records its outcome; nothing else.
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO v_worker_cols
      FROM pg_attribute a
     WHERE a.attrelid = 'jobs'::regclass AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attname IN ('heartbeat_at', 'exit_code', 'output_path',
                         'output_publication_date', 'science_image');
    EXECUTE format('GRANT UPDATE (%s) ON jobs TO joblife_worker', v_worker_cols);
    -- The operator's tools lock the jobs they change (SELECT ... FOR UPDATE needs an
    -- UPDATE privilege) and a cancel clears the dependency re-check time.
    EXECUTE 'GRANT UPDATE (due_at) ON jobs TO joblife_operator';

    -- The outbox: the worker writes it with `processed`, the relay marks it published.
    EXECUTE 'GRANT INSERT, UPDATE ON publications TO joblife_service';
    EXECUTE 'GRANT INSERT ON publications TO joblife_worker';

    -- Job-type tables (id references jobs.id): created and configured by the services.
    FOR v_table IN
        SELECT c.conrelid::regclass
          FROM pg_constraint c
          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
         WHERE c.contype = 'f' AND c.confrelid = 'jobs'::regclass
           AND cardinality(c.conkey) = 1 AND a.attname = 'id'
    LOOP
        EXECUTE format('GRANT INSERT, UPDATE ON %s TO joblife_service', v_table);
    END LOOP;

    -- Functions: PostgreSQL lets PUBLIC execute every new function; the status-changing
    -- ones are revoked from PUBLIC and granted per role. The door and the operator
    -- procedures run with the owner's rights (SECURITY DEFINER, fixed search_path), so no
    -- role needs a privilege on jobs.status or on the history.
    FOR v_fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = v_schema::regnamespace
           AND p.proname IN ('set_job_status', 'acknowledge_jobs', 'cancel_jobs', 'retry_jobs',
                             'republish_jobs', 'worker_set_job_status')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = %I, pg_temp',
                       v_fn, v_schema);
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC, %s', v_fn, v_roles);
    END LOOP;
    FOR v_fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = v_schema::regnamespace
           AND p.proname IN ('create_jobs_with_status_function', 'joblife_grant_role_privileges')
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC, %s', v_fn, v_roles);
    END LOOP;
    FOR v_fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = v_schema::regnamespace
           AND p.proname IN ('set_job_status', 'acknowledge_jobs', 'cancel_jobs', 'retry_jobs',
                             'republish_jobs')
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO joblife_service', v_fn);
    END LOOP;
    FOR v_fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = v_schema::regnamespace
           AND p.proname IN ('acknowledge_jobs', 'cancel_jobs', 'retry_jobs', 'republish_jobs')
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO joblife_operator', v_fn);
    END LOOP;
    EXECUTE 'GRANT EXECUTE ON FUNCTION worker_set_job_status(bigint, integer, text, text[], '
            'text, jsonb) TO joblife_worker';
    -- The creation trigger inserts the first history row with the owner's rights.
    EXECUTE format('ALTER FUNCTION jobs_record_creation() SECURITY DEFINER '
                   'SET search_path = %I, pg_temp', v_schema);

    -- Tables created later in this schema by this owner (a job type's migration): readable
    -- by all three roles, writable by the services. Per database, like every grant.
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO %s',
                   v_schema, v_roles);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT INSERT, UPDATE ON TABLES '
                   'TO joblife_service', v_schema);
END;
$$;

SELECT joblife_grant_role_privileges();
