"""The audit step of the edge pipeline: every served prediction (cache hits
included) is one :class:`~audit.record.AuditRecord` appended to this worker's
WAL stream *before* the response leaves.

Each gunicorn worker process owns one stream, ``<host>-<pid>-<start_ns>``,
opened lazily after the fork and closed at exit (a killed worker's stream is
closed by the kernel releasing its lock; the shipper then drains it). If the
WAL cannot take a record — a failed fsync stops the writer for good, a full
disk refuses until space returns — the prediction is answered 503 rather than
served unaudited.

A stream whose writer failed is closed (the shipper drains it like a dead
worker's) and never written again (docs/conventions.md: a failed fsync is never retried);
for ``retry_s`` the worker refuses predictions and reports not-ready
(:meth:`Auditor.healthy`, so HAProxy sends its traffic elsewhere), then opens a
new stream. A new stream that fails too doubles the wait, up to ``MAX_RETRY_S``.

Readiness has hysteresis: a worker that failed stays not-ready until a new
stream is open -- opening one writes and fsyncs its first segment's header, so
the disk has taken a sync again -- whether the readiness probe or a prediction
opened it. The end of a back-off alone never makes it ready (it used to: ready
with no stream, then not-ready again when the first prediction found the disk
still failing, and HAProxy's check saw ready -> not-ready -> ready).
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audit.record import AuditRecord
from audit.wal import WalError, WalFailed, WalWriter
from edge import metrics
from edge.errors import Unavailable
from wire.messages import STRING, pack_strings

log = logging.getLogger(__name__)


@dataclass
class RequestContext:
    """What the edge knows of one request besides its payload."""

    request_id: str
    face: str                      # "v1" | "v2"
    started: float = field(default_factory=time.monotonic)
    trace_id: str | None = None
    accepted: float | None = None    # unix time the front (HAProxy) accepted it, if known
    request_key: str = ""            # the front's unique id of the HTTP request
    api_key_id: str | None = None
    routing_key: str | None = None   # X-Routing-Key: which caller a traffic split keeps together
    span: Any = None                 # the request's span (edge.tracing), None: not traced

    @property
    def routing(self) -> str:
        """What a traffic split is sticky on: the routing key, else the API key,
        else nothing stable (the request id: a fresh draw per request)."""
        return self.routing_key or self.api_key_id or self.request_id


Canonical = tuple[bytes, list[dict[str, Any]]]


def canonical(inputs: list[tuple[str, np.ndarray]]) -> Canonical:
    """Canonical bytes of a request's inputs (sorted by name; name, dtype and
    shape framed before the raw little-endian data) and their metadata. Two
    requests with the same tensors have the same bytes whatever their order.

    A string tensor (dtype ``|O``) is framed the same way; its data is the wire
    protocol's string layout (:func:`wire.messages.pack_strings`: per element a
    u32 little-endian byte length, then UTF-8), never object pointers.
    ``falconctl wal dump --bytes`` shows these bytes and ``audit.walcli`` decodes them."""
    parts, meta = [], []
    for name, arr in sorted(inputs, key=lambda item: item[0]):
        arr = np.ascontiguousarray(arr)
        dtype = STRING if arr.dtype.kind in "OUST" else arr.dtype.str
        header = f"{name}\0{dtype}\0{','.join(map(str, arr.shape))}\0".encode()
        data = pack_strings(arr) if dtype == STRING else arr.tobytes()
        parts += [len(header).to_bytes(4, "little"), header, data]
        meta.append({"name": name, "dtype": dtype, "shape": list(arr.shape)})
    return b"".join(parts), meta


def input_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def outputs_doc(outputs: list[tuple[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {name: {"dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tolist()}
            for name, arr in outputs}


WriterFactory = Callable[[Path, str], WalWriter]
MAX_RETRY_S = 60.0


class Auditor:
    """Appends audit records to this process's WAL stream. Thread-safe.

    Raises :class:`~edge.errors.Unavailable` when the WAL refuses a record;
    nothing is served unaudited. After a failed stream, :meth:`healthy` is false
    for the back-off (see the module docstring), then a new stream is opened.
    """

    def __init__(self, wal_dir: Path, host: str, writer_factory: WriterFactory, *,
                 max_input_bytes: int = 64 << 10, retry_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.wal_dir = wal_dir
        self.host = host
        self.writer_factory = writer_factory
        self.max_input_bytes = max_input_bytes
        self.retry_s = retry_s
        self.clock = clock
        self._lock = threading.Lock()
        self._writer: WalWriter | None = None
        self._pid = 0
        self._retry_at = 0.0        # clock() before which no new stream is opened
        self._backoff = retry_s     # the next failure's wait
        self._degraded = False      # a stream failed and no new one is open yet

    def healthy(self) -> bool:
        """Whether this worker is ready as far as the audit log goes. After a
        failure: false for the back-off, then false until a new stream is open;
        once the back-off is over, this call opens it (so a worker HAProxy took
        out of rotation, which gets no prediction to open one, comes back)."""
        with self._lock:
            if self._pid != os.getpid():
                return True  # this process has not failed (a stream opens lazily)
            if not self._degraded:
                return True
            if self.clock() < self._retry_at:
                return False
            try:
                self._open_locked()
            except Unavailable:
                return False
            return True

    def _current(self) -> WalWriter:
        with self._lock:
            if self._writer is None or self._pid != os.getpid():
                if self._pid != os.getpid():
                    self._pid, self._retry_at, self._backoff = os.getpid(), 0.0, self.retry_s
                    self._degraded = False
                return self._open_locked()
            return self._writer

    def _open_locked(self) -> WalWriter:
        """A new stream (lock held), or Unavailable while backing off or when it
        cannot be opened (which backs off again)."""
        wait = self._retry_at - self.clock()
        if wait > 0:
            raise Unavailable(f"audit log failed; a new stream in {wait:.1f} s",
                              retry_after=wait)
        stream = f"{self.host}-{self._pid}-{time.time_ns()}"
        try:
            self.wal_dir.mkdir(parents=True, exist_ok=True)
            writer = self.writer_factory(self.wal_dir, stream)
        except (OSError, WalError) as exc:
            wait = self._back_off()
            log.critical("audit stream %s could not be opened, refusing predictions "
                         "for %.1f s: %s", stream, wait, exc)
            raise Unavailable(f"audit log unavailable: {exc}", retry_after=wait) from None
        atexit.register(writer.close)
        self._writer = writer
        if self._degraded:
            log.warning("audit stream %s opened in %s: ready again", stream, self.wal_dir)
        else:
            log.info("audit stream %s opened in %s", stream, self.wal_dir)
        self._degraded = False
        return writer

    def _back_off(self) -> float:
        """Start a back-off (lock held); its length."""
        wait = self._backoff
        self._degraded = True
        self._retry_at = self.clock() + wait
        self._backoff = min(wait * 2, MAX_RETRY_S)
        return wait

    def _failed(self, writer: WalWriter, exc: WalFailed) -> float:
        """``writer`` stopped for good: close it (the shipper drains it) and back off."""
        with self._lock:
            if self._writer is not writer:  # another thread got there first
                return max(0.0, self._retry_at - self.clock())
            self._writer = None
            wait = self._back_off()
        log.critical("audit WAL stream %s failed, refusing predictions for %.1f s, then a new "
                     "stream: %s", writer.stream, wait, exc)
        try:
            writer.close()
        except (OSError, WalError) as close_exc:
            log.warning("closing failed audit stream %s: %s", writer.stream, close_exc)
        return wait

    def record(self, ctx: RequestContext, *, model: str, version: str, canon: Canonical,
               outputs: list[tuple[str, np.ndarray]], labels: list[Any] | None,
               cached: bool, extra: dict[str, Any] | None = None) -> AuditRecord:
        """``canon``: :func:`canonical` of the request's inputs; ``extra``: the record's
        ``extra`` (how the outputs were served, e.g. ``{"classification": {name: K}}``)."""
        data, meta = canon
        rec = AuditRecord(
            request_id=ctx.request_id, ts=ctx.accepted or time.time(), host=self.host,
            model=model, version=version, face=ctx.face, input_digest=input_digest(data), input_meta=meta,
            outputs=outputs_doc(outputs), labels=labels, cached=cached,
            latency_ms=(time.monotonic() - ctx.started) * 1000.0,
            inputs=data if len(data) <= self.max_input_bytes else None,
            api_key_id=ctx.api_key_id, trace_id=ctx.trace_id, request_key=ctx.request_key,
            extra=extra or {})
        self._append(rec)
        return rec

    def _append(self, rec: AuditRecord) -> None:
        writer = self._current()
        payload = rec.to_payload()
        try:
            writer.append(payload)
        except WalFailed as exc:
            wait = self._failed(writer, exc)
            raise Unavailable(f"audit log unavailable: {exc}", retry_after=wait) from None
        except WalError as exc:
            raise Unavailable(f"audit log refused the record: {exc}", retry_after=5) from None
        if self._backoff != self.retry_s:  # a stream works again
            self._backoff = self.retry_s
        metrics.WAL_RECORDS.inc()
        metrics.WAL_BYTES.inc(len(payload))

    def event(self, ctx: RequestContext, kind: str, model: str,
              detail: dict[str, Any]) -> AuditRecord:
        """A management change (traffic split, rollback) in the audit trail:
        ``face = "admin"``, who in ``api_key_id``, what in ``extra``."""
        rec = AuditRecord(
            request_id=ctx.request_id, ts=ctx.accepted or time.time(), host=self.host,
            model=model, version="", face="admin", input_digest="", input_meta=[], outputs={},
            labels=None, cached=False, latency_ms=(time.monotonic() - ctx.started) * 1000.0,
            api_key_id=ctx.api_key_id, trace_id=ctx.trace_id, extra={"event": kind, **detail},
            request_key=ctx.request_key)
        self._append(rec)
        return rec

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
