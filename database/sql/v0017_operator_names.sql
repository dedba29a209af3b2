-- The operator procedures record who acted (revision 0017): every history row that
-- acknowledge_jobs, cancel_jobs, retry_jobs and republish_jobs write carries, besides
-- {"by": "operator", "action": ...}, the acting operator's name under "operator".
--
-- The name is joblife_operator_name(): the transaction-local setting joblife.operator when
-- the caller set it (a dashboard acting for several named people through one login, or the
-- CLI with the OS login name: joblife.db.status sets it with
-- set_config('joblife.operator', name, is_local => true) in the transaction of the call, so
-- that it works through PgBouncer in transaction mode), else the login of the session.
-- session_user, not current_user: inside these SECURITY DEFINER procedures current_user is
-- their owner, while session_user stays the caller's login (also after SET ROLE).
-- The name is what the caller says: the setting is no credential. The login is the
-- database's own account of who connected.
--
-- The four procedures are those of v0001_procedures.sql (acknowledge, cancel, retry) and
-- v0006_publication.sql (republish) with the one key added; nothing else changes.
-- CREATE OR REPLACE keeps a function's owner and grants (EXECUTE revoked from PUBLIC,
-- granted to joblife_service and joblife_operator by joblife_grant_role_privileges, 0007)
-- but resets its security to INVOKER and drops its SET clauses: SECURITY DEFINER and the
-- fixed search_path are set again at the end, as joblife_grant_role_privileges sets them.
-- (That function itself is not called: it would also re-grant SELECT on every table,
-- attempt_proof_keys included, which revision 0016 revoked.)

-- The acting operator: the transaction's joblife.operator, else the session's login. An
-- unset or reset placeholder setting reads as '' (or NULL before any set): both mean none.
CREATE OR REPLACE FUNCTION joblife_operator_name() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('joblife.operator', true), ''), session_user::text)
$$;

-- Operator procedures. Each is all-or-nothing over the given jobs and goes through the
-- one door, so every change lands in the history with the operator's message and name.

-- Acknowledge errors: internal_error | external_error -> error_checked.
CREATE OR REPLACE FUNCTION acknowledge_jobs(
    p_job_ids bigint[],
    p_message text DEFAULT NULL
) RETURNS TABLE (job_id bigint, previous_status text, status text, changed_at timestamptz)
LANGUAGE sql AS $$
    SELECT * FROM set_job_status(p_job_ids, 'error_checked',
                                 ARRAY['internal_error', 'external_error'],
                                 coalesce(p_message, 'acknowledged by an operator'),
                                 jsonb_build_object('by', 'operator', 'action', 'acknowledge',
                                                    'operator', joblife_operator_name()));
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
                                 jsonb_build_object('by', 'operator', 'action', 'cancel',
                                                    'operator', joblife_operator_name()));
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
    v_details jsonb := jsonb_build_object('by', 'operator', 'action', 'retry',
                                          'operator', joblife_operator_name());
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

-- Operator: publish jobs' products again, all or nothing (`joblife jobs republish`); see
-- v0006_publication.sql for what it does to each status and what it refuses.
CREATE OR REPLACE FUNCTION republish_jobs(
    p_job_ids bigint[],
    p_message text DEFAULT NULL
) RETURNS TABLE (job_id bigint, previous_status text, status text, changed_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_details jsonb := jsonb_build_object('stage', 'publication', 'by', 'operator',
                                          'action', 'republish',
                                          'operator', joblife_operator_name());
    v_id bigint;
    v_status text;
    v_attempt integer;
    v_done bigint[];
    v_failed bigint[];
    v_errors bigint[];
BEGIN
    p_message := coalesce(p_message, 'republication requested by an operator');
    PERFORM 1 FROM jobs j WHERE j.id = ANY (p_job_ids) ORDER BY j.id FOR UPDATE;
    SELECT u.id INTO v_id
      FROM unnest(p_job_ids) AS u(id)
     WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = u.id)
     ORDER BY u.id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'job % not found', v_id
            USING ERRCODE = 'JL060', DETAIL = jsonb_build_object('job_id', v_id)::text;
    END IF;
    SELECT j.id, s.name, j.attempt INTO v_id, v_status, v_attempt
      FROM jobs j JOIN job_statuses s ON s.id = j.status
     WHERE j.id = ANY (p_job_ids)
       AND NOT EXISTS (SELECT 1 FROM publications p
                        WHERE p.job_id = j.id AND p.attempt = j.attempt)
     ORDER BY j.id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'job % (%) has no publication for its attempt %: nothing to '
                        'republish (`joblife jobs retry` runs it again)', v_id, v_status, v_attempt
            USING ERRCODE = 'JL060', DETAIL = jsonb_build_object('job_id', v_id)::text;
    END IF;
    SELECT j.id, s.name INTO v_id, v_status
      FROM jobs j JOIN job_statuses s ON s.id = j.status
     WHERE j.id = ANY (p_job_ids)
       AND s.name NOT IN ('done', 'internal_error', 'external_error', 'error_checked')
     ORDER BY j.id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'job % is %: only done jobs and failed jobs with products can be '
                        'republished (a processed job is being published already)',
                        v_id, v_status
            USING ERRCODE = 'JL060', DETAIL = jsonb_build_object('job_id', v_id)::text;
    END IF;

    SELECT array_agg(j.id ORDER BY j.id) FILTER (WHERE s.name = 'done'),
           array_agg(j.id ORDER BY j.id) FILTER (WHERE s.name <> 'done'),
           array_agg(j.id ORDER BY j.id) FILTER (WHERE s.name IN ('internal_error',
                                                                  'external_error'))
      INTO v_done, v_failed, v_errors
      FROM jobs j JOIN job_statuses s ON s.id = j.status
     WHERE j.id = ANY (p_job_ids);

    IF v_done IS NOT NULL THEN
        INSERT INTO publications (job_id, attempt, product, message_id, body, republication)
        SELECT p.job_id, p.attempt, p.product,
               joblife_message_uuid(format('%s/%s/%s/republish-%s', j.unique_id, p.product,
                                           p.attempt, p.republication + 1))::text,
               p.body, p.republication + 1
          FROM publications p
          JOIN jobs j ON j.id = p.job_id AND p.attempt = j.attempt
         WHERE j.id = ANY (v_done)
           AND p.republication = (SELECT max(q.republication) FROM publications q
                                   WHERE q.job_id = p.job_id AND q.attempt = p.attempt);
        RETURN QUERY SELECT * FROM set_job_status(v_done, 'start_publication', ARRAY['done'],
                                                  p_message, v_details);
    END IF;
    IF v_errors IS NOT NULL THEN
        PERFORM set_job_status(v_errors, 'error_checked',
                               ARRAY['internal_error', 'external_error'], p_message, v_details);
    END IF;
    IF v_failed IS NOT NULL THEN
        RETURN QUERY SELECT * FROM set_job_status(v_failed, 'processed', ARRAY['error_checked'],
                                                  p_message, v_details);
    END IF;
END;
$$;

-- The owner's rights and a fixed search_path again (see the header); grants are kept.
DO $$
DECLARE
    v_fn text;
BEGIN
    FOREACH v_fn IN ARRAY ARRAY['acknowledge_jobs(bigint[], text)', 'cancel_jobs(bigint[], text)',
                                'retry_jobs(bigint[], text)', 'republish_jobs(bigint[], text)']
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = %I, pg_temp',
                       v_fn, current_schema());
    END LOOP;
END;
$$;
