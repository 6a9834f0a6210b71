"""The sampling decision of a request, before any span is made: parent-based, trace-id ratio.

Usage (what :meth:`telemetry.tracing.Tracing.server_span` does)::

    sampler = RatioSampler(0.1)
    sampled = sampler.sampled(w3c.parse(header), trace_id)  # trace_id: the new root's, an int

It is OpenTelemetry's ``ParentBased(TraceIdRatioBased(ratio))`` rule (the sampler the
``TracerProvider`` is built with, ``opentelemetry.sdk.trace.sampling``) on the ids alone,
without the SDK: a valid incoming parent decides (its sampled flag), else the root is
sampled when the low 64 bits of its trace id are below ``round(ratio * 2**64)``. Deciding
here first lets the edge skip the SDK, the span and its attributes for every request the
ratio leaves out; ``tests/unit/test_telemetry.py`` checks it agrees with the SDK's sampler.
"""

from __future__ import annotations

from telemetry.w3c import TraceParent

TRACE_ID_LIMIT = (1 << 64) - 1  # TraceIdRatioBased looks at the low 64 bits


class RatioSampler:
    """``ParentBased(TraceIdRatioBased(ratio))`` on the ids (see the module docstring)."""

    def __init__(self, ratio: float) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"sample ratio must be in [0, 1], not {ratio!r}")
        self.ratio = ratio
        self.bound = round(ratio * (TRACE_ID_LIMIT + 1))

    def root_sampled(self, trace_id: int) -> bool:
        """Whether a new trace (no valid parent) of ``trace_id`` is sampled."""
        return trace_id & TRACE_ID_LIMIT < self.bound

    def sampled(self, parent: TraceParent | None, trace_id: int) -> bool:
        """The decision for a span whose parent is ``parent`` (``w3c.parse``'s answer: None
        when absent or invalid; a bare trace id, no span id, is no parent) and whose trace
        id is ``trace_id`` (the parent's when it has one)."""
        if parent is not None and parent.span_id is not None:
            return parent.sampled
        return self.root_sampled(trace_id)
