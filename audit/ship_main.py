"""The shipper process (``falconctl ship``): migrations, then ship until SIGTERM.

It tells systemd ``READY=1`` once the schema is in place (it keeps retrying,
with a growing delay, while PostgreSQL is unreachable at start), pings the
watchdog after every pass, and on SIGTERM finishes the batch in hand and exits.
While it applies migrations on a live connection it asks systemd for more
start time (``EXTEND_TIMEOUT_USEC`` every :data:`EXTEND_EVERY_S`), for at most
:data:`MIGRATE_EXTEND_MAX_S` in all, so a long migration (0004 rebuilds the
primary key of every day's partition) is not killed half-way by the unit's
``TimeoutStartSec``, and a migration stuck on a dead connection still is, in
the end. While PostgreSQL cannot be reached nothing is extended: the unit's
start gives up after ``TimeoutStartSec`` and systemd restarts it, as before.
That bound matters: ``falcon.target`` wants the shipper, and a target's start
waits for the units it wants (an implicit ``After=``).
PostgreSQL going away later is not fatal: the breaker opens, the WAL grows,
and shipping resumes when the database returns.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from audit import metrics
from audit.shipper import Shipper, ShipStats
from audit.store import PgStore, StoreError
from service.sdnotify import notify, watchdog_interval
from settings import Settings

log = logging.getLogger("shipper")

EXTEND_EVERY_S = 10.0
EXTEND_BY_S = 30.0
MIGRATE_EXTEND_MAX_S = 1800.0


def migrate_until_ready(store: PgStore, stop: threading.Event,
                        extend_max_s: float = MIGRATE_EXTEND_MAX_S) -> bool:
    delay = 0.5
    extend_until = time.monotonic() + extend_max_s
    while not stop.is_set():
        try:
            store.connect()  # unreachable: no extension (see the module docstring)
            with extending_start(extend_until):
                applied = store.migrate()
        except StoreError as exc:
            log.warning("PostgreSQL not ready (%s); retrying in %.1fs", exc, delay)
            notify(f"STATUS=waiting for PostgreSQL: {str(exc)[:200]}")
            stop.wait(delay)
            delay = min(delay * 2, 10.0)
            continue
        if applied:
            log.info("applied migrations %s", applied)
        return True
    return False


@contextmanager
def extending_start(until: float, every: float = EXTEND_EVERY_S) -> Iterator[None]:
    """While in the block, ask systemd for EXTEND_BY_S more start time every
    ``every`` seconds, but not past ``until`` (a ``time.monotonic()`` time)."""
    done = threading.Event()

    def extend() -> None:
        while time.monotonic() < until:
            try:
                notify(f"EXTEND_TIMEOUT_USEC={int(EXTEND_BY_S * 1e6)}\n"
                       "STATUS=applying audit schema migrations")
            except OSError as exc:
                log.warning("cannot extend the start timeout: %s", exc)
                return
            if done.wait(every):
                return
        log.warning("migrations still running when the start-time budget ran out: systemd's "
                    "start timeout applies from here (a longer migration: run `falconctl ship` "
                    "by hand, outside systemd, once)")

    thread = threading.Thread(target=extend, daemon=True, name="extend-start")
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


class _Progress:
    """Logs what the passes did, at most every few seconds, and pings the
    watchdog after every pass and every batch."""

    def __init__(self) -> None:
        self.last_log = 0.0
        self.shipped = 0
        self.watchdog = watchdog_interval() is not None

    def ping(self) -> None:
        if self.watchdog:
            notify("WATCHDOG=1")

    def __call__(self, stats: ShipStats) -> None:
        metrics.observe(stats)
        self.ping()
        self.shipped += stats.shipped
        now = time.monotonic()
        if stats.errors and now - self.last_log > 5:
            log.warning("shipping stalled: %s", stats.errors[0])
            self.last_log = now
        elif self.shipped and now - self.last_log > 10:
            log.info("shipped %d records; %d bytes pending, lag %.1fs", self.shipped,
                     stats.pending_bytes, stats.lag_seconds)
            self.shipped, self.last_log = 0, now


def run(settings: Settings, dsn: str) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda n, f: stop.set())
    wal_dir = Path(settings.wal_dir)
    wal_dir.mkdir(parents=True, exist_ok=True)
    store = PgStore(dsn)
    if not migrate_until_ready(store, stop):
        return 0
    progress = _Progress()
    shipper = Shipper(wal_dir, store, batch=settings.audit.ship_batch,
                      heartbeat=progress.ping)
    notify("READY=1\nSTATUS=shipping")
    log.info("shipping %s", wal_dir)
    shipper.run(stop, poll_s=settings.audit.ship_poll_ms / 1000.0, on_pass=progress)
    notify("STOPPING=1")
    store.close()
    log.info("stopped")
    return 0
