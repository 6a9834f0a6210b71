-- 0005: audit.ensure_partition trusts what is attached, not what is named.
--
-- Why: an operator who archives a day DETACHes its partition and may keep the
-- table (audit.predictions_YYYYMMDD) around. Until now the function saw that
-- name and returned, so every later batch holding a record of that day (a host
-- whose WAL ships days late, a re-ship from an old position) failed with "no
-- partition of relation ... found for row", and the shipper retried it forever.
--
-- Now a day is present when a partition ATTACHED to audit.predictions (and not
-- half-way through DETACH ... CONCURRENTLY) is named for it
-- (predictions_YYYYMMDD or predictions_YYYYMMDD_N: fast, the usual case), or
-- when attached partitions of any name cover the whole UTC day by their bounds
-- (an archive attached back by hand). Otherwise a new one is created under the
-- first free name of those and attached; a detached table is left alone.
-- A day only partly covered, or one whose partition is pending detach, cannot
-- be repaired here: the function raises an error that says what to do, so the
-- shipper's retries show it in its log instead of failing row by row.
-- Returns the name of the (first) partition holding the day.

-- attached, not pending detach, named `base` or `base_N` (N = 2, 3, ... while such
-- tables exist): exact, indexed lookups, microseconds whatever the retention
CREATE FUNCTION audit.named_partition(base text) RETURNS text
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    part text := base;
    n int := 1;
    rel oid;
BEGIN
    LOOP
        SELECT c.oid INTO rel FROM pg_catalog.pg_class c
        WHERE c.relname = part AND c.relnamespace = 'audit'::regnamespace;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i
                   WHERE i.inhrelid = rel AND i.inhparent = 'audit.predictions'::regclass
                     AND NOT i.inhdetachpending) THEN
            RETURN part;
        END IF;
        n := n + 1;
        part := base || '_' || n;
    END LOOP;
END
$fn$;

-- the first attached partition overlapping [lo, hi) if together they cover all
-- of it; NULL if none overlaps; an error if they cover only part of it
-- (bounds are read back from their text form: ISO and UTC for that, whatever the
-- session's DateStyle and TimeZone; MINVALUE / MAXVALUE are -infinity / infinity)
CREATE FUNCTION audit.covering_partition(lo timestamptz, hi timestamptz) RETURNS text
LANGUAGE plpgsql STABLE
SET DateStyle = 'ISO, YMD' SET TimeZone = 'UTC' AS $fn$
DECLARE
    r record;
    first text;
    reached timestamptz := lo;
    names text[] := '{}';
BEGIN
    FOR r IN
        SELECT name, f, t FROM (
            SELECT c.relname::text AS name,
                   CASE b[1] WHEN 'MINVALUE' THEN '-infinity'::timestamptz
                             ELSE trim(b[1], '''')::timestamptz END AS f,
                   CASE b[2] WHEN 'MAXVALUE' THEN 'infinity'::timestamptz
                             ELSE trim(b[2], '''')::timestamptz END AS t
            FROM pg_catalog.pg_inherits i
            JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
            CROSS JOIN LATERAL regexp_match(
                pg_catalog.pg_get_expr(c.relpartbound, c.oid),
                $re$FROM \((MINVALUE|'[^']*')\) TO \((MAXVALUE|'[^']*')\)$re$) AS b
            WHERE i.inhparent = 'audit.predictions'::regclass AND NOT i.inhdetachpending
              AND b IS NOT NULL
        ) AS bounds
        WHERE f < hi AND t > lo
        ORDER BY f
    LOOP
        first := coalesce(first, r.name);
        names := names || r.name;
        IF r.f > reached THEN
            EXIT;  -- a gap
        END IF;
        reached := greatest(reached, r.t);
    END LOOP;
    IF first IS NULL THEN
        RETURN NULL;
    END IF;
    IF reached >= hi THEN
        RETURN first;
    END IF;
    RAISE EXCEPTION 'audit.predictions: % to % is only partly covered by partition(s) %; '
                    'attach partitions for the rest by hand', lo, hi, array_to_string(names, ', ');
END
$fn$;

CREATE OR REPLACE FUNCTION audit.ensure_partition(day date) RETURNS text
LANGUAGE plpgsql
SET DateStyle = 'ISO, YMD' SET TimeZone = 'UTC' AS $fn$
DECLARE
    base text := 'predictions_' || to_char(day, 'YYYYMMDD');
    part text := audit.named_partition(base);
    n int := 1;
    lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
    pending text;
BEGIN
    IF part IS NOT NULL THEN
        RETURN part;
    END IF;
    part := audit.covering_partition(lo, hi);
    IF part IS NOT NULL THEN
        RETURN part;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('audit.ensure_partition'));
    part := coalesce(audit.named_partition(base), audit.covering_partition(lo, hi));
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
        SELECT string_agg(c.relname, ', ') INTO pending
        FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit.predictions'::regclass AND i.inhdetachpending;
        RAISE EXCEPTION 'audit.predictions: no partition can be attached for % (%)%', day,
            SQLERRM, coalesce('; partitions pending detach: ' || pending
                              || ' (an interrupted DETACH ... CONCURRENTLY: run ALTER TABLE '
                              || 'audit.predictions DETACH PARTITION audit.<name> FINALIZE)', '');
    END;
    RETURN part;
END
$fn$;
