"""One audit record: what the edge knew when it answered a prediction.

The edge builds an :class:`AuditRecord` for every response it sends (cache hits
included) and appends ``record.to_payload()`` (msgpack bytes) to its WAL
before the response leaves. The shipper decodes it with
:meth:`AuditRecord.from_payload` and turns it into one row of the
``audit.predictions`` table (:meth:`AuditRecord.to_row`).

Fields are plain data (str, int, float, bool, bytes, lists and maps of
those). ``outputs`` holds every returned tensor as
``{name: {"dtype", "shape", "data": nested lists}}``; :meth:`AuditRecord.to_row`
replaces non-finite floats by None in ``outputs`` (PostgreSQL's JSONB has no NaN) and
NULs in strings by U+FFFD in ``outputs`` and ``labels`` (nor NUL).
A string tensor's ``data`` holds ``str`` (its dtype is ``"|O"``), labels are what the
model gives (``str`` or ``int``).

``inputs`` are the edge's canonical input bytes (``edge.audit.canonical``), one
frame per input tensor sorted by name::

    +---------------+----------------------------------+-----------------------------+
    | u32 LE header | header (UTF-8): name NUL dtype   | data: raw little-endian     |
    | length        | NUL dims joined by "," NUL       | bytes, C order; for "|O"    |
    |               |                                  | the wire's string layout    |
    +---------------+----------------------------------+-----------------------------+

(the string layout: per element a u32 little-endian byte length, then UTF-8;
:mod:`wire.messages`).
:func:`decode_inputs` reads them back (``falconctl wal dump --tensors``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import msgpack
import numpy as np

from wire.messages import STRING, MessageError, unpack_strings_from

RECORD_VERSION = 1


class RecordError(ValueError):
    """A WAL payload is not a valid audit record (wrong version, missing or
    mistyped field). Likely cause: a payload from a newer writer, or a bug."""


@dataclass(frozen=True)
class AuditRecord:
    request_id: str           # the client's X-Request-Id, else the front's request key
    ts: float                 # unix seconds when the front (HAProxy) accepted the request,
                              # else when the edge answered. A request HAProxy retried on
                              # another edge has the same (request_id, ts, request_key)
                              # everywhere: one row.
    host: str                 # host id of the edge that answered
    model: str
    version: str              # the version that answered
    face: str                 # "v1" (simple JSON) or "v2" (Open Inference Protocol)
    input_digest: str         # hex sha256 over the canonical input bytes
    input_meta: list[dict[str, Any]]       # [{"name", "dtype", "shape"}] per input
    outputs: dict[str, dict[str, Any]]     # name -> {"dtype", "shape", "data"}
    labels: list[Any] | None  # per-row labels (simple face), else None
    cached: bool
    latency_ms: float
    inputs: bytes | None = None            # canonical input bytes, if under the size limit
    api_key_id: str | None = None
    trace_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    request_key: str = ""     # the front's unique id of the HTTP request (HAProxy unique-id;
                              # the same on every edge it was sent to): with request_id and
                              # ts, the table's key. "" in records written before it existed.

    def to_payload(self) -> bytes:
        # PERF: a shallow dict; asdict() deep-copies every nested list and dict
        # (45 of the 66 us an edge spent per audited digits request).
        body = {f.name: getattr(self, f.name) for f in _FIELDS}
        if not self.request_key:
            del body["request_key"]  # as records were before it existed (same bytes)
        body["v"] = RECORD_VERSION
        return msgpack.packb(body, use_bin_type=True)

    @classmethod
    def from_payload(cls, payload: bytes) -> AuditRecord:
        try:
            body = msgpack.unpackb(payload, raw=False)
        except Exception as exc:  # msgpack raises several unrelated classes
            raise RecordError(f"not msgpack: {exc}") from None
        if not isinstance(body, dict) or body.pop("v", None) != RECORD_VERSION:
            raise RecordError(f"not an audit record of version {RECORD_VERSION}")
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in body.items() if k in names})
        except TypeError as exc:
            raise RecordError(str(exc)) from None

    def to_row(self) -> dict[str, Any]:
        """The row for ``audit.predictions`` (JSON-able values for JSONB columns)."""
        # PERF: a shallow copy; asdict() deep-copies every nested list (~60 µs/row)
        row = {f.name: getattr(self, f.name) for f in _FIELDS}
        row["outputs"] = finite(self.outputs)
        row["labels"] = no_nul(self.labels)  # (a non-finite label is refused, as before)
        return row


_FIELDS = fields(AuditRecord)
NUL_STAND_IN = "\ufffd"


def no_nul(value: Any) -> Any:
    """``value`` with every NUL in a string replaced by U+FFFD (JSONB's text cannot hold
    one), and nothing else changed."""
    if isinstance(value, str):
        return value.replace("\x00", NUL_STAND_IN) if "\x00" in value else value
    if isinstance(value, dict):
        return {no_nul(k): no_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [no_nul(v) for v in value]
    return value


def finite(value: Any) -> Any:
    """``value`` as JSONB takes it: every non-finite float replaced by None (JSONB has no
    NaN) and every NUL in a string by U+FFFD (JSONB's text cannot hold one: a model whose
    string output echoes a client's NUL would otherwise send its record to quarantine).
    The WAL keeps the record as served."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value.replace("\x00", NUL_STAND_IN) if "\x00" in value else value
    if isinstance(value, dict):
        return {finite(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def decode_inputs(data: bytes) -> dict[str, dict[str, Any]]:
    """Canonical input bytes (see the module docstring) as ``{name: {"dtype", "shape",
    "data": nested lists}}``. Raises :class:`RecordError` for bytes that are not."""
    view = memoryview(data)
    tensors: dict[str, dict[str, Any]] = {}
    offset = 0
    try:
        while offset < len(view):
            size = int.from_bytes(view[offset:offset + 4], "little")
            name, dtype, dims, _ = str(view[offset + 4:offset + 4 + size], "utf-8").split("\0")
            offset += 4 + size
            shape = [int(d) for d in dims.split(",") if d]
            count = math.prod(shape)
            if dtype == STRING:
                arr, offset = unpack_strings_from(view, offset, count, name)
            else:
                dt = np.dtype(dtype)
                if offset + count * dt.itemsize > len(view):
                    raise RecordError(f"input {name!r}: data past the end")
                arr = np.frombuffer(view, dt, count, offset)
                offset += count * dt.itemsize
            tensors[name] = {"dtype": dtype, "shape": shape, "data": arr.reshape(shape).tolist()}
    except (ValueError, TypeError, MessageError) as exc:  # MessageError is a ValueError
        raise RecordError(f"not canonical input bytes at {offset}: {exc}") from None
    return tensors
