-- Products that creation refuses. Installed by migration 0012 (which creates the
-- rejected_products table first).

-- 1. The creation trigger writes a per-job first history message ------------------------
-- Creation refuses a product whose key is unsafe (`in/x/../good.h5`) by recording it as a
-- cancelled job whose first history row says why. The creating transaction passes those
-- messages in the transaction-local setting joblife.creation_messages, a JSON object
-- {input_product_id: {reprocessing_context: message}}; every other job gets 'created'.
-- The setting is read once per statement. (Whoever may insert jobs may set it: it only
-- words the first history row of the jobs the same statement inserts.)
CREATE OR REPLACE FUNCTION jobs_record_creation() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_bad record;
    v_messages jsonb := nullif(current_setting('joblife.creation_messages', true), '')::jsonb;
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
    IF v_messages IS NULL THEN
        INSERT INTO job_status_changes (job_id, previous_status, status, time, message)
        SELECT n.id, NULL, n.status, n.status_changed_at, 'created' FROM new_jobs n;
    ELSE
        INSERT INTO job_status_changes (job_id, previous_status, status, time, message)
        SELECT n.id, NULL, n.status, n.status_changed_at,
               coalesce(v_messages -> n.input_product_id ->> n.reprocessing_context,
                        'created')
          FROM new_jobs n;
    END IF;
    RETURN NULL;
END;
$$;

-- 2. The one writer of rejected_products ------------------------------------------------
-- Upserts one row per (job type, product name): a product rediscovered at every cycle
-- stays one row, its last_seen and times_seen follow. Returns the names seen for the first
-- time (the caller logs and counts those only). SECURITY DEFINER (set by the migration):
-- the service role needs no write privilege on the table, so re-running
-- joblife_grant_role_privileges() (which resets table privileges) cannot take it away.
CREATE OR REPLACE FUNCTION record_rejected_products(
    p_job_type text,
    p_names text[],
    p_reason_classes text[],
    p_reasons text[],
    p_seen_at timestamptz
) RETURNS TABLE (name text, first_time boolean)
LANGUAGE sql AS $$
    INSERT INTO rejected_products AS r
           (job_type, name, reason_class, reason, first_seen, last_seen, times_seen)
    SELECT p_job_type, u.name, u.reason_class, u.reason, p_seen_at, p_seen_at, 1
      FROM unnest(p_names, p_reason_classes, p_reasons) AS u(name, reason_class, reason)
    ON CONFLICT (job_type, name) DO UPDATE
       SET reason_class = excluded.reason_class,
           reason = excluded.reason,
           last_seen = greatest(r.last_seen, excluded.last_seen),
           times_seen = r.times_seen + 1
    RETURNING r.name, (r.xmax = 0) AS first_time;
$$;
