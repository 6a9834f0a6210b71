"""OpenTelemetry tracing of one process: spans made by hand, exported over OTLP/HTTP.

Usage (edge)::

    tracing = Tracing.from_settings(settings, "edge")   # in the arbiter: no thread yet
    tracing.start()          # in each worker, after the fork (gunicorn post_worker_init)
    span = tracing.server_span("POST /v1/models/{model}/predict", req.get_header("traceparent"),
                               {"http.request.method": "POST", ...})
    with tracing.child(span, "validate"):
        ...
    span.end()

Usage (daemon)::

    tracing = Tracing.from_settings(settings, "daemon"); tracing.start()
    epoch = tracing.epoch_ns(clock)      # clock readings -> Unix ns, one reading
    tracing.record_run("daemon batch", [(parent, epoch(enqueued), epoch(started)), ...],
                       epoch(started), epoch(started + compute_s), {"falcon.batch.rows": 12})

Off (``tracing.endpoint`` empty, the default) nothing is imported from the SDK and
:attr:`Tracing.tracer` stays None: :meth:`server_span` answers None and
:meth:`child` of None is a shared no-op context manager, so the request path
pays an attribute check. On: a ``TracerProvider`` with parent-based ratio
sampling (``tracing.sample_ratio``; a sampled incoming ``traceparent`` is
traced, an unsampled one is not) and one :class:`~telemetry.export.CountingBatchSpanProcessor`
whose bounded queue is exported by a background thread (a greenlet under gevent):
ending a span appends it to that queue and returns; a collector that is down costs
the exporter its ``export_timeout_ms`` per batch and the spans it drops, counted in
``falcon_trace_spans_dropped_total``.

:meth:`start` must run in the process that makes the spans, after any fork (the
export thread does not survive one); it is idempotent per process. Nothing here
sets OpenTelemetry's global tracer provider or the current-span context: spans
are passed explicitly (``RequestContext.span`` in the edge), so greenlets,
threads and the daemon's event loop need no context propagation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from telemetry import w3c
from telemetry.sampling import RatioSampler

log = logging.getLogger(__name__)

SCHEDULE_DELAY_MS = 500  # how long an ended span may wait before its batch is sent
MAX_EXPORT_BATCH = 512
_NULL: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()

RunRequest = tuple[w3c.TraceParent | None, int, int]  # (parent, enqueued_ns, started_ns)


class UnsampledSpan:
    """What :meth:`Tracing.server_span` answers for a request its sampling leaves out:
    the trace id (the parent's, or the new root's that the decision was made on) and a
    span id of its own, in hex, for the echoed ``traceparent`` and the audit record.
    The span API's calls a request span gets are no-ops; nothing reaches the SDK."""

    __slots__ = ("trace_id", "span_id", "header")

    def __init__(self, trace_id: str) -> None:
        self.trace_id = trace_id
        self.span_id = format(random.getrandbits(64) or 1, "016x")
        self.header = w3c.format_traceparent(trace_id, self.span_id, False)

    def is_recording(self) -> bool:
        return False

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_status(self, *args: Any, **kwargs: Any) -> None:
        pass

    def end(self, end_time: int | None = None) -> None:
        pass

    def get_span_context(self) -> Any:
        """The OpenTelemetry ``SpanContext`` (not sampled) of these ids."""
        from opentelemetry.trace import SpanContext

        return SpanContext(int(self.trace_id, 16), int(self.span_id, 16), is_remote=False)


def trace_id_of(span: Any) -> str:
    if type(span) is UnsampledSpan:
        return span.trace_id
    return format(span.get_span_context().trace_id, "032x")


def traceparent_of(span: Any) -> str:
    """The W3C ``traceparent`` naming ``span`` as the parent (sampled flag as decided)."""
    if type(span) is UnsampledSpan:
        return span.header
    ctx = span.get_span_context()
    return w3c.format_traceparent(format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"),
                                  bool(ctx.trace_flags & 1))


def sampled_trace_id(span: Any) -> str | None:
    """``span``'s trace id if it is sampled (its trace is exported), else None: what an
    exemplar may point at."""
    if span is None or type(span) is UnsampledSpan:
        return None
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.trace_flags & 1 else None


class _Child:
    """A started child span as a context manager: ended on exit, an exception's type
    recorded as ``error.type`` (a class: cheaper per span than a generator's)."""

    __slots__ = ("span",)

    def __init__(self, span: Any) -> None:
        self.span = span

    def __enter__(self) -> Any:
        return self.span

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> None:
        if kind is not None:
            self.span.set_attribute("error.type", kind.__name__)
        self.span.end()


