"""Tracing and exemplars: OpenTelemetry spans over OTLP/HTTP, shared by the edge and the daemon.

A concern of neither process, so a package of its own (``docs/architecture.md``):
``edge`` and ``daemon`` import it; ``wire`` and ``shm`` do not.

- :mod:`telemetry.w3c`: ``traceparent`` parsing and formatting (no OpenTelemetry import).
- :mod:`telemetry.tracing`: :class:`~telemetry.tracing.Tracing`, one process's
  tracing: off by default (``tracing.endpoint`` empty: no span, no SDK import),
  started after the fork, spans passed explicitly.
- :mod:`telemetry.export`: the bounded, counted export to the collector.
- :mod:`telemetry.exemplars`: trace ids on latency histograms, also in
  prometheus-client's multiprocess mode.
- :mod:`telemetry.metrics`: the plumbing's own metrics (spans dropped, exported).

How an operator turns it on and what the spans are: ``docs/operations.md`` "Tracing".
"""

from telemetry.tracing import Tracing, sampled_trace_id, trace_id_of, traceparent_of

__all__ = ["Tracing", "sampled_trace_id", "trace_id_of", "traceparent_of"]
