"""The shipper process (``falconctl ship``): migrations, then ship until SIGTERM.

It tells systemd ``READY=1`` once the schema is in place (it keeps retrying,
with a growing delay, while PostgreSQL is unreachable at start), pings the
watchdog after every pass, and on SIGTERM finishes the batch in hand and exits.
Until READY it keeps asking systemd for more start time
(``EXTEND_TIMEOUT_USEC``, every :data:`EXTEND_EVERY_S`), so neither a long
migration (0004 rebuilds the primary key of every day's partition) nor a
database that is down at boot runs into the unit's ``TimeoutStartSec`` and a
kill in the middle; ``systemctl status`` shows what it waits for. Nothing is
ordered after the shipper, so a slow start holds up no other unit.
PostgreSQL going away later is not fatal: the breaker opens, the WAL grows,
and shipping resumes when the database returns.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

from audit import metrics
from audit.shipper import Shipper, ShipStats
from audit.store import PgStore, StoreError
from service.sdnotify import notify, watchdog_interval
from settings import Settings

log = logging.getLogger("shipper")

EXTEND_EVERY_S = 10.0
EXTEND_BY_S = 30.0


def migrate_until_ready(store: PgStore, stop: threading.Event) -> bool:
    delay = 0.5
    done = threading.Event()
    extender = threading.Thread(target=_extend_start, args=(done,), daemon=True,
                                name="extend-start")
    extender.start()
    try:
        while not stop.is_set():
            try:
                applied = store.migrate()
            except StoreError as exc:
                log.warning("PostgreSQL not ready (%s); retrying in %.1fs", exc, delay)
                stop.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            if applied:
                log.info("applied migrations %s", applied)
            return True
        return False
    finally:
        done.set()
        extender.join()


def _extend_start(done: threading.Event) -> None:
    """Until ``done``: ask systemd for EXTEND_BY_S more start time, every EXTEND_EVERY_S."""
    while True:
        notify(f"EXTEND_TIMEOUT_USEC={int(EXTEND_BY_S * 1e6)}\n"
               "STATUS=applying migrations / waiting for PostgreSQL")
        if done.wait(EXTEND_EVERY_S):
            return


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
