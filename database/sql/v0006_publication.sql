-- Publication (revision 0006): the timeliness summary behind `joblife timeliness`, and the
-- operator procedure behind `joblife jobs republish`.

-- Per job type, over the jobs whose output was published in [p_since, p_until): how many,
-- the 50th / 90th / 99th percentiles of input publication -> output publication (seconds,
-- continuous percentiles), and how many made it within p_target. `pending` counts the
-- jobs of the type whose input was published in the window and whose output is not yet.
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
        SELECT t.job_type, t.timeliness_seconds::double precision AS seconds
          FROM job_timeliness t
         WHERE t.output_publication_date IS NOT NULL
           AND (p_since IS NULL OR t.output_publication_date >= p_since)
           AND (p_until IS NULL OR t.output_publication_date < p_until)
    ), pending AS (
        SELECT t.job_type, count(*) AS jobs
          FROM job_timeliness t
         WHERE t.output_publication_date IS NULL
           AND t.status NOT IN ('done', 'cancelled')
           AND (p_since IS NULL OR t.input_publication_date >= p_since)
           AND (p_until IS NULL OR t.input_publication_date < p_until)
         GROUP BY t.job_type
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

-- The message id of an operator's republication round: an RFC 4122 version 3 (MD5) UUID
-- of p_name in joblife's message namespace (the one of joblife.worker.runner, whose
-- first-round ids are version 3 too since migration 0011). Deterministic: the same round always gets the same id.
CREATE OR REPLACE FUNCTION joblife_message_uuid(p_name text) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT overlay(overlay(h PLACING '3' FROM 13)
                   PLACING substr('89ab', (('x' || substr(h, 17, 1))::bit(4)::int & 3) + 1, 1)
                   FROM 17)::uuid
      FROM (SELECT md5(decode('6f1c3b9e6a434d539c367f4a8d2b1e10', 'hex')
                       || convert_to(p_name, 'UTF8')) AS h) AS hashed
$$;

-- Operator: publish jobs' products again, all or nothing (`joblife jobs republish`).
--   done                                     -> a new round of outbox rows (the last
--                                               round's bodies, new message ids), then
--                                               start_publication;
--   internal_error | external_error          -> error_checked -> processed (the rows never
--   | error_checked, with outbox rows for       confirmed are sent again, e.g. a product
--   the current attempt                         returned unroutable).
-- Refusals (SQLSTATE JL060, DETAIL {"job_id": ...}): a missing job, a job without outbox
-- rows for its attempt, a job in any other status.
CREATE OR REPLACE FUNCTION republish_jobs(
    p_job_ids bigint[],
    p_message text DEFAULT NULL
) RETURNS TABLE (job_id bigint, previous_status text, status text, changed_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_details jsonb := jsonb_build_object('stage', 'publication', 'by', 'operator',
                                          'action', 'republish');
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
