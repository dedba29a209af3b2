-- The attempt secret presented per transaction (revision 0016), so that a worker can reach
-- PostgreSQL through a pooler in transaction mode (PgBouncer), which carries no session
-- setting from a client's connection start to the server connection it lends it.
--
-- A worker holding its attempt's secret S now proves it in each transaction that calls a
-- door, without sending S:
--   * the dispatcher stores, besides SHA-256(S) in jobs.attempt_secret_hash (public to every
--     role, as before), the attempt's proof key K = HMAC-SHA256(S, 'joblife attempt proof
--     key') in attempt_proof_keys, a table only its owner reads (row level security without
--     a policy; the doors and the dispatcher's writer below run as the owner);
--   * the worker reads its transaction's id (pg_current_xact_id()), computes
--     P = HMAC-SHA256(K, 'joblife attempt proof:<xid>') and sets it for the transaction
--     only (set_config('joblife.attempt_proof', P, true));
--   * every door checks P against the transaction it runs in.
-- P is in a query text, which every other session of the worker's login reads in
-- pg_stat_activity; it is worth nothing there: it opens the doors in that one transaction,
-- which is the worker's own (a transaction id is never used twice, committed or not).
-- Neither S nor K appears in any query of the worker.
--
-- The session setting joblife.attempt_secret of revision 0011 (given at connection start
-- on a direct connection) is still accepted: either opens the doors.

-- Where the proof keys live: one row per job, its current attempt's (the dispatcher
-- replaces it at each dispatch). A key is valid while secret_hash is the job's
-- attempt_secret_hash: a hash changed by anything else than the writer below (an owner
-- clearing it) disowns the key with it.
CREATE TABLE attempt_proof_keys (
    job_id bigint NOT NULL,
    secret_hash bytea NOT NULL,
    proof_key bytea NOT NULL,
    CONSTRAINT pk_attempt_proof_keys PRIMARY KEY (job_id),
    CONSTRAINT fk_attempt_proof_keys_job_id_jobs FOREIGN KEY (job_id)
        REFERENCES jobs (id) ON DELETE CASCADE
);
-- Row level security without a policy: no role but the owner (and a superuser) sees or
-- writes a row, whatever a later grant gives (joblife_grant_role_privileges() grants
-- SELECT on every table of the schema).
ALTER TABLE attempt_proof_keys ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON attempt_proof_keys
    FROM PUBLIC, joblife_service, joblife_worker, joblife_operator;

-- HMAC-SHA256 (RFC 2104) with the built-in sha256(): no extension needed.
CREATE OR REPLACE FUNCTION joblife_hmac_sha256(p_key bytea, p_message bytea)
RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    v_key bytea := CASE WHEN length(p_key) > 64 THEN sha256(p_key) ELSE p_key END;
    v_inner bytea;
    v_outer bytea;
BEGIN
    v_key := v_key || decode(repeat('00', 64 - length(v_key)), 'hex');
    v_inner := v_key;
    v_outer := v_key;
    FOR i IN 0..63 LOOP
        v_inner := set_byte(v_inner, i, get_byte(v_key, i) # 54);  -- 0x36
        v_outer := set_byte(v_outer, i, get_byte(v_key, i) # 92);  -- 0x5c
    END LOOP;
    RETURN sha256(v_outer || sha256(v_inner || p_message));
END;
$$;

-- The check every door makes (revision 0011's, now taking the per-transaction proof too),
-- under the row lock the caller took. Not granted to anyone: called only from the SECURITY
-- DEFINER doors (it then runs as the owner, who reads attempt_proof_keys).
CREATE OR REPLACE FUNCTION worker_check_attempt_secret(p_job_id bigint, p_hash bytea)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_secret text := current_setting('joblife.attempt_secret', true);
    v_proof text := current_setting('joblife.attempt_proof', true);
    v_key bytea;
BEGIN
    IF p_hash IS NOT NULL THEN
        -- The session's secret (a direct connection that gave it at connection start).
        IF v_secret IS NOT NULL AND v_secret <> ''
           AND sha256(convert_to(v_secret, 'UTF8')) = p_hash THEN
            RETURN;
        END IF;
        -- The transaction's proof.
        IF v_proof ~ '^[0-9a-f]{64}$' THEN
            SELECT k.proof_key INTO v_key
              FROM attempt_proof_keys k
             WHERE k.job_id = p_job_id AND k.secret_hash = p_hash;
            IF v_key IS NOT NULL AND joblife_hmac_sha256(
                   v_key,
                   convert_to('joblife attempt proof:' || pg_current_xact_id()::text, 'UTF8')
               ) = decode(v_proof, 'hex') THEN
                RETURN;
            END IF;
        END IF;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'insufficient_privilege',
        MESSAGE = format('job %s: wrong or missing attempt secret (the proof of this '
                         'transaction, joblife.attempt_proof, or the session setting '
                         'joblife.attempt_secret, of the secret the executor gave this '
                         'attempt)', p_job_id);
END;
$$;

-- The dispatcher's writer: each attempt's secret hash (on jobs) and proof key (here), in
-- one statement. Granted to joblife_service only; runs as the owner.
CREATE OR REPLACE FUNCTION joblife_store_attempt_secrets(
    p_job_ids bigint[],
    p_hashes bytea[],
    p_proof_keys bytea[]
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
BEGIN
    IF cardinality(p_job_ids) IS DISTINCT FROM cardinality(p_hashes)
       OR cardinality(p_job_ids) IS DISTINCT FROM cardinality(p_proof_keys) THEN
        RAISE EXCEPTION 'joblife_store_attempt_secrets: arrays of different lengths';
    END IF;
    UPDATE jobs j SET attempt_secret_hash = v.hash
      FROM unnest(p_job_ids, p_hashes) AS v(id, hash)
     WHERE j.id = v.id;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    INSERT INTO attempt_proof_keys AS k (job_id, secret_hash, proof_key)
    SELECT DISTINCT ON (v.id) v.id, v.hash, v.proof_key
      FROM unnest(p_job_ids, p_hashes, p_proof_keys) AS v(id, hash, proof_key)
      JOIN jobs j ON j.id = v.id
     WHERE v.hash IS NOT NULL AND v.proof_key IS NOT NULL
     ORDER BY v.id
    ON CONFLICT (job_id) DO UPDATE
       SET secret_hash = excluded.secret_hash, proof_key = excluded.proof_key;
    RETURN v_count;
END;
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION joblife_store_attempt_secrets(bigint[], bytea[], bytea[]) '
                   'SECURITY DEFINER SET search_path = %I, pg_temp', current_schema());
END;
$$;
REVOKE ALL ON FUNCTION joblife_store_attempt_secrets(bigint[], bytea[], bytea[])
    FROM PUBLIC, joblife_worker, joblife_operator;
GRANT EXECUTE ON FUNCTION joblife_store_attempt_secrets(bigint[], bytea[], bytea[])
    TO joblife_service;
