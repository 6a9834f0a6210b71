"""The reconciler's metrics (merged into the edge's ``/metrics`` through the
host's multiprocess directory; see ``service.metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

REVISION = Gauge("falcon_fleet_revision",
                 "The fleet's desired revision this host's reconciler last read.",
                 multiprocess_mode="livemax")
CONVERGED = Gauge("falcon_fleet_converged",
                  "1 when this host runs the desired state its reconciler last read, else 0.",
                  multiprocess_mode="livemax")
POSTGRES_UP = Gauge("falcon_fleet_postgres_up",
                    "1 when the reconciler's last pass reached PostgreSQL, 0 when it failed.",
                    multiprocess_mode="livemax")
STEPS = Counter("falcon_fleet_steps_total", "Daemon steps the reconciler applied, by op.",
                ["op"])
NOT_CONVERGED = Counter("falcon_fleet_failed_passes_total",
                        "Reconciler passes that ended short of the desired state (a step "
                        "refused, the daemon unreachable).")
POSTGRES_DOWN = Counter("falcon_fleet_postgres_unavailable_total",
                        "Reconciler passes that could not reach PostgreSQL (the host kept "
                        "its last state).")
ERRORS = Counter("falcon_fleet_errors_total",
                 "Reconciler passes that failed on an error other than PostgreSQL being "
                 "unreachable (PostgreSQL refused, schema not current, a bug), by kind; "
                 "the reconciler backs off and retries.", ["kind"])
