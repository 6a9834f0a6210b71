-- 0004: the audit key gains the front's per-request key.
--
-- (request_id, ts) alone was not unique per request: request_id is the
-- client's X-Request-Id when it sends one, and ts — HAProxy's accept time — has
-- the resolution of HAProxy's event-loop clock (many requests share a value).
-- Two different requests with one client id in the same tick collided, and
-- ON CONFLICT DO NOTHING dropped the second: a served prediction without its
-- row. request_key is HAProxy's unique id for the HTTP request (set on every
-- request, never taken from the client), the same when HAProxy re-sends it to
-- another edge: (request_id, ts, request_key) is one row per request, and a
-- request two edges logged (the first died before answering) is still one.
-- Rows shipped before keep '' (they were keyed without it).
--
-- NOTE: rebuilding the primary key indexes every partition; on a large table
-- run it in a quiet hour (the shippers apply it at start-up under the
-- migration lock; every shipper must be of this version, since earlier ones
-- name the old ON CONFLICT target for events).

ALTER TABLE audit.predictions ADD COLUMN request_key text NOT NULL DEFAULT '';
ALTER TABLE audit.predictions DROP CONSTRAINT predictions_pkey;
ALTER TABLE audit.predictions ADD PRIMARY KEY (request_id, ts, request_key);

ALTER TABLE audit.events ADD COLUMN request_key text NOT NULL DEFAULT '';
DROP INDEX audit.events_request;
CREATE UNIQUE INDEX events_request ON audit.events (request_id, ts, request_key);
