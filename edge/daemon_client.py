"""Client of the inference daemon, shared by every thread of one edge worker.

One Unix-socket connection per worker process carries every in-flight request
of its threads (the protocol allows any number in flight and answers in any
order): a thread sends its frame under a send lock and waits on its own slot;
one reader thread routes responses to slots by request id. Fewer connections,
and concurrent requests reach the daemon together, where they can be batched.

Failure handling (the caller's deadline bounds everything):

- cannot connect -> :class:`~edge.errors.Unavailable` (503 + Retry-After);
- the frame could not be sent -> sent once more on a fresh connection (a torn
  frame is never acted on);
- the connection breaks with the request sent but unanswered -> retried once on
  a fresh connection if the broken one was made before this call (a daemon
  restart leaves stale connections), time remains, and the op is idempotent
  (``IDEMPOTENT`` of its :mod:`wire.ops` class: an inference is a pure function
  of its inputs, the others only read). A management change (load, unload, split, rollback) is never sent
  twice: the first may have been applied (a rollback re-sent goes back two
  steps), so it is :class:`~edge.errors.Unavailable` saying so. A request that
  broke a *fresh* connection is not retried (it may be what broke it);
- no answer by the deadline -> :class:`~edge.errors.DeadlineExceeded` (504);
  the late answer, if it comes, is dropped;
- the daemon answers with an error -> :class:`wire.messages.RemoteError`;
- the answer is malformed -> :class:`wire.messages.MessageError` naming the field.

Usage: ``client.call(ops.Metadata(model="digits"), deadline)`` returns the op's
answer class (:class:`wire.ops.MetadataAnswer`).

The connection is made lazily and re-made after a fork (gunicorn workers).
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from edge.errors import DeadlineExceeded, Unavailable
from wire import frames, ops

log = logging.getLogger(__name__)


class _Slot:
    """Where one request's answer lands. PERF: a bare lock, taken at creation and
    released once by whoever settles the slot (the reader with the answer, or
    :meth:`_Connection.close` with none): cheaper than a ``threading.Event``,
    which builds a Condition and a second lock per wait."""

    __slots__ = ("done", "response")

    def __init__(self) -> None:
        self.done = threading.Lock()
        self.done.acquire()
        self.response: dict[str, Any] | None = None

    def wait(self, timeout: float) -> bool:
        return self.done.acquire(timeout=max(0.0, timeout))

    def settle(self, response: dict[str, Any] | None) -> None:
        """Called once per slot, by whoever popped it from ``pending``."""
        self.response = response
        self.done.release()


class _ConnectionLost(Exception):
    pass


class _Connection:
    """One socket, its pending slots and the thread that reads it."""

    def __init__(self, sock: socket.socket, max_frame: int) -> None:
        self.sock = sock
        self.max_frame = max_frame
        self.pending: dict[int, _Slot] = {}
        self.lock = threading.Lock()
        self.send_lock = threading.Lock()
        self.alive = True
        self.used = False
        threading.Thread(target=self._read_loop, name="daemon-reader", daemon=True).start()

    def _read_loop(self) -> None:
        reader = frames.FrameReader(self.sock, self.max_frame)
        try:
            while True:
                _, resp = reader.read()
                with self.lock:
                    slot = self.pending.pop(resp.get("id"), None)  # type: ignore[arg-type]
                if slot is not None:
                    slot.settle(resp)
        except (frames.WireError, OSError) as exc:
            if not isinstance(exc, frames.ConnectionClosed):
                log.info("daemon connection lost: %s", exc)
        self.close()

    def close(self) -> None:
        with self.lock:
            self.alive = False
            pending, self.pending = self.pending, {}
        for slot in pending.values():
            slot.settle(None)  # no response: connection lost
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def send(self, rid: int, frame: bytes) -> _Slot:
        slot = _Slot()
        with self.lock:
            if not self.alive:
                raise _ConnectionLost()
            self.pending[rid] = slot
        try:
            with self.send_lock:
                self.sock.sendall(frame)
        except OSError:
            self.close()
            raise _ConnectionLost() from None
        self.used = True
        return slot

    def forget(self, rid: int) -> None:
        with self.lock:
            self.pending.pop(rid, None)


class DaemonClient:
    """Thread-safe client; see the module docstring for the failure contract."""

    def __init__(self, path: str, *, max_frame: int = frames.DEFAULT_MAX_FRAME,
                 connect_timeout: float = 0.5,
                 socket_factory: Callable[..., socket.socket] = socket.socket,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.max_frame = max_frame
        self.connect_timeout = connect_timeout
        self.socket_factory = socket_factory
        self.clock = clock
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._conn: _Connection | None = None
        self._pid = os.getpid()

    def call(self, op: ops.Op[ops.A], deadline: float) -> ops.A:
        """Run ``op`` on the daemon and return its answer; ``deadline`` is an absolute
        ``clock()`` time."""
        name, idempotent = op.OP, op.IDEMPOTENT
        for attempt in (1, 2):
            conn = self._connection(deadline)
            reused = conn.used
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise DeadlineExceeded("deadline passed before the daemon was called")
            rid = next(self._ids)
            req = ops.Request(rid, op, deadline_ms=max(1, int(remaining * 1000)))
            try:
                slot = conn.send(rid, frames.encode(frames.REQUEST, req.to_wire()))
            except _ConnectionLost:
                if attempt == 1:
                    continue
                raise Unavailable("inference daemon connection lost") from None
            if not slot.wait(deadline - self.clock()):
                conn.forget(rid)
                raise DeadlineExceeded(f"no answer from the daemon within the deadline ({name})")
            if slot.response is None:
                if attempt == 1 and reused and idempotent:  # stale (daemon restarted)
                    continue
                if not idempotent:
                    raise Unavailable(f"inference daemon connection lost: {name!r} may or may "
                                      "not have been applied; check before sending it again")
                raise Unavailable("inference daemon connection lost")
            resp = ops.Response.from_wire(slot.response, type(op).ANSWER)
            if resp.error is not None:
                raise resp.error
            return cast(ops.A, resp.answer)
        raise Unavailable("inference daemon connection lost")  # pragma: no cover

    def _connection(self, deadline: float) -> _Connection:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's socket is not ours
                self._conn, self._pid = None, os.getpid()
            if self._conn is not None and self._conn.alive:
                return self._conn
            sock = self.socket_factory(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(max(0.001, min(self.connect_timeout, deadline - self.clock())))
            try:
                sock.connect(self.path)
            except OSError as exc:
                sock.close()
                raise Unavailable(f"inference daemon unavailable: {exc.strerror or exc}") from None
            sock.settimeout(None)
            self._conn = _Connection(sock, self.max_frame)
            return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

