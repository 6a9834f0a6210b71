"""systemd readiness and watchdog for the edge, from the gunicorn arbiter.

gunicorn (27) sends ``READY=1`` from ``Arbiter.start()`` as soon as its
listening sockets are bound -- before a single worker is forked, so before
anything can answer -- and never sends ``WATCHDOG=1``. Under ``Type=notify``
with ``WatchdogSec=`` the first is a lie and the second a kill after one
period. Two gunicorn server hooks (``edge.server.gunicorn_options``) fix both:

- :func:`on_starting` runs in the arbiter just before gunicorn's ``READY=1``:
  it takes ``NOTIFY_SOCKET`` out of the environment, so gunicorn's own
  notification is a no-op and the workers do not inherit the socket;
- :func:`when_ready` starts one OS thread in the arbiter
  (:class:`EdgeWatchdog`) that sends ``READY=1`` once a worker has answered
  ``GET /v2/health/live`` on the edge's own listener, then ``WATCHDOG=1`` every
  half period (``$WATCHDOG_USEC / 2``) while the edge is healthy.

What a hung edge looks like, and what is checked before each ping:

1. The arbiter itself is stuck (SIGSTOP, a deadlock, a hook that never
   returns). A stopped process stops this thread too. Otherwise the main loop
   is seen to turn: ``murder_workers``/``manage_workers``/``reap_workers``,
   which the loop runs at least once a second (and the reload and drain loops
   call too), are wrapped to stamp the time; stale for longer than the
   watchdog period means no ping.
2. No live worker: gunicorn respawns dead workers, and halts when one cannot
   boot, so an empty ``WORKERS`` table that lasts is a stuck arbiter. A missing
   worker or two is degraded, not hung: fewer than the configured number still
   pings (gunicorn heals that itself).
3. Workers alive -- their heartbeat keeps gunicorn's own ``timeout`` from
   firing -- but nothing answers HTTP (every thread blocked). The probe
   catches that: no ping once no probe has succeeded for a whole watchdog
   period. The probe is the liveness route, which does not call the daemon: a
   daemon outage makes the edge answer 503 (degraded, correct), it must not
   get the edge restarted in a loop.

NOTE: the thread, its sleeps and its sockets are the standard library's even
when the edge runs gevent (:func:`native`). Under gevent the arbiter is
monkey-patched, and a greenlet -- which is what a patched ``threading.Thread``
is -- would be copied into every worker by ``fork()`` and go on running there:
each worker would then tell systemd it is ready and ping the watchdog for an
arbiter it cannot see. An OS thread does not survive ``fork()``.

Under load the probe waits its turn behind real requests, which carry
deadlines (``edge.deadline_ms``), so it is answered within seconds; only an
edge that answers nothing for a whole ``WatchdogSec`` (30 s in the unit) is
killed (SIGABRT) and restarted. Outside systemd (no ``NOTIFY_SOCKET``) both
hooks do nothing.
"""

from __future__ import annotations

import importlib
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from service.sdnotify import notify, watchdog_interval

PROBE_PATH = "/v2/health/live"
_NOTIFY_VARS = ("NOTIFY_SOCKET",)
_saved: dict[str, str] = {}
_started = threading.Event()


def on_starting(server: Any) -> None:
    """gunicorn ``on_starting``: keep ``NOTIFY_SOCKET`` for ourselves."""
    for name in _NOTIFY_VARS:
        value = os.environ.pop(name, None)
        if value is not None:
            _saved[name] = value


def when_ready(server: Any) -> None:
    """gunicorn ``when_ready``: start the readiness/watchdog thread (once)."""
    if not _saved.get("NOTIFY_SOCKET") or _started.is_set():
        return
    _started.set()
    env = dict(os.environ, **_saved)
    EdgeWatchdog(server, env).start()


