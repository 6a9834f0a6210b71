"""The shipper's metrics (merged into the edge's ``/metrics`` through the
host's multiprocess directory; see ``service.metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from audit.shipper import ShipStats

PENDING = Gauge("falcon_wal_pending_bytes", "WAL bytes written but not yet shipped.",
                multiprocess_mode="livemax")
LAG = Gauge("falcon_ship_lag_seconds",
            "Age of the oldest audit record not yet in PostgreSQL (0 when caught up).",
            multiprocess_mode="livemax")
STREAMS = Gauge("falcon_wal_streams", "WAL streams on disk.", multiprocess_mode="livemax")
SHIPPED = Counter("falcon_shipped_records_total", "Audit records read from the WAL and shipped.")
INSERTED = Counter("falcon_audit_rows_inserted_total", "Audit rows inserted into PostgreSQL.")
ERRORS = Counter("falcon_ship_errors_total", "Shipping passes that stopped on an error.")
QUARANTINED = Counter("falcon_audit_quarantined_total",
                      "Audit records PostgreSQL refused, landed in audit.quarantine instead.")
POSTGRES_UP = Gauge("falcon_ship_postgres_up",
                    "1 when the last pass reached PostgreSQL, 0 when it failed.",
                    multiprocess_mode="livemax")


def observe(stats: ShipStats) -> None:
    PENDING.set(stats.pending_bytes)
    LAG.set(stats.lag_seconds)
    STREAMS.set(stats.streams)
    SHIPPED.inc(stats.shipped)
    INSERTED.inc(stats.inserted)
    QUARANTINED.inc(stats.quarantined)
    if stats.errors:
        ERRORS.inc()
    POSTGRES_UP.set(0 if stats.errors else 1)
