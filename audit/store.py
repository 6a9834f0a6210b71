"""The audit table in PostgreSQL: batches of records in, exactly once.

:class:`PgStore` is what the shipper writes through. One :meth:`PgStore.write`
is one transaction::

    ensure_partition(day) for each UTC day in the batch (and the day after)
    COPY rows -> pg_temp.audit_staging        (binary COPY, see below)
    INSERT INTO audit.predictions SELECT ... FROM staging ON CONFLICT DO NOTHING
    upsert audit.ship_positions(stream) = end
    COMMIT

so the rows and the stream's position commit together (docs/conventions.md, "Position
and data") and a batch shipped twice lands once (key: request_id, ts, request_key).
Partitions are ensured before
any row is inserted (there is no DEFAULT partition: migration 0002 says why).

Binary COPY layout (PostgreSQL "COPY BINARY", as psycopg's ``_copy_base.py``)::

    header   "PGCOPY\\n\\xff\\r\\n\\0"  int32 flags = 0  int32 extension length = 0
    tuple    int16 field count (17), then per field:
               int32 length (-1 = NULL), then that many bytes:
               text        UTF-8
               timestamptz int64 microseconds since 2000-01-01 00:00 UTC
               jsonb       version byte 1, then JSON text (orjson)
               boolean     1 byte, 0 or 1
               float8      IEEE 754 double
               bytea       the raw bytes
    trailer  int16 -1

All integers big-endian; the structs are built once below.

JSONB never holds NaN/Infinity: ``outputs`` arrive cleaned by
:meth:`AuditRecord.to_row`; a non-finite float anywhere in ``input_meta``,
``labels`` or ``extra`` rejects the batch (:class:`StoreRejected`).
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Any

import orjson
import psycopg2

from audit import migrate as migrations
from audit.record import AuditRecord

# -- errors ---------------------------------------------------------------------------


class StoreError(Exception):
    """Root of the audit store's errors."""


class StoreUnavailable(StoreError):
    """PostgreSQL cannot be reached or dropped the connection (refused, server
    restarted, backend terminated, timeouts, deadlock, disk full). Retryable: the
    transaction was rolled back — or, if the connection died during COMMIT, may
    have committed; writing the same batch again is safe either way."""


class StoreRejected(StoreError):
    """A record or batch the database (or our checks before it) refuses: a wrong
    type, a NaN in JSONB, a NUL in text, a missing schema. A bug, not retryable;
    nothing of the batch was written. ``pgcode`` is the database's SQLSTATE (None:
    our own checks refused it)."""

    def __init__(self, message: str, pgcode: str | None = None) -> None:
        super().__init__(message)
        self.pgcode = pgcode

    @property
    def about_the_data(self) -> bool:
        """True when the refusal is about the values sent (our checks, or SQLSTATE
        class 22 data exception / 23 integrity violation), not the database's state
        (a missing table, a permission): only such a record may be quarantined."""
        return self.pgcode is None or self.pgcode[:2] in ("22", "23")


# -- binary COPY encoding ---------------------------------------------------------------

COLUMNS = ("request_id", "ts", "host", "stream", "model", "version", "face", "input_digest",
           "input_meta", "outputs", "labels", "cached", "latency_ms", "inputs", "api_key_id",
           "trace_id", "extra", "request_key")
NULLABLE = frozenset({"labels", "inputs", "api_key_id", "trace_id"})

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
_FIELD_COUNT = struct.pack(">h", len(COLUMNS))
_LEN = struct.Struct(">i")
_LEN_I8 = struct.Struct(">iq")   # length 8 + int64
_LEN_F8 = struct.Struct(">id")   # length 8 + float8
_NULL = _LEN.pack(-1)
_BOOL = {True: _LEN.pack(1) + b"\x01", False: _LEN.pack(1) + b"\x00"}
_JSONB_VERSION = b"\x01"

PG_EPOCH = date(2000, 1, 1)
PG_EPOCH_US = 946_684_800 * 1_000_000   # 2000-01-01 in unix microseconds
US_PER_DAY = 86_400 * 1_000_000
TS_MAX = 253_402_214_400                # 9999-12-31: partition names have 4-digit years


