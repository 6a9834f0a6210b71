-- 0002: audit.predictions loses its DEFAULT partition.
--
-- Why: attaching a day's partition while a DEFAULT partition exists locks the
-- DEFAULT one ACCESS EXCLUSIVE (to check it holds no row of the new range), so
-- any open transaction that had read audit.predictions — an idle psql session,
-- an auditor's report, another host's reader — stalled the shippers' first batch
-- of every day, and every later reader queued behind that lock (measured in
-- bench/audit_load.py). Without a DEFAULT partition, ATTACH PARTITION takes
-- SHARE UPDATE EXCLUSIVE on the parent only, which neither readers nor inserts
-- into other days conflict with.
--
-- The shippers always ensure a day's partition before inserting its rows
-- (audit.ensure_partition, below); an INSERT by other means into a day with no
-- partition now fails ("no partition of relation ... found for row") instead of
-- landing in DEFAULT: call audit.ensure_partition(day) first.
--
-- Rows the DEFAULT partition holds are moved into their days' partitions first.

DO $$
DECLARE
    d date;
BEGIN
    FOR d IN SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date FROM audit.predictions_default LOOP
        PERFORM audit.ensure_partition(d);
    END LOOP;
END
$$;

DROP TABLE audit.predictions_default;

-- audit.ensure_partition(day): the partition for that UTC day, created if
-- missing: a plain table ATTACHed to the parent (SHARE UPDATE EXCLUSIVE; it is
-- empty, so the attach scan is instant). Concurrent callers serialize on an
-- advisory lock; the existence check is a catalog query (fresh snapshot per
-- statement), so a waiter sees the table the lock holder committed. Returns the
-- partition's name.
CREATE OR REPLACE FUNCTION audit.ensure_partition(day date) RETURNS text
LANGUAGE plpgsql AS $fn$
DECLARE
    part text := 'predictions_' || to_char(day, 'YYYYMMDD');
    lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_class
               WHERE relname = part AND relnamespace = 'audit'::regnamespace) THEN
        RETURN part;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('audit.ensure_partition'));
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_class
               WHERE relname = part AND relnamespace = 'audit'::regnamespace) THEN
        RETURN part;
    END IF;
    EXECUTE format('CREATE TABLE audit.%I (LIKE audit.predictions INCLUDING DEFAULTS)', part);
    EXECUTE format('ALTER TABLE audit.predictions ATTACH PARTITION audit.%I '
                   'FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
    RETURN part;
END
$fn$;
