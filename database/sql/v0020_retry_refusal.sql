-- Retry refuses a job that is not failed with a message naming every status it accepts
-- (internal_error too), instead of the door's generic "not external_error or error_checked
-- as expected". Same SQLSTATE (JL003) and DETAIL keys, so joblife.db.status raises the same
-- StatusConflict; nothing else changes (v0017_operator_names.sql's retry_jobs otherwise).
CREATE OR REPLACE FUNCTION retry_jobs(
    p_job_ids bigint[],
    p_message text DEFAULT NULL
) RETURNS TABLE (job_id bigint, previous_status text, status text, changed_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_internal bigint[];
    v_refused record;
    v_retryable text[] := ARRAY['internal_error', 'external_error', 'error_checked'];
    v_details jsonb := jsonb_build_object('by', 'operator', 'action', 'retry',
                                          'operator', joblife_operator_name());
BEGIN
    p_message := coalesce(p_message, 'retried by an operator');
    -- Lock first, so the statuses read here cannot change before the door is called.
    PERFORM 1 FROM jobs j WHERE j.id = ANY (p_job_ids) ORDER BY j.id FOR UPDATE;
    SELECT j.id, s.name INTO v_refused
      FROM jobs j JOIN job_statuses s ON s.id = j.status
     WHERE j.id = ANY (p_job_ids) AND s.name <> ALL (v_retryable)
     ORDER BY j.id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'JL003',
            MESSAGE = format('job %s is %s: only a job in internal_error, external_error or '
                             'error_checked can be retried', v_refused.id, v_refused.name),
            DETAIL = json_build_object('job_id', v_refused.id, 'actual', v_refused.name,
                                       'expected', v_retryable, 'requested', 'ready')::text;
    END IF;
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

-- CREATE OR REPLACE resets the security to INVOKER and drops SET clauses (see
-- v0017_operator_names.sql's header): the owner's rights and a fixed search_path again.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION retry_jobs(bigint[], text) SECURITY DEFINER '
                   'SET search_path = %I, pg_temp', current_schema());
END;
$$;
