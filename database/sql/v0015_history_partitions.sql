-- The status history partitioned by month (issue 15, item 4). Installed by migration 0015.
--
-- job_status_changes becomes a table partitioned by RANGE (time), one partition per UTC
-- month (job_status_changes_YYYYMM), plus
--   job_status_changes_legacy   the table as it was before this revision, attached as one
--                               partition FROM (MINVALUE) TO (the first month it does not
--                               reach): a CHECK constraint proves the bound, so the attach
--                               reads the table once and copies nothing;
--   job_status_changes_default  the DEFAULT partition: an insert never fails for want of a
--                               partition (a row dated in a month nobody created ahead).
-- joblife_ensure_history_partitions() creates the months ahead and moves rows out of the
-- default partition into their month's; `joblife cleanup` removes the history of whole
-- months by dropping their partition (joblife_drop_history_partition) instead of deleting
-- row by row. Months are UTC months whatever the session's TimeZone.
--
-- What did not move over:
--   * the primary key. A partitioned table's must include the partition key, and an index
--     on (id, time) would have to be built over the whole legacy table during the migration
--     (hours at hundreds of millions of rows, the status door locked out meanwhile). Each
--     partition has its own primary key on id instead (the legacy one keeps
--     pk_job_status_changes): ids stay unique because one identity sequence draws them, and
--     the readers that follow the history by id (the metrics) keep an index. Nothing
--     references the history's id (no foreign key, checked).
--   * the statement guard on inserts fires for statements on the parent only: the roles
--     have no privilege on a partition but SELECT (revoked as each partition is made), so
--     they write history through the doors only, as before.

-- 1. The partitions and their bounds, read from the catalog ------------------------------
-- lower_bound is -infinity for MINVALUE; the DEFAULT partition has NULL bounds.
CREATE OR REPLACE FUNCTION joblife_history_partitions()
RETURNS TABLE (partition regclass, lower_bound timestamptz, upper_bound timestamptz,
               is_default boolean)
LANGUAGE sql STABLE
SET datestyle = 'ISO, YMD'  -- the bounds are printed, then read back
AS $$
    SELECT c.oid::regclass,
           CASE WHEN m[1] IS NULL THEN NULL
                WHEN m[1] = 'MINVALUE' THEN '-infinity'::timestamptz
                ELSE btrim(m[1], '''')::timestamptz END,
           CASE WHEN m[2] IS NULL THEN NULL
                WHEN m[2] = 'MAXVALUE' THEN 'infinity'::timestamptz
                ELSE btrim(m[2], '''')::timestamptz END,
           pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'
      FROM pg_inherits i
      JOIN pg_class c ON c.oid = i.inhrelid
      LEFT JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                     '^FOR VALUES FROM \((.*)\) TO \((.*)\)$') AS m ON true
     WHERE i.inhparent = 'job_status_changes'::regclass
     ORDER BY 2 NULLS LAST;
$$;

-- The first instant of the UTC month p_months after the one of p_time.
CREATE OR REPLACE FUNCTION joblife_utc_month(p_time timestamptz, p_months integer DEFAULT 0)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT (date_trunc('month', p_time AT TIME ZONE 'UTC')
            + make_interval(months => p_months)) AT TIME ZONE 'UTC';
$$;

-- 2. Making a partition --------------------------------------------------------------
-- A new, empty table shaped like job_status_changes, with the parent's indexes (ATTACH
-- then adopts them instead of building its own); no identity: the parent's draws the ids.
CREATE OR REPLACE FUNCTION joblife_new_history_table(p_name text) RETURNS regclass
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE TABLE %I (LIKE job_status_changes INCLUDING DEFAULTS '
                   'INCLUDING CONSTRAINTS INCLUDING INDEXES INCLUDING STORAGE '
                   'INCLUDING COMPRESSION)', p_name);
    RETURN p_name::regclass;
END;
$$;

-- Gets p_table (shaped like job_status_changes, its rows all in [p_lower, p_upper)) ready
-- to be attached without reading it again: its own primary key on id, and a CHECK
-- constraint that proves the bound. Done before the history is locked.
CREATE OR REPLACE FUNCTION joblife_prepare_history_partition(
    p_table regclass,
    p_lower timestamptz,
    p_upper timestamptz
) RETURNS void
LANGUAGE plpgsql
SET datestyle = 'ISO, YMD'  -- the bounds are written as literals
AS $$
DECLARE
    v_bound text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_index x WHERE x.indrelid = p_table AND x.indisprimary) THEN
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I PRIMARY KEY (id)', p_table,
                       left((SELECT c.relname FROM pg_class c WHERE c.oid = p_table), 58)
                       || '_pkey');
    END IF;
    v_bound := concat_ws(' AND ',
                         CASE WHEN p_lower > '-infinity' THEN format('time >= %L', p_lower) END,
                         CASE WHEN p_upper < 'infinity' THEN format('time < %L', p_upper) END);
    IF v_bound <> '' AND NOT EXISTS (
        SELECT 1 FROM pg_constraint c
         WHERE c.conrelid = p_table AND c.conname = 'joblife_partition_bound'
    ) THEN
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT joblife_partition_bound CHECK (%s)',
                       p_table, v_bound);
    END IF;
