"""Span export that never makes a request wait, and counts what it loses.

Usage (what :meth:`telemetry.tracing.Tracing.start` does)::

    processor = CountingBatchSpanProcessor(CountingExporter(otlp_exporter(url, 2.0)),
                                           max_queue_size=2048, ...)
    provider.add_span_processor(processor)

- :class:`CountingBatchSpanProcessor` is the SDK's ``BatchSpanProcessor`` (a bounded
  queue and one export thread; ending a span appends it and returns), counting the
  spans its full queue drops (``falcon_trace_spans_dropped_total{reason="queue_full"}``)
  and logging the first; the SDK's own log line per dropped span is filtered out.
- :class:`HashedResource`: the process's resource with its hash computed once (the
  OTLP encoder groups a batch's spans by resource, hashing it per span).
- :class:`CountingExporter` wraps the OTLP/HTTP exporter and counts the spans of
  every batch it failed to deliver (``reason="export_failed"``: the collector down,
  slow past the timeout, or refusing) and those it delivered
  (``falcon_trace_spans_exported_total``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from telemetry.metrics import SPANS_DROPPED, SPANS_EXPORTED

log = logging.getLogger(__name__)
SDK_QUEUE_LOGGER = "opentelemetry.sdk._shared_internal"  # logs every span a full queue drops


class _QueueFullFilter(logging.Filter):
    """Drops the SDK's "Queue full, dropping span" record: it is logged in ``span.end()``,
    on the request path, once per dropped span (a collector down at 100 % sampling: several
    blocking log writes per request); :class:`CountingBatchSpanProcessor` counts the drops
    and logs the first one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Queue full")


logging.getLogger(SDK_QUEUE_LOGGER).addFilter(_QueueFullFilter())


class HashedResource(Resource):
    """``resource`` (immutable) whose hash is computed once: ``Resource.__hash__`` dumps
    its attributes to JSON on every call, and the OTLP encoder calls it per span."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


def otlp_exporter(endpoint: str, timeout_s: float) -> SpanExporter:
    """The OTLP/HTTP (protobuf) span exporter to ``endpoint`` (the whole URL, e.g.
    ``http://127.0.0.1:4318/v1/traces``); one export attempt, retries included, is
    bounded by ``timeout_s``."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint, timeout=timeout_s)


class CountingExporter(SpanExporter):
    """``inner`` with its outcomes counted (see the module docstring)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self._failed = SPANS_DROPPED.labels("export_failed")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:  # noqa: BLE001 - an exporter bug must not end the export thread
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            SPANS_EXPORTED.inc(len(spans))
        else:
            self._failed.inc(len(spans))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor, counting the spans its full queue drops."""

    def __init__(self, exporter: SpanExporter, *, max_queue_size: int, **kwargs: Any) -> None:
        super().__init__(exporter, max_queue_size=max_queue_size, **kwargs)
        self._max = max_queue_size
        # NOTE: the SDK's queue (a deque with maxlen: a full one drops its oldest span
        # on append); without it (another SDK version) drops are only logged by the SDK.
        self._queue: Any = getattr(getattr(self, "_batch_processor", None), "_queue", None)
        self._full = SPANS_DROPPED.labels("queue_full")
        self._warned = False

    def on_end(self, span: ReadableSpan) -> None:
        if self._queue is not None and len(self._queue) >= self._max and \
                span.context is not None and span.context.trace_flags.sampled:
            self._full.inc()
            if not self._warned:
                self._warned = True
                log.warning("the span queue is full (%d spans): dropping spans, counted in "
                            "falcon_trace_spans_dropped_total{reason=\"queue_full\"}; logged "
                            "once per process", self._max)
        super().on_end(span)
