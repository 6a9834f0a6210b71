"""W3C trace context (``traceparent``) parsing and formatting; no OpenTelemetry import.

Usage::

    tp = parse(req.get_header("traceparent"))     # None when absent or malformed
    if tp is not None and tp.sampled: ...
    header = format_traceparent(trace_id, span_id, sampled=True)

``traceparent`` is ``00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>``
(https://www.w3.org/TR/trace-context/); bit 0 of the flags is "sampled". An
all-zero trace or span id is invalid. The daemon frame's ``trace`` field
(``wire/messages.py``) carries either a whole ``traceparent`` or, from older
edges and in the golden frames, a bare 32-hex trace id: :func:`parse_frame_trace`
takes both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
TRACE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
ZERO_TRACE = "0" * 32
ZERO_SPAN = "0" * 16


@dataclass(frozen=True)
class TraceParent:
    """A parsed trace context: ``span_id`` is None for a bare trace id (no parent span)."""

    trace_id: str
    span_id: str | None
    sampled: bool

    def header(self) -> str:
        return format_traceparent(self.trace_id, self.span_id or ZERO_SPAN, self.sampled)


def parse(value: str | None) -> TraceParent | None:
    """A ``traceparent`` header's context, or None when absent, malformed, of
    version ``ff`` or with an all-zero id."""
    match = TRACEPARENT_RE.match(value or "")
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or trace_id == ZERO_TRACE or span_id == ZERO_SPAN:
        return None
    return TraceParent(trace_id, span_id, bool(int(flags, 16) & 1))


def parse_frame_trace(value: object) -> TraceParent | None:
    """The infer frame's ``trace``: a whole ``traceparent``, or a bare trace id
    (older edges; not sampled: no span of the daemon joins it), else None."""
    if not isinstance(value, str):
        return None
    if TRACE_ID_RE.match(value) and value != ZERO_TRACE:
        return TraceParent(value, None, False)
    return parse(value)


def format_traceparent(trace_id: str, span_id: str, sampled: bool) -> str:
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"
