"""gunicorn's gevent worker, with a stop that does not wait for idle keep-alive connections.

Usage: ``worker_class = "edge.gevent_worker.GeventWorker"`` (``edge.server`` sets it
when ``edge.worker_class = "gevent"``).

gunicorn's :class:`~gunicorn.workers.ggevent.GeventWorker` runs one greenlet per
connection. On SIGTERM it stops accepting, then waits until every connection's greenlet
has ended, up to ``graceful_timeout``. A greenlet whose connection is between two
requests is blocked reading the next one, and HAProxy keeps such idle connections open
for reuse, so the worker would wait for the keep-alive timeout (30 s) with nothing to
finish -- where the gthread worker closes idle connections at once.

This worker knows which connections are idle: once it is told to stop, it shuts them
down (the blocked read returns end-of-file and the greenlet ends as if the client had
closed) unless the first bytes of a next request have arrived; a connection busy with a
request finishes it and is closed after its response
(gunicorn forces ``Connection: close`` once the worker is stopping). Shutting down an
idle keep-alive connection is what any HTTP server may do at any time; HAProxy retries
a request that finds it closed (``retry-on conn-failure empty-response``).
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios
from typing import Any

import gevent
from gevent import monkey
from gunicorn.workers.ggevent import GeventWorker as _GeventWorker

CLOSE_IDLE_EVERY_S = 0.1
_RealSocket = monkey.get_original("socket", "socket")


class GeventWorker(_GeventWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._busy: dict[socket.socket, bool] = {}  # open connections: serving a request?
        self._closer: Any = None

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        self._busy[client] = False
        try:
            super().handle(listener, client, addr)
        finally:
            self._busy.pop(client, None)

    def handle_request(self, listener_name: Any, req: Any, sock: socket.socket,
                       addr: Any) -> Any:
        self._busy[sock] = True
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            if sock in self._busy:
                self._busy[sock] = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)  # alive = False: the run loop starts the stop
        if self._closer is None:  # (the closing happens in a greenlet, not in the handler)
            self._closer = gevent.spawn(self._close_idle)

    def _close_idle(self) -> None:
        """Until the worker exits: shut down every connection waiting for a request."""
        while True:
            for sock, busy in list(self._busy.items()):
                if not busy and not _pending(sock):
                    _shutdown(sock)
            gevent.sleep(CLOSE_IDLE_EVERY_S)


def _pending(sock: socket.socket) -> bool:
    """Whether bytes of a next request have arrived (then it is served, not cut)."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0] > 0
    except OSError:
        return False


def _shutdown(sock: socket.socket) -> None:
    """End the connection under ``sock``: its greenlet's blocked read then returns
    end-of-file, as when the client closes. (gevent's own ``shutdown`` would instead
    raise EBADF in that greenlet, which gunicorn logs as a socket error.)"""
    try:
        with _RealSocket(fileno=os.dup(sock.fileno())) as dup:
            dup.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
