-- Worker doors (revision 0011): the joblife_worker role writes no table directly. Every
-- worker write goes through one of these SECURITY DEFINER functions, and each checks
--   * the job is at the attempt named (else JL003, or NULL for the heartbeat), and in a
--     status the write belongs to;
--   * the caller holds that attempt's secret: the session setting joblife.attempt_secret,
--     whose SHA-256 the dispatcher stored in jobs.attempt_secret_hash when it queued the
--     attempt (else insufficient_privilege, 42501);
--   * the values are sane (no time from the worker's clock, no output path changed once
--     set, no text with control characters).
--
-- Why a session setting and not an argument: every worker logs in as the same database
-- user, and a session sees the query text of the other sessions of its own user
-- (pg_stat_activity.query, kept after the query ends). A secret given as an argument
-- would be readable there by any other worker; a setting given at connection start
-- (libpq options "-c joblife.attempt_secret=...") never appears in a query.
--
-- A job queued outside the dispatcher has no hash: no worker may write it.
--
-- Each door locks the job's row with a scan of jobs alone, its status name read by a
-- subquery: when the row changed while the door waited for its lock, PostgreSQL rechecks
-- the locked row's new version but not the rows it was joined to, so a join with
-- job_statuses would drop the row (a heartbeat colliding with the worker's own status
-- change read "not this attempt's" and stopped a healthy worker).

-- The check every door makes, under the row lock the caller took. Not granted to anyone:
-- called only from the SECURITY DEFINER doors (it then runs as the owner).
CREATE OR REPLACE FUNCTION worker_check_attempt_secret(p_job_id bigint, p_hash bytea)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_secret text := current_setting('joblife.attempt_secret', true);
BEGIN
    IF p_hash IS NULL OR v_secret IS NULL OR v_secret = ''
       OR sha256(convert_to(v_secret, 'UTF8')) IS DISTINCT FROM p_hash THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = format('job %s: wrong or missing attempt secret (the session setting '
                             'joblife.attempt_secret the executor gave this attempt)', p_job_id);
    END IF;
END;
$$;

-- Whether a location (a key or a URL) may become a job's output path: printable, at most
-- 2,048 bytes, and without an empty, "." or ".." path segment (a trailing "/" excepted).
CREATE OR REPLACE FUNCTION worker_location_is_safe(p_location text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT p_location <> ''
       AND octet_length(p_location) <= 2048
       AND p_location !~ '[\x01-\x1f\x7f-\x9f]'
       AND NOT EXISTS (
           SELECT 1
             FROM unnest(string_to_array(
                      rtrim(regexp_replace(p_location, '^[a-z][a-z0-9+.-]*://[^/]*/?', ''), '/'),
                      '/')) AS s(segment)
            WHERE s.segment IN ('', '.', '..')
       )
$$;

-- The status changes of a worker (worker_set_job_status of revision 0007), now also
-- checking the attempt secret once the attempt is known to be the job's.
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
                                 coalesce(p_details, '{}'::jsonb)
                                 || jsonb_build_object('attempt', p_attempt));
END;
$$;

-- The heartbeat: stamps heartbeat_at with the server's clock (the caller gives no time)
-- while the job is in flight at p_attempt, and returns the job's status (a cancelled job
-- answers 'cancelled', so that its worker stops); NULL when the job is not at p_attempt
-- (another attempt took over, or it is gone).
CREATE OR REPLACE FUNCTION worker_heartbeat(p_job_id bigint, p_attempt integer)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    v_in_flight CONSTANT text[] := ARRAY['queued', 'started', 'pre_processing', 'processing',
                                         'post_processing'];
    v_job record;
BEGIN
    SELECT j.attempt_secret_hash,
           (SELECT s.name FROM job_statuses s WHERE s.id = j.status) AS status
      INTO v_job FROM jobs j
     WHERE j.id = p_job_id AND j.attempt = p_attempt FOR NO KEY UPDATE OF j;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM worker_check_attempt_secret(p_job_id, v_job.attempt_secret_hash);
    IF v_job.status = ANY (v_in_flight) THEN
        UPDATE jobs SET heartbeat_at = now() WHERE id = p_job_id;
    END IF;
    RETURN v_job.status;
END;
$$;