class _DecidedIds:
    """The SDK's random ids, except that the trace id of a root span
    :meth:`Tracing.server_span` decided to sample is the one it decided on (set just
    before the SDK asks, per thread or greenlet)."""

    def __init__(self) -> None:
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

        self._random = RandomIdGenerator()
        self.generate_span_id = self._random.generate_span_id
        self.is_trace_id_random = self._random.is_trace_id_random
        self.preset = threading.local()

    def generate_trace_id(self) -> int:
        trace_id = getattr(self.preset, "trace_id", 0)
        if trace_id:
            self.preset.trace_id = 0
            return int(trace_id)
        return int(self._random.generate_trace_id())


class Tracing:
    """The tracing of one process (see the module docstring). ``exporter``: a
    ``SpanExporter`` to use instead of OTLP/HTTP to ``endpoint`` (tests); either
    turns tracing on. Raises nothing at run time; :meth:`start` raises ImportError
    only if the SDK is not installed."""

    def __init__(self, endpoint: str = "", *, service: str = "falcon", sample_ratio: float = 0.1,
                 max_queue_spans: int = 2048, export_timeout_s: float = 2.0,
                 exporter: Any = None) -> None:
        self.endpoint = endpoint
        self.service = service
        self.sample_ratio = sample_ratio
        self.max_queue_spans = max_queue_spans
        self.export_timeout_s = export_timeout_s
        self._exporter = exporter
        self.tracer: Any = None  # set by start(): an SDK Tracer
        self._provider: Any = None
        self._pid: int | None = None
        self._sampler = RatioSampler(sample_ratio)
        self._ids: _DecidedIds | None = None
        self._api: Any = None  # opentelemetry.trace, once started
        self._context: Any = None  # opentelemetry.context.Context, once started

    @classmethod
    def from_settings(cls, settings: Any, component: str) -> Tracing:
        t = settings.tracing
        return cls(t.endpoint, service=f"{t.service_name or 'falcon'}-{component}",
                   sample_ratio=t.sample_ratio, max_queue_spans=t.max_queue_spans,
                   export_timeout_s=t.export_timeout_ms / 1000.0)

    @property
    def enabled(self) -> bool:
        return bool(self.endpoint) or self._exporter is not None

    def start(self) -> None:
        """Build the provider and start the export thread in this process (after
        any fork); idempotent per process; nothing when tracing is off."""
        if not self.enabled or self._pid == os.getpid():
            return
        from opentelemetry import trace as api
        from opentelemetry.context import Context
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        from telemetry import sdk_locks
        from telemetry.export import (
            CountingBatchSpanProcessor,
            CountingExporter,
            HashedResource,
            otlp_exporter,
        )

        exporter = self._exporter or otlp_exporter(self.endpoint, self.export_timeout_s)
        resource = HashedResource(Resource.create({
            "service.name": self.service,
            "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
            "host.name": socket.gethostname()}))
        sdk_locks.use_native_locks()  # a gevent worker: C locks for the spans' own
        self._ids = _DecidedIds()
        # NOTE: server_span decides first with RatioSampler (telemetry/sampling.py), the
        # same rule: this sampler sees only spans already decided on and agrees.
        provider = TracerProvider(resource=resource, id_generator=self._ids,  # type: ignore[arg-type]
                                  sampler=ParentBased(TraceIdRatioBased(self.sample_ratio)))
        provider.add_span_processor(CountingBatchSpanProcessor(
            CountingExporter(exporter), max_queue_size=self.max_queue_spans,
            schedule_delay_millis=SCHEDULE_DELAY_MS,
            max_export_batch_size=min(MAX_EXPORT_BATCH, self.max_queue_spans),
            export_timeout_millis=self.export_timeout_s * 1000))
        self._provider, self._pid, self._api, self._context = provider, os.getpid(), api, Context
        self.tracer = provider.get_tracer("falcon")
        log.info("tracing on: %s to %s, sampling %.3g of new traces", self.service,
                 self.endpoint or type(exporter).__name__, self.sample_ratio)

    def flush(self, timeout_s: float = 5.0) -> bool:
        return bool(self._provider.force_flush(int(timeout_s * 1000))) if self._provider else True

    def shutdown(self) -> None:
        """Export what is queued (bounded by the export timeout) and stop the thread."""
        if self._provider is not None and self._pid == os.getpid():
            self._provider.shutdown()
        self._provider = self.tracer = self._pid = None

    # -- the edge -------------------------------------------------------------------
    def server_span(self, name: str, traceparent: str | None,
                    attributes: dict[str, Any] | Callable[[], dict[str, Any]] | None = None
                    ) -> Any:
        """A SERVER span for one request, child of a valid incoming ``traceparent``
        (sampled or not, as it says), else the root of a new trace (sampled at the
        ratio); None when tracing is off or not started in this process. Its
        context always has a trace id, sampled or not. ``attributes``: a dict, or a
        function making it, called only for a sampled request.

        The decision comes first (:class:`~telemetry.sampling.RatioSampler`, the SDK's
        ``ParentBased(TraceIdRatioBased)`` rule on the same trace id): a request left
        out gets an :class:`UnsampledSpan` without a call into the SDK."""
        if self.tracer is None:
            return None
        parent = w3c.parse(traceparent)
        if parent is not None:
            if not parent.sampled:
                return UnsampledSpan(parent.trace_id)
            context = self._parent(parent)
        else:
            trace_id = random.getrandbits(128) or 1  # the SDK's RandomIdGenerator's way
            if not self._sampler.root_sampled(trace_id):
                return UnsampledSpan(format(trace_id, "032x"))
            assert self._ids is not None
            self._ids.preset.trace_id = trace_id  # the root's id: the one decided on
            context = self._parent(None)
        if callable(attributes):
            attributes = attributes()
        return self.tracer.start_span(name, context=context, kind=self._api.SpanKind.SERVER,
                                      attributes=attributes)

    def child(self, parent: Any, name: str, attributes: dict[str, Any] | None = None,
              client: bool = False) -> contextlib.AbstractContextManager[Any]:
        """A context manager with a child span of ``parent`` (ended on exit, an
        exception recorded), or a shared no-op yielding None when ``parent`` is None
        or not recording (tracing off, request not sampled)."""
        if parent is None or self.tracer is None or not parent.is_recording():
            return _NULL
        api = self._api
        return _Child(self.tracer.start_span(
            name, context=api.set_span_in_context(parent),
            kind=api.SpanKind.CLIENT if client else api.SpanKind.INTERNAL,
            attributes=attributes))

    # -- the daemon -----------------------------------------------------------------
    def record_run(self, name: str, requests: Sequence[RunRequest], run_start_ns: int,
                   run_end_ns: int, attributes: dict[str, Any]) -> None:
        """The daemon's spans of one model run: per sampled request a ``queue`` span
        (child of the request's daemon-call span, from enqueued to started), and one
        ``name`` span over the run, in the trace of the first sampled request, with a
        link to every request of the run that carried a span context. Nothing when
        no request is sampled or tracing is not started."""
        if self.tracer is None:
            return
        sampled = [r for r in requests if r[0] is not None and r[0].sampled]
        if not sampled:
            return
        Link = self._api.Link  # noqa: N806 - the API's class
        for parent, enqueued_ns, started_ns in sampled:
            span = self.tracer.start_span("daemon queue", context=self._parent(parent),
                                          attributes=attributes, start_time=enqueued_ns)
            span.end(end_time=started_ns)
        links = [Link(self._remote(p)) for p, _, _ in requests if p is not None and p.span_id]
        span = self.tracer.start_span(name, context=self._parent(sampled[0][0]),
                                      attributes={**attributes, "falcon.batch.requests":
                                                  len(requests)},
                                      links=links, start_time=run_start_ns)
        span.end(end_time=run_end_ns)

    @staticmethod
    def epoch_ns(clock: Callable[[], float] = time.monotonic) -> Callable[[float], int]:
        """A conversion of readings of ``clock`` (seconds) to Unix nanoseconds (what
        spans carry), from one reading of both clocks now."""
        offset = time.time_ns() - int(clock() * 1e9)
        return lambda t: int(t * 1e9) + offset

    # -- parents --------------------------------------------------------------------
    def _remote(self, tp: w3c.TraceParent) -> Any:
        api = self._api
        return api.SpanContext(int(tp.trace_id, 16), int(tp.span_id or w3c.ZERO_SPAN, 16),
                               is_remote=True,
                               trace_flags=api.TraceFlags(1 if tp.sampled else 0))

    def _parent(self, tp: w3c.TraceParent | None) -> Any:
        """The OpenTelemetry context whose current span is ``tp`` (an empty context,
        a new root, without one: never the ambient context)."""
        if tp is None or tp.span_id is None:
            return self._context()
        return self._api.set_span_in_context(self._api.NonRecordingSpan(self._remote(tp)),
                                             self._context())