def native(module: str, name: str) -> Any:
    """``module.name`` as the standard library defines it, also in a process that
    gevent has monkey-patched (then ``gevent.monkey.get_original`` has it)."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return getattr(importlib.import_module(module), name)
    return monkey.get_original(module, name)


def probe(address: Any, family: int, timeout: float,
          socket_factory: Callable[..., socket.socket] = socket.socket) -> bool:
    """True if ``GET /v2/health/live`` on the listener answers 200."""
    if family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        address = (host, *address[1:])
    try:
        with socket_factory(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(f"GET {PROBE_PATH} HTTP/1.1\r\nHost: localhost\r\n"
                         "Connection: close\r\n\r\n".encode())
            head = b""
            while b"\r\n" not in head and len(head) < 256:
                chunk = sock.recv(256)
                if not chunk:
                    break
                head += chunk
    except OSError:
        return False
    return head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))


class EdgeWatchdog:
    """See the module doc. ``env`` holds ``NOTIFY_SOCKET`` (and ``WATCHDOG_*``).
    :meth:`start` runs :meth:`run` in an OS thread (``start_thread``); ``sleep`` and
    ``socket_factory`` are the ones that thread uses (all native by default)."""

    def __init__(self, server: Any, env: dict[str, str],
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] | None = None,
                 socket_factory: Callable[..., socket.socket] | None = None,
                 start_thread: Callable[..., Any] | None = None) -> None:
        self.server = server
        self.env = env
        self.clock = clock
        self.sleep = sleep or native("time", "sleep")
        self.socket_factory = socket_factory or native("socket", "socket")
        self.start_thread = start_thread or native("_thread", "start_new_thread")
        interval = watchdog_interval(env)
        self.interval = interval  # None: readiness only
        self.period = 2 * interval if interval else 0.0
        self.last_tick = clock()
        self.last_probe_ok = 0.0
        self._wrap_loop()

    def _wrap_loop(self) -> None:
        """Stamp the time whenever the arbiter's loop does its periodic work."""
        for name in ("murder_workers", "manage_workers", "reap_workers"):
            original = getattr(self.server, name)

            def stamped(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                self.last_tick = self.clock()
                return _original(*args, **kwargs)

            setattr(self.server, name, stamped)

    def start(self) -> None:
        self.start_thread(self.run, ())

    def say(self, level: str, message: str) -> None:
        """A log line on stderr (the edge's error log), written with one ``write``:
        the logging module's locks are gevent's in a patched arbiter, and a native
        thread waiting on one the hub keeps taking may wait long (found by review)."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %z")
        line = f"[{stamp}] [{os.getpid()}] [{level}] {message}\n".encode(errors="replace")
        try:
            os.write(2, line)
        except OSError:
            pass

    def listener(self) -> tuple[Any, int] | None:
        for lnr in getattr(self.server, "LISTENERS", []):
            sock = getattr(lnr, "sock", lnr)
            try:
                return sock.getsockname(), sock.family
            except OSError:
                continue
        return None

    def probe(self, timeout: float) -> bool:
        where = self.listener()
        ok = where is not None and probe(where[0], where[1], timeout, self.socket_factory)
        if ok:
            self.last_probe_ok = self.clock()
        return ok

    def live_workers(self) -> int:
        return len(getattr(self.server, "WORKERS", {}))

    def healthy(self) -> tuple[bool, str]:
        now = self.clock()
        stale = max(self.period, 2.0)
        if now - self.last_tick > stale:
            return False, f"arbiter loop stalled for {now - self.last_tick:.1f}s"
        if self.live_workers() == 0:
            return False, "no live worker"
        if now - self.last_probe_ok > stale:
            return False, f"no answer on {PROBE_PATH} for {now - self.last_probe_ok:.1f}s"
        return True, ""

    def send(self, state: str) -> None:
        try:
            notify(state, self.env, self.socket_factory)
        except OSError as exc:  # systemd gone (stopping): nothing to tell
            self.say("WARNING", f"sd_notify {state.split('=')[0]} failed: {exc}")

    def wait_ready(self) -> None:
        delay = 0.05
        while not self.probe(timeout=5.0):
            self.sleep(delay)
            delay = min(delay * 2, 1.0)
        n = self.live_workers()
        self.send(f"READY=1\nSTATUS=serving, {n} worker{'s' if n != 1 else ''}")
        self.say("INFO", f"systemd: ready (a worker answered {PROBE_PATH})")

    def run(self) -> None:
        self.wait_ready()
        if self.interval is None:
            return
        interval = self.interval
        reported = ""
        while True:
            started = self.clock()
            self.probe(timeout=max(0.5, interval))
            ok, why = self.healthy()
            if ok:
                self.send("WATCHDOG=1")
                if reported:
                    self.say("INFO", "watchdog: healthy again")
                    reported = ""
            elif why.split(" ")[0] != reported.split(" ")[0]:
                self.say("WARNING", f"watchdog: not pinging systemd: {why}")
                reported = why
            self.sleep(max(0.0, interval - (self.clock() - started)))
