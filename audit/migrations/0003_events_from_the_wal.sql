-- 0003: management events land in audit.events, not among the predictions.
--
-- A traffic split or a rollback is an audit record in the WAL like a
-- prediction (face 'admin', what changed in extra: {"event", "old", "new"},
-- who in api_key_id), so it ships through the same exactly-once path. The
-- shipper writes such records here, keyed like predictions — (request_id, ts)
-- — so a re-shipped event lands once. Rows 0001 and 0002 left in
-- audit.predictions with face 'admin' move here.

ALTER TABLE audit.events
    ADD COLUMN request_id text,
    ADD COLUMN host       text,
    ADD COLUMN stream     text,
    ADD COLUMN model      text,
    ADD COLUMN trace_id   text;

CREATE UNIQUE INDEX events_request ON audit.events (request_id, ts);

INSERT INTO audit.events (ts, kind, actor, detail, request_id, host, stream, model, trace_id)
SELECT ts, coalesce(extra->>'event', 'admin'), api_key_id, extra - 'event', request_id, host,
       stream, model, trace_id
FROM audit.predictions WHERE face = 'admin'
ON CONFLICT (request_id, ts) DO NOTHING;

DELETE FROM audit.predictions WHERE face = 'admin';
