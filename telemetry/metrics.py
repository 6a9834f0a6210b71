"""The tracing plumbing's own metrics (one process's; merged like every other
through the host's multiprocess directory, see ``service.metrics``)."""

from __future__ import annotations

from prometheus_client import Counter

SPANS_DROPPED = Counter("falcon_trace_spans_dropped_total",
                        "Ended spans that never reached the collector: 'queue_full' (the "
                        "process's bounded span queue was full), 'export_failed' (the "
                        "collector was down, slow or refused them).", ["reason"])
SPANS_EXPORTED = Counter("falcon_trace_spans_exported_total",
                         "Spans the collector accepted.")
