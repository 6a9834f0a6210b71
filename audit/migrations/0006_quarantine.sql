-- 0006: records PostgreSQL refuses go to a quarantine, not in the way.
--
-- A record the database refuses (a NUL byte in a text column, a value out of
-- range) held back every record after it in its stream, for ever. The shipper
-- now splits a refused batch until it finds the record, lands it here with the
-- database's reason (its WAL payload as it was, and where it was), moves the
-- stream's position past it in the same transaction, and ships the rest.
-- falcon_audit_quarantined_total counts them; the FalconAuditQuarantine alert
-- fires on any. Keyed by where the record was, so a re-ship lands it once.

CREATE TABLE audit.quarantine (
    stream text NOT NULL,
    segment bigint NOT NULL,
    "offset" bigint NOT NULL,
    reason text NOT NULL,
    payload bytea NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, segment, "offset")
);
