-- 0001: the audit trail's tables.
--
-- Applied by audit/migrate.py inside one transaction, under its advisory lock,
-- after it has created the schema `audit` and audit.schema_migrations.
-- Never edit this file once released: migrate.py refuses a changed checksum.

CREATE SCHEMA IF NOT EXISTS audit;

-- One row per served prediction (audit.record.AuditRecord.to_row() plus the WAL
-- stream it was shipped from). Partitioned by UTC day of ts: the store calls
-- audit.ensure_partition(day) for every day of a batch BEFORE inserting it, so
-- the DEFAULT partition only ever catches rows inserted by other means.
CREATE TABLE audit.predictions (
    request_id   text             NOT NULL,
    ts           timestamptz      NOT NULL,
    host         text             NOT NULL,
    stream       text             NOT NULL,
    model        text             NOT NULL,
    version      text             NOT NULL,
    face         text             NOT NULL,
    input_digest text             NOT NULL,
    input_meta   jsonb            NOT NULL,
    outputs      jsonb            NOT NULL,
    labels       jsonb,
    cached       boolean          NOT NULL,
    latency_ms   double precision NOT NULL,
    inputs       bytea,
    api_key_id   text,
    trace_id     text,
    extra        jsonb            NOT NULL DEFAULT '{}',
    -- A partitioned table's unique keys must include the partition key. A record
    -- re-shipped after a crash has the same ts, so it still conflicts. The key's
    -- btree (request_id first) also serves lookups by request_id alone.
    PRIMARY KEY (request_id, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE audit.predictions_default PARTITION OF audit.predictions DEFAULT;

-- Time-range scans: rows arrive roughly in ts order, so BRIN is tiny and enough.
CREATE INDEX predictions_ts_brin ON audit.predictions USING brin (ts);
-- "What did model M version V answer between t0 and t1".
CREATE INDEX predictions_model_version_ts ON audit.predictions (model, version, ts);

-- audit.ensure_partition(day): the partition for that UTC day, created if missing.
--
-- Created as a plain table and ATTACHed (SHARE UPDATE EXCLUSIVE on the parent,
-- so concurrent inserts into other days go on), after moving any rows the
-- DEFAULT partition holds for that day into it (attaching would fail otherwise).
-- Concurrent callers serialize on an advisory lock; the existence check is a
-- catalog query (fresh snapshot per statement), so a waiter sees the table the
-- lock holder committed. Returns the partition's name.
CREATE FUNCTION audit.ensure_partition(day date) RETURNS text
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
    EXECUTE format('WITH moved AS (DELETE FROM audit.predictions_default '
                   'WHERE ts >= %L AND ts < %L RETURNING *) '
                   'INSERT INTO audit.%I SELECT * FROM moved', lo, hi, part);
    EXECUTE format('ALTER TABLE audit.predictions ATTACH PARTITION audit.%I '
                   'FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
    RETURN part;
END
$fn$;

-- The shipper's position per WAL stream, written in the same transaction as
-- the rows it shipped: rows and position commit together or not at all.
CREATE TABLE audit.ship_positions (
    stream     text        PRIMARY KEY,
    segment    bigint      NOT NULL,
    "offset"   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Operational events (traffic split changes, loads, rollbacks, ...).
CREATE TABLE audit.events (
    id     bigserial   PRIMARY KEY,
    ts     timestamptz NOT NULL DEFAULT now(),
    kind   text        NOT NULL,
    actor  text,
    detail jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX events_ts ON audit.events (ts);