END;
$$;

-- Attaches p_table as the partition [p_lower, p_upper) (or as the DEFAULT partition), the
-- parent's row triggers following, and leaves the roles SELECT only on it. ATTACH takes
-- SHARE UPDATE EXCLUSIVE on the parent (the doors go on) and reads the DEFAULT partition
-- (normally empty) to check that none of its rows belongs to the range.
CREATE OR REPLACE FUNCTION joblife_attach_history_partition(
    p_table regclass,
    p_lower timestamptz,
    p_upper timestamptz,
    p_default boolean DEFAULT false
) RETURNS void
LANGUAGE plpgsql
SET datestyle = 'ISO, YMD'  -- the bounds are written as literals
AS $$
BEGIN
    IF p_default THEN
        PERFORM joblife_prepare_history_partition(p_table, '-infinity', 'infinity');
        EXECUTE format('ALTER TABLE job_status_changes ATTACH PARTITION %s DEFAULT', p_table);
    ELSE
        PERFORM joblife_prepare_history_partition(p_table, p_lower, p_upper);
        EXECUTE format('ALTER TABLE job_status_changes ATTACH PARTITION %s FOR VALUES '
                       'FROM (%s) TO (%s)', p_table,
                       CASE WHEN p_lower > '-infinity' THEN quote_literal(p_lower)
                            ELSE 'MINVALUE' END,
                       CASE WHEN p_upper < 'infinity' THEN quote_literal(p_upper)
                            ELSE 'MAXVALUE' END);
    END IF;
    -- The partition constraint does its work from now on.
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS joblife_partition_bound',
                   p_table);
    EXECUTE format('REVOKE ALL ON %s FROM joblife_service, joblife_worker, joblife_operator',
                   p_table);
    EXECUTE format('GRANT SELECT ON %s TO joblife_service, joblife_worker, joblife_operator',
                   p_table);
END;
$$;

