-- 0005: audit.ensure_partition trusts what is attached, not what is named.
--
-- Why: an operator who archives a day DETACHes its partition and may keep the
-- table (audit.predictions_YYYYMMDD) around. Until now the function saw that
-- name and returned, so every later batch holding a record of that day (a host
-- whose WAL ships days late, a re-ship from an old position) failed with "no
-- partition of relation ... found for row", and the shipper retried it forever.
--
-- Now a day counts as present when a partition ATTACHED to audit.predictions
-- is named for it (predictions_YYYYMMDD or predictions_YYYYMMDD_N). Otherwise a
-- new one is created under the first free name of those and attached; the
-- detached table is left alone. If a partition under another name already
-- covers the day (an archive attached back by hand), the ATTACH reports the
-- overlap: the new table is dropped and the rows go where PostgreSQL routes
-- them. Returns the partition's name (NULL in that last case).

CREATE FUNCTION audit.attached_partition(base text) RETURNS text
LANGUAGE sql STABLE AS $fn$
    SELECT c.relname::text
    FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'audit.predictions'::regclass
      AND (c.relname = base OR c.relname ~ ('^' || base || '_[0-9]+$'))
    ORDER BY c.relname
    LIMIT 1
$fn$;

CREATE OR REPLACE FUNCTION audit.ensure_partition(day date) RETURNS text
LANGUAGE plpgsql AS $fn$
DECLARE
    base text := 'predictions_' || to_char(day, 'YYYYMMDD');
    part text := audit.attached_partition(base);
    n int := 1;
    lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF part IS NOT NULL THEN
        RETURN part;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('audit.ensure_partition'));
    part := audit.attached_partition(base);
    IF part IS NOT NULL THEN
        RETURN part;
    END IF;
    part := base;
    WHILE EXISTS (SELECT 1 FROM pg_catalog.pg_class
                  WHERE relname = part AND relnamespace = 'audit'::regnamespace) LOOP
        n := n + 1;
        part := base || '_' || n;
    END LOOP;
    EXECUTE format('CREATE TABLE audit.%I (LIKE audit.predictions INCLUDING DEFAULTS)', part);
    BEGIN
        EXECUTE format('ALTER TABLE audit.predictions ATTACH PARTITION audit.%I '
                       'FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
    EXCEPTION WHEN invalid_object_definition THEN  -- "would overlap partition ..."
        EXECUTE format('DROP TABLE audit.%I', part);
        RETURN NULL;
    END;
    RETURN part;
END
$fn$;