def _text(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"expected str, got {type(value).__name__}")
    data = value.encode("utf-8")
    return _LEN.pack(len(data)) + data


def _timestamptz(micros: Any) -> bytes:
    return _LEN_I8.pack(8, micros)


def _jsonb(value: Any) -> bytes:
    data = orjson.dumps(value)
    return _LEN.pack(len(data) + 1) + _JSONB_VERSION + data


def _strict_jsonb(value: Any) -> bytes:
    where = nonfinite_path(value)
    if where is not None:
        raise ValueError(f"non-finite float at {where} (JSONB has no NaN/Infinity)")
    return _jsonb(value)


def _boolean(value: Any) -> bytes:
    if not isinstance(value, bool):
        raise TypeError(f"expected bool, got {type(value).__name__}")
    return _BOOL[value]


def _float8(value: Any) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return _LEN_F8.pack(8, value)


def _bytea(value: Any) -> bytes:
    data = bytes(value)  # bytes, bytearray, memoryview; TypeError for str
    return _LEN.pack(len(data)) + data


ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "request_id": _text, "ts": _timestamptz, "host": _text, "stream": _text, "model": _text,
    "version": _text, "face": _text, "input_digest": _text, "input_meta": _strict_jsonb,
    "outputs": _jsonb, "labels": _strict_jsonb, "cached": _boolean, "latency_ms": _float8,
    "inputs": _bytea, "api_key_id": _text, "trace_id": _text, "extra": _strict_jsonb,
    "request_key": _text,
}
_SPEC = tuple((name, ENCODERS[name], name in NULLABLE) for name in COLUMNS)


def nonfinite_path(value: Any) -> str | None:
    """Where ``value`` holds a NaN or infinite float (a JSON path), else None."""
    keys = _nonfinite_keys(value)
    return None if keys is None else "$" + "".join(f"[{k!r}]" for k in reversed(keys))


def _nonfinite_keys(value: Any) -> list[Any] | None:
    """The keys down to a non-finite float in ``value``, innermost first."""
    if isinstance(value, float):
        return None if math.isfinite(value) else []
    items: Iterable[tuple[Any, Any]]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(item, str | int):  # PERF: skip the call for the common leaves
            continue
        keys = _nonfinite_keys(item)
        if keys is not None:
            keys.append(key)
            return keys
    return None


def pg_micros(ts: Any) -> int:
    """Unix seconds -> PostgreSQL timestamptz (microseconds since 2000-01-01 UTC)."""
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise TypeError(f"expected unix seconds, got {type(ts).__name__}")
    if not (math.isfinite(ts) and 0 <= ts < TS_MAX):
        raise ValueError(f"{ts!r} is not a time between 1970 and 9999-12-30")
    return round(ts * 1_000_000) - PG_EPOCH_US