-- The outcome of a running attempt (started ... post_processing); a NULL argument leaves
-- its column as it is.
--   exit_code                 any integer (the science step's return code);
--   science_image             printable text of at most 1,024 bytes;
--   output_path               set once: only while the job has none (a safe location, see
--                             worker_location_is_safe), or the value it already has;
--   output_publication_date   not in the future (one minute of clock skew allowed).
CREATE OR REPLACE FUNCTION worker_record_outcome(
    p_job_id bigint,
    p_attempt integer,
    p_exit_code integer DEFAULT NULL,
    p_science_image text DEFAULT NULL,
    p_output_path text DEFAULT NULL,
    p_output_publication_date timestamptz DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    v_running CONSTANT text[] := ARRAY['started', 'pre_processing', 'processing',
                                       'post_processing'];
    v_job record;
BEGIN
    SELECT j.attempt, j.attempt_secret_hash, j.output_path,
           (SELECT s.name FROM job_statuses s WHERE s.id = j.status) AS status
      INTO v_job FROM jobs j
     WHERE j.id = p_job_id FOR NO KEY UPDATE OF j;
    IF NOT FOUND OR v_job.attempt IS DISTINCT FROM p_attempt
       OR NOT v_job.status = ANY (v_running) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'JL003',
            MESSAGE = format('job %s is %s at attempt %s, not running at attempt %s: its '
                             'outcome cannot be recorded', p_job_id,
                             coalesce(v_job.status, 'missing'), v_job.attempt, p_attempt),
            DETAIL = json_build_object('job_id', p_job_id, 'actual', v_job.status,
                                       'expected', v_running, 'requested', 'outcome')::text;
    END IF;
    PERFORM worker_check_attempt_secret(p_job_id, v_job.attempt_secret_hash);
    IF p_science_image IS NOT NULL AND (octet_length(p_science_image) > 1024
                                        OR p_science_image ~ '[\x01-\x1f\x7f-\x9f]') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = format('job %s: science image %s refused (control characters or longer '
                             'than 1024 bytes)', p_job_id, left(quote_literal(p_science_image), 200));
    END IF;
    IF p_output_path IS NOT NULL AND p_output_path IS DISTINCT FROM v_job.output_path THEN
        IF v_job.output_path IS NOT NULL THEN
            RAISE EXCEPTION USING
                ERRCODE = 'insufficient_privilege',
                MESSAGE = format('job %s: a worker may not change the output path %s (to %s)',
                                 p_job_id, quote_literal(v_job.output_path),
                                 left(quote_literal(p_output_path), 200));
        END IF;
        IF NOT worker_location_is_safe(p_output_path) THEN
            RAISE EXCEPTION USING
                ERRCODE = 'insufficient_privilege',
                MESSAGE = format('job %s: output path %s refused (control characters, an empty, '
                                 '"." or ".." segment, or too long)', p_job_id,
                                 left(quote_literal(p_output_path), 200));
        END IF;
    END IF;
    IF p_output_publication_date > now() + interval '1 minute' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = format('job %s: output publication date %s is in the future', p_job_id,
                             p_output_publication_date);
    END IF;
    UPDATE jobs
       SET exit_code = coalesce(p_exit_code, exit_code),
           science_image = coalesce(p_science_image, science_image),
           output_path = coalesce(p_output_path, output_path),
           output_publication_date = coalesce(p_output_publication_date,
                                              output_publication_date)
     WHERE id = p_job_id;
END;
$$;

-- The outbox of an attempt: one row per message of p_messages, a JSON array of
-- {"product": text, "body": object, "message_id": uuid text (optional)}, written while the
-- job is processed at p_attempt (the worker writes it in the transaction that sets
-- processed). The rows are the attempt's own (job_id, attempt, republication 0,
-- unpublished). The door computes each message id itself, from the job's own unique id,
-- the product and the attempt (joblife_message_uuid of '<unique_id>/<product>/<attempt>',
-- what joblife.worker.runner.message_id computes): message ids are unique across all jobs
-- and predictable, so a worker naming its own would pre-claim, or publish under, another
-- job's. A message_id given must be that one (a worker computing another is refused).
-- A product is printable text of at most 256 bytes, a body an object of at most 1 MiB
-- (as JSON text). Returns how many rows.
CREATE OR REPLACE FUNCTION worker_write_publications(
    p_job_id bigint,
    p_attempt integer,
    p_messages jsonb
) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
AS $$
DECLARE
    v_max_product_bytes CONSTANT integer := 256;
    v_max_body_bytes CONSTANT integer := 1048576;
    v_job record;
    v_message record;
    v_product text;
    v_id uuid;
    v_count integer := 0;
BEGIN
    SELECT j.attempt, j.unique_id, j.attempt_secret_hash,
           (SELECT s.name FROM job_statuses s WHERE s.id = j.status) AS status
      INTO v_job FROM jobs j
     WHERE j.id = p_job_id FOR NO KEY UPDATE OF j;
    IF NOT FOUND OR v_job.attempt IS DISTINCT FROM p_attempt OR v_job.status <> 'processed' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'JL003',
            MESSAGE = format('job %s is %s at attempt %s, not processed at attempt %s: no '
                             'publication may be written', p_job_id,
                             coalesce(v_job.status, 'missing'), v_job.attempt, p_attempt),
            DETAIL = json_build_object('job_id', p_job_id, 'actual', v_job.status,
                                       'expected', ARRAY['processed'],
                                       'requested', 'publications')::text;
    END IF;
    PERFORM worker_check_attempt_secret(p_job_id, v_job.attempt_secret_hash);
    IF jsonb_typeof(p_messages) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = format('job %s: publication messages refused: an array of {product, '
                             'body (an object)} is expected', p_job_id);
    END IF;
    FOR v_message IN
        SELECT m.value, m.n FROM jsonb_array_elements(p_messages) WITH ORDINALITY AS m(value, n)
         ORDER BY m.n
    LOOP
        IF jsonb_typeof(v_message.value) <> 'object'
           OR jsonb_typeof(v_message.value -> 'body') IS DISTINCT FROM 'object'
           OR jsonb_typeof(v_message.value -> 'product') IS DISTINCT FROM 'string'
           OR jsonb_typeof(coalesce(v_message.value -> 'message_id', '""'))
              IS DISTINCT FROM 'string' THEN
            RAISE EXCEPTION USING
                ERRCODE = 'insufficient_privilege',
                MESSAGE = format('job %s: publication message %s refused: {product (text), '
                                 'body (an object), message_id (optional)} is expected',
                                 p_job_id, v_message.n);
        END IF;
        v_product := v_message.value ->> 'product';
        IF v_product = '' OR octet_length(v_product) > v_max_product_bytes
           OR v_product ~ '[\x01-\x1f\x7f-\x9f]' THEN
            RAISE EXCEPTION USING
                ERRCODE = 'insufficient_privilege',
                MESSAGE = format('job %s: publication product %s refused (empty, control '
                                 'characters or longer than %s bytes)', p_job_id,
                                 left(quote_literal(v_product), 200), v_max_product_bytes);
        END IF;
        IF octet_length((v_message.value -> 'body')::text) > v_max_body_bytes THEN
            RAISE EXCEPTION USING
                ERRCODE = 'insufficient_privilege',
                MESSAGE = format('job %s: publication body of product %s refused (longer '
                                 'than %s bytes of JSON)', p_job_id, quote_literal(v_product),
                                 v_max_body_bytes);
        END IF;
        v_id := joblife_message_uuid(format('%s/%s/%s', v_job.unique_id, v_product, p_attempt));
        IF (v_message.value -> 'message_id') IS NOT NULL
           AND (v_message.value ->> 'message_id') IS DISTINCT FROM v_id::text THEN
            RAISE EXCEPTION USING
                ERRCODE = 'insufficient_privilege',
                MESSAGE = format('job %s: message id %s refused for product %s: this '
                                 'attempt''s is %s', p_job_id,
                                 left(quote_literal(v_message.value ->> 'message_id'), 80),
                                 quote_literal(v_product), v_id);
        END IF;
        INSERT INTO publications (job_id, attempt, product, message_id, body)
        VALUES (p_job_id, p_attempt, v_product, v_id::text, v_message.value -> 'body');
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END;
$$;

-- Grants, re-runnable (replaces revision 0007's): as before, except that the worker role
-- has no table privilege but SELECT; it executes the worker doors only.
CREATE OR REPLACE FUNCTION joblife_grant_role_privileges() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_schema text := current_schema();
    v_roles CONSTANT text := 'joblife_service, joblife_worker, joblife_operator';
    v_service_cols text;
    v_fn regprocedure;
    v_table regclass;
BEGIN
    -- Clean slate for this database's tables, then grant what each role must have.
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %s', v_schema, v_roles);
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %s', v_schema, v_roles);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %s', v_schema, v_roles);

    -- jobs: the service may write every column but identity, type and status (the
    -- dispatcher writes attempt_secret_hash); creation inserts (the creation trigger admits
    -- only creation statuses and writes the first history row with the owner's rights).
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO v_service_cols
      FROM pg_attribute a
     WHERE a.attrelid = 'jobs'::regclass AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attname NOT IN ('id', 'unique_id', 'job_type', 'status', 'status_changed_at',
                             'created_at');
    EXECUTE 'GRANT INSERT ON jobs TO joblife_service';
    EXECUTE format('GRANT UPDATE (%s) ON jobs TO joblife_service', v_service_cols);
    -- The operator's tools lock the jobs they change (SELECT ... FOR UPDATE needs an
    -- UPDATE privilege) and a cancel clears the dependency re-check time.
    EXECUTE 'GRANT UPDATE (due_at) ON jobs TO joblife_operator';

    -- The outbox: the relay marks it published (the worker writes it through its door).
    EXECUTE 'GRANT INSERT, UPDATE ON publications TO joblife_service';

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
    -- ones and the worker doors are revoked from PUBLIC and granted per role. They run
    -- with the owner's rights (SECURITY DEFINER, fixed search_path).
    FOR v_fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = v_schema::regnamespace
           AND p.proname IN ('set_job_status', 'acknowledge_jobs', 'cancel_jobs', 'retry_jobs',
                             'republish_jobs', 'worker_set_job_status', 'worker_heartbeat',
                             'worker_record_outcome', 'worker_write_publications')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = %I, pg_temp',
                       v_fn, v_schema);
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC, %s', v_fn, v_roles);
    END LOOP;
    FOR v_fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = v_schema::regnamespace
           AND p.proname IN ('create_jobs_with_status_function', 'joblife_grant_role_privileges',
                             'worker_check_attempt_secret')
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
    FOR v_fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = v_schema::regnamespace
           AND p.proname IN ('worker_set_job_status', 'worker_heartbeat',
                             'worker_record_outcome', 'worker_write_publications')
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO joblife_worker', v_fn);
    END LOOP;
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
