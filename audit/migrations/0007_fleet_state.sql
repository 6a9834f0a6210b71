-- 0007: the fleet's declarative model state (fleet/store.py), kept here so it
-- is applied by the one migration sequence (audit/migrate.py) after the
-- audit.events table it records its changes in.
--
-- fleet.head       one row: the current revision (writers lock it: FOR UPDATE)
-- fleet.desired    per managed model: the versions every host should load, the
--                  traffic split, the revision whose write made that split
--                  (origin: what a rollback steps back from) and the revision
--                  of the model's last change
-- fleet.revisions  the history: every change once, who, when, old -> new
-- fleet.hosts      what each host's reconciler last saw running (actual), the
--                  revision it last converged to, its error, its heartbeat
--
-- A write commits its revision, the new desired row and its audit.events row in
-- one transaction, then NOTIFY fleet_changed wakes every reconciler.

CREATE SCHEMA IF NOT EXISTS fleet;

CREATE TABLE fleet.head (
    one      boolean PRIMARY KEY DEFAULT true CHECK (one),
    revision bigint  NOT NULL
);
INSERT INTO fleet.head (revision) VALUES (0);

CREATE TABLE fleet.desired (
    model    text   PRIMARY KEY,
    versions text[] NOT NULL,
    split    jsonb  NOT NULL,
    origin   bigint NOT NULL,
    revision bigint NOT NULL
);

CREATE TABLE fleet.revisions (
    revision bigint      PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text        NOT NULL,
    op       text        NOT NULL,
    model    text        NOT NULL,
    old      jsonb,
    new      jsonb       NOT NULL,
    origin   bigint      NOT NULL
);
CREATE INDEX revisions_model ON fleet.revisions (model, revision);

CREATE TABLE fleet.hosts (
    host      text        PRIMARY KEY,
    seen      bigint      NOT NULL DEFAULT 0,
    converged bigint      NOT NULL DEFAULT 0,
    actual    jsonb       NOT NULL DEFAULT '{}',
    error     text        NOT NULL DEFAULT '',
    interval_s float8     NOT NULL DEFAULT 10,
    heartbeat timestamptz NOT NULL DEFAULT now()
);