def utc_day(micros: int) -> date:
    """The UTC day of a timestamptz in PostgreSQL microseconds (the partition)."""
    return PG_EPOCH + timedelta(days=micros // US_PER_DAY)


def encode_row(row: dict[str, Any]) -> bytes:
    """One binary COPY tuple; ``row["ts"]`` already in PostgreSQL microseconds."""
    parts = [_FIELD_COUNT]
    name = ""
    try:
        for name, encode, nullable in _SPEC:
            value = row[name]
            if value is not None:
                parts.append(encode(value))
            elif nullable:
                parts.append(_NULL)
            else:
                raise ValueError("is null")
    except (TypeError, ValueError, OverflowError, struct.error) as exc:
        raise StoreRejected(f"record {row.get('request_id')!r}: {name}: {exc}") from None
    return b"".join(parts)


def encode_batch(stream: str, records: Sequence[AuditRecord]) -> tuple[bytes, list[date]]:
    """The binary COPY stream for ``records`` and the UTC days they fall on."""
    parts = [COPY_HEADER]
    days = set()
    for record in records:
        row = record.to_row()
        try:
            row["ts"] = pg_micros(row["ts"])
        except (TypeError, ValueError) as exc:
            raise StoreRejected(f"record {record.request_id!r}: ts: {exc}") from None
        row["stream"] = stream
        days.add(utc_day(row["ts"]))
        parts.append(encode_row(row))
    parts.append(COPY_TRAILER)
    return b"".join(parts), sorted(days)


# -- the store ----------------------------------------------------------------------------

_COLS = ", ".join(f'"{c}"' for c in COLUMNS)
CREATE_STAGING = ("CREATE TEMP TABLE IF NOT EXISTS audit_staging "
                  "(LIKE audit.predictions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
COPY_STAGING = f"COPY pg_temp.audit_staging ({_COLS}) FROM STDIN WITH (FORMAT binary)"
INSERT_ROWS = (f"INSERT INTO audit.predictions ({_COLS}) SELECT {_COLS} "
               "FROM pg_temp.audit_staging ON CONFLICT DO NOTHING")
ENSURE_PARTITIONS = "SELECT audit.ensure_partition(d) FROM unnest(%s::date[]) AS d"
UPSERT_POSITION = """
INSERT INTO audit.ship_positions (stream, segment, "offset", updated_at)
VALUES (%s, %s, %s, now())
ON CONFLICT (stream) DO UPDATE
SET segment = EXCLUDED.segment, "offset" = EXCLUDED."offset", updated_at = EXCLUDED.updated_at
"""
COPY_CHUNK = 1 << 20
# Management events (face "admin": traffic splits, rollbacks) go to audit.events
# (migrations 0003, 0004), keyed like predictions so a re-shipped one lands once.
ADMIN_FACE = "admin"
INSERT_EVENT = """
INSERT INTO audit.events (ts, kind, actor, detail, request_id, host, stream, model, trace_id,
                          request_key)
VALUES (timestamptz '2000-01-01 00:00:00+00' + %s * interval '1 microsecond',
        %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (request_id, ts, request_key) DO NOTHING
"""


INSERT_QUARANTINE = """
INSERT INTO audit.quarantine (stream, segment, "offset", reason, payload)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (stream, segment, "offset") DO NOTHING
"""


def event_row(stream: str, record: AuditRecord) -> tuple[Any, ...]:
    """The parameters of :data:`INSERT_EVENT` for a management record."""
    try:
        micros = pg_micros(record.ts)
    except (TypeError, ValueError) as exc:
        raise StoreRejected(f"event {record.request_id!r}: ts: {exc}") from None
    detail = {k: v for k, v in record.extra.items() if k != "event"}
    where = nonfinite_path(detail)
    if where is not None:
        raise StoreRejected(f"event {record.request_id!r}: non-finite float at {where}")
    return (micros, str(record.extra.get("event", ADMIN_FACE)), record.api_key_id,
            orjson.dumps(detail).decode(), record.request_id, record.host, stream,
            record.model, record.trace_id, record.request_key)


def connect(dsn: str) -> Any:
    """The default connection factory: psycopg2 with a connect timeout."""
    return psycopg2.connect(dsn, connect_timeout=10, application_name="falcon-audit")


class PgStore:
    """The audit table behind one lazily opened psycopg2 connection.

    Raises :class:`StoreUnavailable` (connection dropped; reconnects on the next
    call) or :class:`StoreRejected` (transaction rolled back, connection kept);
    :meth:`migrate` also raises :class:`audit.migrate.MigrationError`. Every
    method leaves the connection outside a transaction. Not thread-safe: one
    store per thread.
    """

    def __init__(self, dsn: str, *, connect: Callable[[str], Any] = connect) -> None:
        self._dsn = dsn
        self._connect = connect
        self._conn: Any = None
        self._staging_ready = False

    def __enter__(self) -> PgStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def migrate(self, pending: Sequence[migrations.Migration] | None = None) -> list[int]:
        """Apply pending schema migrations; the versions applied by this call."""
        conn = self._connection()
        try:
            applied = migrations.migrate(conn, pending)
        except psycopg2.Error as exc:
            raise self._failed(exc) from exc
        if applied and self._staging_ready:  # its columns are the old table's
            with self._transaction() as cur:
                cur.execute("DROP TABLE IF EXISTS pg_temp.audit_staging")
            self._staging_ready = False
        return applied

    def position(self, stream: str) -> tuple[int, int] | None:
        """The (segment, offset) shipped so far for ``stream``, None if never."""
        with self._transaction() as cur:
            cur.execute('SELECT segment, "offset" FROM audit.ship_positions WHERE stream = %s',
                        (stream,))
            found = cur.fetchone()
        return (int(found[0]), int(found[1])) if found else None

    def write(self, stream: str, records: Sequence[AuditRecord], end: tuple[int, int]) -> int:
        """Land ``records`` and set ``stream``'s position to ``end``, in one
        transaction; returns the rows inserted (duplicates are skipped).

        The position is set, not maxed: an operator's re-ship may move it back.
        An empty batch only moves the position."""
        segment, offset = _check_position(end)
        predictions = [r for r in records if r.face != ADMIN_FACE]
        events = [event_row(stream, r) for r in records if r.face == ADMIN_FACE]
        payload, days = encode_batch(stream, predictions)
        with self._transaction() as cur:
            inserted = 0
            if predictions:
                cur.execute(ENSURE_PARTITIONS, (days + [days[-1] + timedelta(days=1)],))
                self._load(cur, payload)
                cur.execute(INSERT_ROWS)
                inserted = cur.rowcount
            for event in events:
                cur.execute(INSERT_EVENT, event)
                inserted += cur.rowcount
            cur.execute(UPSERT_POSITION, (stream, segment, offset))
        self._staging_ready = True
        return int(inserted)

    def quarantine(self, stream: str, end: tuple[int, int], payload: bytes, reason: str) -> int:
        """Land one refused record in ``audit.quarantine`` (where it ended in the
        WAL, the database's reason, its payload) and set ``stream``'s position to
        ``end``, in one transaction; returns 1, or 0 if it was there already."""
        segment, offset = _check_position(end)
        with self._transaction() as cur:
            cur.execute(INSERT_QUARANTINE, (stream, segment, offset,
                                            reason.replace("\x00", "\\0"), payload))
            landed = cur.rowcount
            cur.execute(UPSERT_POSITION, (stream, segment, offset))
        return int(landed)

    def count(self) -> int:
        """Rows in ``audit.predictions``."""
        with self._transaction() as cur:
            cur.execute("SELECT count(*) FROM audit.predictions")
            return int(cur.fetchone()[0])

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            conn.close()

    # -- helpers ---------------------------------------------------------------------------

    def _load(self, cur: Any, payload: bytes) -> None:
        """COPY ``payload`` into the session's staging table (created once)."""
        if not self._staging_ready:
            cur.execute(CREATE_STAGING)
        cur.copy_expert(COPY_STAGING, io.BytesIO(payload), size=COPY_CHUNK)

    def connect(self) -> None:
        """Make sure a connection is open; raises :class:`StoreUnavailable`."""
        self._connection()

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            try:
                conn = self._connect(self._dsn)
                conn.set_client_encoding("UTF8")
            except psycopg2.Error as exc:
                raise StoreUnavailable(f"cannot connect to the audit database: {exc}") from exc
            self._conn, self._staging_ready = conn, False
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                yield cur
            conn.commit()
        except psycopg2.Error as exc:
            raise self._failed(exc) from exc
        except BaseException:
            self._rollback()
            raise

    def _failed(self, exc: psycopg2.Error) -> StoreError:
        """Classify ``exc``; drop a dead connection, roll back a live one."""
        if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):
            self.close()
            return StoreUnavailable(f"audit database unavailable: {exc}".strip())
        self._rollback()
        return StoreRejected(f"audit database refused the batch: {exc}".strip(),
                             getattr(exc, "pgcode", None) or "XX000")

    def _rollback(self) -> None:
        try:
            if self._conn is not None and not self._conn.closed:
                self._conn.rollback()
        except psycopg2.Error:
            self.close()


def _check_position(end: Any) -> tuple[int, int]:
    try:
        segment, offset = end
    except (TypeError, ValueError):
        raise StoreRejected(f"position {end!r} is not (segment, offset)") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in end):
        raise StoreRejected(f"position {end!r} is not two non-negative integers")
    return segment, offset