CREATE OR REPLACE FUNCTION joblife_history_partition_name(p_lower timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'job_status_changes_' || to_char(p_lower AT TIME ZONE 'UTC', 'YYYYMM');
$$;

-- 3. Partitions ahead, and nothing left in the DEFAULT partition -------------------------
-- The UTC months that need a partition: the current one and the p_months_ahead next ones,
-- and every month that has rows in the DEFAULT partition, less the months a partition
-- covers already (every bound is a month start, MINVALUE or MAXVALUE, so a month is
-- either covered or not). NULL when none.
CREATE OR REPLACE FUNCTION joblife_missing_history_months(p_months_ahead integer)
RETURNS timestamptz[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_default regclass;
    v_months timestamptz[];
BEGIN
    SELECT p.partition INTO v_default FROM joblife_history_partitions() p WHERE p.is_default;
    SELECT array_agg(joblife_utc_month(now(), k)) INTO v_months
      FROM generate_series(0, p_months_ahead) AS k;
    IF v_default IS NOT NULL THEN
        EXECUTE format('SELECT $1 || array_agg(DISTINCT joblife_utc_month(d.time)) FROM %s d',
                       v_default)
           INTO v_months USING v_months;
    END IF;
    RETURN (SELECT array_agg(DISTINCT m ORDER BY m)
              FROM unnest(v_months) AS m
             WHERE m IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM joblife_history_partitions() p
                                WHERE NOT p.is_default AND p.lower_bound <= m
                                  AND p.upper_bound > m));
END;
$$;

-- Creates the partitions of the missing months (above), and the DEFAULT partition if it is
-- missing, moving the rows of the DEFAULT partition into their month's partition
-- (PostgreSQL refuses to create a partition whose range holds rows of the DEFAULT one).
-- Returns the names of the partitions it created.
--
-- Cheap when there is nothing to do (a catalog read and a look at an empty DEFAULT
-- partition): the services call it periodically. A new month is attached: SHARE UPDATE
-- EXCLUSIVE on the parent (the doors go on) and a look at the DEFAULT partition. Moving
-- rows out of the DEFAULT partition detaches it, which locks the history for as long as
-- the move takes (the rows of months that had no partition: normally none). Run with the
-- owner's rights (SECURITY DEFINER, set below), so that the service role may call it; the
-- caller sets a lock_timeout if it must not wait behind long readers.
CREATE OR REPLACE FUNCTION joblife_ensure_history_partitions(p_months_ahead integer DEFAULT 3)
RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    v_default regclass;
    v_months timestamptz[];
    v_month timestamptz;
    v_name text;
    v_moving regclass;
    v_door text := current_setting('joblife.status_door', true);
BEGIN
    IF p_months_ahead IS NULL OR p_months_ahead NOT BETWEEN 0 AND 120 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('months ahead must be between 0 and 120, not %s', p_months_ahead);
    END IF;
    SELECT p.partition INTO v_default FROM joblife_history_partitions() p WHERE p.is_default;
    v_months := joblife_missing_history_months(p_months_ahead);
    IF v_default IS NOT NULL AND v_months IS NULL THEN
        RETURN;  -- the usual case: nothing to do, no lock taken
    END IF;

    -- One caller at a time; what to do is read again under the lock.
    PERFORM pg_advisory_xact_lock(hashtext('joblife_ensure_history_partitions'));
    SELECT p.partition INTO v_default FROM joblife_history_partitions() p WHERE p.is_default;
    v_months := joblife_missing_history_months(p_months_ahead);

    IF v_default IS NOT NULL THEN
        EXECUTE format('SELECT CASE WHEN EXISTS (SELECT 1 FROM %s) THEN %L::regclass END',
                       v_default, v_default)
           INTO v_moving;
        IF v_moving IS NOT NULL THEN
            -- Its rows go to the partitions made below: detached first, so that these
            -- can be attached, and dropped once its rows are moved.
            EXECUTE format('ALTER TABLE job_status_changes DETACH PARTITION %s', v_moving);
            EXECUTE format('ALTER TABLE %s RENAME TO job_status_changes_default_moving',
                           v_moving);
            v_default := NULL;
        END IF;
    END IF;

    FOREACH v_month IN ARRAY coalesce(v_months, '{}') LOOP
        v_name := joblife_history_partition_name(v_month);
        PERFORM joblife_attach_history_partition(joblife_new_history_table(v_name), v_month,
                                                 joblife_utc_month(v_month, 1));
        RETURN NEXT v_name;
    END LOOP;

    IF v_moving IS NOT NULL THEN
        -- Through the parent, past its insert guard (the rows were written by the doors).
        PERFORM set_config('joblife.status_door', 'open', true);
        EXECUTE format('INSERT INTO job_status_changes SELECT * FROM %s', v_moving);
        PERFORM set_config('joblife.status_door', coalesce(v_door, ''), true);
        EXECUTE format('DROP TABLE %s', v_moving);
    END IF;
    IF v_default IS NULL THEN
        PERFORM joblife_attach_history_partition(
            joblife_new_history_table('job_status_changes_default'), NULL, NULL, true);
        IF v_moving IS NULL THEN
            RETURN NEXT 'job_status_changes_default';
        END IF;
    END IF;
END;
$$;

-- 4. Dropping a month ------------------------------------------------------------------
-- Removes the partition p_partition, keeping the rows of the jobs that still exist: those
-- are copied into a new partition of the same range and name, which replaces it. Returns
-- how many rows were kept. For `joblife cleanup`, after it deleted the jobs it removes
-- (their history in this partition is left for this drop, see jobs_delete_history below):
-- the rows left are those of jobs gone and those of jobs kept, so that a job's history is
-- never dropped while the job is kept. Reads the partition (under a SHARE lock: no write
-- to this month meanwhile); locks the history (ACCESS EXCLUSIVE on the parent) only for
-- the detach, the attach of the kept rows and the drop: the caller sets a lock_timeout.
-- DETACH ... CONCURRENTLY is not possible: the table has a DEFAULT partition.
CREATE OR REPLACE FUNCTION joblife_drop_history_partition(p_partition regclass)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_part record;
    v_name text;
    v_kept regclass;
    v_count bigint;
BEGIN
    SELECT p.* INTO v_part FROM joblife_history_partitions() p WHERE p.partition = p_partition;
    IF NOT FOUND OR v_part.is_default THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s is not a month partition of job_status_changes', p_partition);
    END IF;
    v_name := (SELECT c.relname FROM pg_class c WHERE c.oid = p_partition);
    EXECUTE format('LOCK TABLE %s IN SHARE MODE', p_partition);
    -- The replacement, made and indexed while the history stays open.
    v_kept := joblife_new_history_table(left(v_name, 50) || '_kept');
    EXECUTE format('INSERT INTO %s SELECT * FROM %s c '
                   'WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.id = c.job_id)', v_kept,
                   p_partition);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        PERFORM joblife_prepare_history_partition(v_kept, v_part.lower_bound,
                                                  v_part.upper_bound);
    END IF;

    -- The history locked from here to the commit: no read, no write.
    EXECUTE format('ALTER TABLE job_status_changes DETACH PARTITION %s', p_partition);
    EXECUTE format('DROP TABLE %s', p_partition);
    IF v_count = 0 THEN
        EXECUTE format('DROP TABLE %s', v_kept);
    ELSE
        EXECUTE format('ALTER INDEX %I RENAME TO %I', left(v_name, 50) || '_kept_pkey',
                       left(v_name, 58) || '_pkey');
        EXECUTE format('ALTER TABLE %s RENAME TO %I', v_kept, v_name);
        PERFORM joblife_attach_history_partition(v_kept, v_part.lower_bound,
                                                 v_part.upper_bound);
    END IF;
    RETURN v_count;
END;
$$;

-- 5. Deleting jobs leaves the rows of months about to be dropped -------------------------
-- As revision 0009's, except that when the transaction sets joblife.history_dropped_before
-- (`joblife cleanup`, which drops the partitions before that instant next), the rows dated
-- before it are left in their partition for the drop, instead of being deleted one by one.
-- The DEFAULT partition is not dropped: its rows go with their job as before.
CREATE OR REPLACE FUNCTION jobs_delete_history() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_before timestamptz :=
        nullif(current_setting('joblife.history_dropped_before', true), '')::timestamptz;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- TRUNCATE jobs CASCADE used to reach the history through the foreign key, whose
        -- no-truncate trigger refused it; without it the history would be left behind.
        RAISE EXCEPTION USING
            ERRCODE = 'JL006',
            MESSAGE = 'refused: TRUNCATE jobs would leave their history behind; delete '
                      'the jobs instead (their history goes with them)';
    END IF;
    -- job_status_changes_append_only lets these go: their jobs are gone.
    IF v_before IS NULL THEN
        DELETE FROM job_status_changes c USING gone_jobs g WHERE c.job_id = g.id;
    ELSE
        -- A literal, so that the partitions before it are pruned at planning.
        EXECUTE format('DELETE FROM job_status_changes c USING gone_jobs g '
                       'WHERE c.job_id = g.id AND c.time >= %L', v_before);
        DELETE FROM job_status_changes_default c USING gone_jobs g
         WHERE c.job_id = g.id AND c.time < v_before;
    END IF;
    RETURN NULL;
END;
$$;

-- 6. The conversion, in place -------------------------------------------------------------
-- The table is renamed job_status_changes_legacy and attached, as it is, to a new
-- partitioned job_status_changes with the same columns, constraints, indexes (the legacy
-- table's own are attached to them, not built again) and triggers. Views that read the
-- history are pointed at the new table. Cost: one read of the history (the validation of
-- the CHECK constraint that proves the legacy partition's bound), under the migration's
-- exclusive lock; nothing is copied.
DO $$
DECLARE
    v_table CONSTANT regclass := 'job_status_changes'::regclass;
    v_views regclass[];
    v_view_defs text[];
    v_indexes text[];
    v_index_defs text[];
    v_triggers text[];
    v_trigger_defs text[];
    v_bad text;
    v_next bigint;
    v_upper timestamptz;
    i integer;
BEGIN
    LOCK TABLE job_status_changes IN ACCESS EXCLUSIVE MODE;

    -- What reads or refers to the table by its oid, and would stay with the legacy table.
    SELECT string_agg(DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid), ', ')
      INTO v_bad
      FROM pg_depend d
      LEFT JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
      LEFT JOIN pg_class v ON v.oid = r.ev_class
     WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = v_table
       AND d.deptype = 'n'
       AND (d.classid = 'pg_proc'::regclass
            OR (d.classid = 'pg_rewrite'::regclass AND v.oid <> v_table AND v.relkind <> 'v')
            OR (d.classid = 'pg_constraint'::regclass
                AND (SELECT c.contype FROM pg_constraint c WHERE c.oid = d.objid) = 'f'));
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_in_use',
            MESSAGE = format('cannot partition job_status_changes: %s refer(s) to it', v_bad),
            HINT = 'drop them, migrate, and create them again';
    END IF;
    SELECT array_agg(DISTINCT r.ev_class::regclass), NULL INTO v_views, v_view_defs
      FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
     WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
       AND d.refobjid = v_table AND r.ev_class <> v_table;
    v_view_defs := ARRAY(SELECT pg_get_viewdef(v) FROM unnest(v_views) WITH ORDINALITY AS u(v, n)
                          ORDER BY n);
    IF EXISTS (SELECT 1 FROM pg_index x
                WHERE x.indrelid = v_table AND x.indisunique AND NOT x.indisprimary) THEN
        RAISE EXCEPTION 'cannot partition job_status_changes: it has a unique index other '
                        'than its primary key';
    END IF;
    SELECT array_agg(x.indexrelid::regclass::text ORDER BY x.indexrelid),
           array_agg(pg_get_indexdef(x.indexrelid) ORDER BY x.indexrelid)
      INTO v_indexes, v_index_defs
      FROM pg_index x WHERE x.indrelid = v_table AND NOT x.indisprimary;
    SELECT array_agg(t.tgname::text ORDER BY t.tgname),
           array_agg(pg_get_triggerdef(t.oid) ORDER BY t.tgname)
      INTO v_triggers, v_trigger_defs
      FROM pg_trigger t WHERE t.tgrelid = v_table AND NOT t.tgisinternal;
    EXECUTE format('SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END FROM %s',
                   pg_get_serial_sequence('job_status_changes', 'id'))
       INTO v_next;
    SELECT greatest(joblife_utc_month(now()), joblife_utc_month(max(c.time), 1)) INTO v_upper
      FROM job_status_changes c;

    -- The legacy table: its names freed for the new table's, its identity dropped (the
    -- new table's continues the sequence), its triggers dropped (the new table's apply).
    ALTER TABLE job_status_changes RENAME TO job_status_changes_legacy;
    FOR i IN 1..coalesce(cardinality(v_indexes), 0) LOOP
        EXECUTE format('ALTER INDEX %s RENAME TO %I', v_indexes[i],
                       left('job_status_changes_legacy_' || v_indexes[i], 63));
    END LOOP;
    FOR i IN 1..coalesce(cardinality(v_triggers), 0) LOOP
        EXECUTE format('DROP TRIGGER %I ON job_status_changes_legacy', v_triggers[i]);
    END LOOP;
    ALTER TABLE job_status_changes_legacy ALTER COLUMN id DROP IDENTITY;

    CREATE TABLE job_status_changes (
        LIKE job_status_changes_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS
            INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING COMMENTS
    ) PARTITION BY RANGE (time);
    EXECUTE format('ALTER TABLE job_status_changes ALTER COLUMN id ADD GENERATED BY DEFAULT '
                   'AS IDENTITY (START WITH %s)', v_next);
    FOR i IN 1..coalesce(cardinality(v_index_defs), 0) LOOP
        EXECUTE v_index_defs[i];
    END LOOP;
    FOR i IN 1..coalesce(cardinality(v_trigger_defs), 0) LOOP
        EXECUTE v_trigger_defs[i];
    END LOOP;

    PERFORM joblife_attach_history_partition('job_status_changes_legacy', '-infinity', v_upper);
    PERFORM joblife_ensure_history_partitions(3);
    FOR i IN 1..coalesce(cardinality(v_views), 0) LOOP
        EXECUTE format('CREATE OR REPLACE VIEW %s AS %s', v_views[i], v_view_defs[i]);
    END LOOP;
END;
$$;

ANALYZE job_status_changes;

-- 7. Rights ---------------------------------------------------------------------------
DO $$
BEGIN
    -- CREATE OR REPLACE reset these to SECURITY INVOKER (revision 0009 made the history
    -- trigger one: whoever may delete a job deletes its history).
    EXECUTE format('ALTER FUNCTION jobs_delete_history() SECURITY DEFINER '
                   'SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION joblife_ensure_history_partitions(integer) SECURITY DEFINER '
                   'SET search_path = %I, pg_temp', current_schema());
END;
$$;
REVOKE ALL ON FUNCTION joblife_ensure_history_partitions(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION joblife_drop_history_partition(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION joblife_attach_history_partition(regclass, timestamptz, timestamptz,
                                                        boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION joblife_new_history_table(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION joblife_prepare_history_partition(regclass, timestamptz, timestamptz)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION joblife_ensure_history_partitions(integer) TO joblife_service;
SELECT joblife_grant_role_privileges();
