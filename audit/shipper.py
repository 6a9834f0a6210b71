"""The shipper: tails every WAL stream into PostgreSQL, each record exactly once.

For each stream, from its position (kept in PostgreSQL, in ``audit.ship_positions``):
read a batch of records, then in ONE transaction insert them (keyed by
request id and time, ``ON CONFLICT DO NOTHING``) and store the position after
the batch. A crash anywhere — of the shipper, of the edge, of PostgreSQL —
leaves the position and the rows consistent: the next run resumes exactly
after the last committed batch, and a batch that was re-sent after an
ambiguous commit inserts nothing twice.

A stream whose writer is dead (its process exited or was killed) has its torn
tail cut (``StreamReader.recover``), is drained, and then removed. Segments
wholly before the shipped position are removed as the shipper goes.

PostgreSQL failures go through a pybreaker breaker: while it is open the
shipper waits instead of hammering a database that is down; the WAL grows
meanwhile (the edge's disk-space guard bounds it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pybreaker

from audit.record import AuditRecord, RecordError
from audit.store import PgStore, StoreError, StoreRejected
from audit.wal import START, Position, StreamReader, WalError, list_streams

log = logging.getLogger(__name__)


class ReshipPastPosition(ValueError):
    """``reship --from`` names a position past what was shipped: refused, since
    shipping from there would skip (and then delete) records never landed."""


@dataclass
class ShipStats:
    """What one pass saw; the metrics are derived from it."""

    shipped: int = 0
    inserted: int = 0
    skipped: int = 0
    pending_bytes: int = 0     # not yet shipped, over every stream
    lag_seconds: float = 0.0   # age of the oldest record not yet shipped
    streams: int = 0
    removed_streams: int = 0
    quarantined: int = 0       # records the database refused, landed in audit.quarantine
    errors: list[str] = field(default_factory=list)


class Shipper:
    """Ships every stream under ``wal_dir`` to ``store``. Not thread-safe: one
    shipper per WAL directory (per host)."""

    def __init__(self, wal_dir: Path, store: PgStore, *, batch: int = 1000,
                 breaker: pybreaker.CircuitBreaker | None = None,
                 clock: Callable[[], float] = time.time,
                 heartbeat: Callable[[], None] = lambda: None) -> None:
        """``heartbeat`` is called after every committed batch (the systemd
        watchdog ping: a catch-up after a long outage is one long pass)."""
        self.heartbeat = heartbeat
        self.wal_dir = wal_dir
        self.store = store
        self.batch = batch
        self.breaker = breaker or pybreaker.CircuitBreaker(
            fail_max=3, reset_timeout=5, exclude=[StoreRejected], name="postgres")
        self.clock = clock
        self._positions: dict[str, Position] = {}
        self._refused: dict[str, str] = {}  # stream -> why its last batch was refused

    def ship_once(self) -> ShipStats:
        """One pass over every stream: ship what is there, clean up what is done."""
        stats = ShipStats()
        for stream in list_streams(self.wal_dir):
            stats.streams += 1
            try:
                self._ship_stream(stream, stats)
                self._refused.pop(stream, None)
            except StoreRejected as exc:  # the database refused this stream's batch: its
                # problem, retried every pass; the other streams go on shipping
                self._positions.pop(stream, None)
                if self._refused.get(stream) != str(exc):  # logged once per new reason
                    log.error("stream %s: batch refused by the audit database (retried every "
                              "pass): %s", stream, exc)
                    self._refused[stream] = str(exc)
                stats.errors.append(f"{stream}: {exc}")
            except (StoreError, pybreaker.CircuitBreakerError) as exc:
                self._positions.pop(stream, None)  # re-read it: the commit may or may not be in
                stats.errors.append(f"{stream}: {exc}")
                break  # the database is the problem, not this stream: stop the pass
            except (WalError, OSError) as exc:  # this stream's problem (corrupt, permissions)
                log.error("stream %s cannot be shipped: %s", stream, exc)
                stats.errors.append(f"{stream}: {exc}")
        self._measure(stats)
        return stats

    def _measure(self, stats: ShipStats) -> None:
        """Pending bytes, and lag = age of the oldest record not yet shipped
        (from the last known positions: works while PostgreSQL is down)."""
        stats.pending_bytes, stats.lag_seconds = 0, 0.0
        now = self.clock()
        for stream in list_streams(self.wal_dir):
            reader = StreamReader(self.wal_dir, stream)
            pos = self._positions.get(stream, START)
            try:
                stats.pending_bytes += reader.pending_bytes(pos)
                first = reader.read(pos, max_records=1)
                if first:
                    age = now - AuditRecord.from_payload(first[0][1]).ts
                    stats.lag_seconds = max(stats.lag_seconds, age)
            except (WalError, RecordError, FileNotFoundError):
                continue

    def _start(self, stream: str, reader: StreamReader) -> Position:
        pos = self._positions.get(stream)
        if pos is None:
            stored = self.breaker.call(self.store.position, stream)
            pos = Position(*stored) if stored else START
        return pos

    def _ship_stream(self, stream: str, stats: ShipStats) -> None:
        reader = StreamReader(self.wal_dir, stream)
        alive = reader.writer_alive()
        if not alive:
            reader.recover()
        pos = self._start(stream, reader)
        while True:
            batch = reader.read(pos, max_records=self.batch)
            if not batch:
                break
            self._land(stream, batch, stats)
            end = batch[-1][0]
            stats.shipped += len(batch)
            self.heartbeat()
            pos = self._positions[stream] = end
            if len(batch) < self.batch:
                break
        removed = reader.remove_through(pos)  # the whole stream once its dead writer is drained
        if reader.dir in removed:
            self._positions.pop(stream, None)
            stats.removed_streams += 1

    def _land(self, stream: str, batch: list[tuple[Position, bytes]], stats: ShipStats) -> None:
        """Write ``batch`` (its rows and the position after it, in one transaction).
        A batch the database refuses is split in halves, each landed the same way,
        down to the one record it refuses: that one goes to ``audit.quarantine`` with
        the reason, and the rest ship (issue 15 item 6). Raises StoreError for the
        database being unreachable (nothing after the last landed half is written)."""
        records = self._decode(stream, batch, stats)
        end = tuple(batch[-1][0])
        try:
            stats.inserted += self.breaker.call(self.store.write, stream, records, end)
            return
        except StoreRejected as exc:
            if not exc.about_the_data:  # the database's state, not a record: retried
                raise
            if len(batch) > 1:
                half = len(batch) // 2
                self._land(stream, batch[:half], stats)
                self._land(stream, batch[half:], stats)
                return
            reason = str(exc)
        self.breaker.call(self.store.quarantine, stream, end, batch[0][1], reason)
        stats.quarantined += 1
        log.error("stream %s: the record ending at %s was refused by the audit database and "
                  "is in audit.quarantine: %s", stream, end, reason)

    def _decode(self, stream: str, batch: list[tuple[Position, bytes]],
                stats: ShipStats) -> list[AuditRecord]:
        records = []
        for end, payload in batch:
            try:
                records.append(AuditRecord.from_payload(payload))
            except RecordError as exc:  # CRC-valid but not a record: a bug; never ship garbage
                log.error("stream %s record ending at %s is not an audit record (%s): skipped",
                          stream, tuple(end), exc)
                stats.skipped += 1
        return records

    def reship(self, stream: str, start: Position) -> ShipStats:
        """Ship ``stream`` again from ``start`` (an operator's recovery): records
        already in the table are skipped, so nothing is duplicated; the stored
        position ends at the stream's end, as after normal shipping. Raises
        :class:`ReshipPastPosition` for a ``start`` past the shipped position (the
        records between would be skipped, and their segments deleted once shipped
        past), leaving everything as it was."""
        stored = self.breaker.call(self.store.position, stream)
        shipped = Position(*stored) if stored else START
        if tuple(start) > tuple(shipped):
            raise ReshipPastPosition(
                f"{stream}: --from {start[0]}:{start[1]} is past the shipped position "
                f"{shipped[0]}:{shipped[1]}; the records between are not in the table yet "
                f"(use --from {shipped[0]}:{shipped[1]} or earlier)")
        stats = ShipStats(streams=1)
        self._positions[stream] = start
        self._ship_stream(stream, stats)
        return stats

    def run(self, stop: threading.Event, poll_s: float = 0.2,
            on_pass: Callable[[ShipStats], None] | None = None) -> None:
        """Ship until ``stop`` is set; sleep ``poll_s`` when idle, longer when failing."""
        while not stop.is_set():
            stats = self.ship_once()
            if on_pass is not None:
                on_pass(stats)
            if stats.errors and self.breaker.current_state == pybreaker.STATE_OPEN:
                stop.wait(min(5.0, max(poll_s, 1.0)))
            elif stats.shipped == 0:
                stop.wait(poll_s)
