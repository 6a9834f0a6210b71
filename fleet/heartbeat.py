"""The reconciler's systemd watchdog: a thread that pings ``WATCHDOG=1`` every
``every_s`` while the main loop is alive and not stuck beyond a bound.

    hb = Heartbeat(ping, every_s=1.0, idle_s=45.0)
    hb.start()
    hb.beat()            # the loop is alive: pings go on for idle_s more
    hb.expect(120.0)     # a step that may take 120 s (a daemon load): pings go on that long
    hb.stop()

The loop beats at least once a second while it waits, and before every step
and every database call; a pass is bounded by the daemon client's timeout
(falconctl/hosts.py ``SocketDaemon``) and the database's statement timeout and
keepalives (fleet/store.py ``connect``). A main loop stuck beyond its bound
stops the pings, and systemd (``WatchdogSec=`` in
ops/systemd/falcon-reconciler.service) restarts the reconciler.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Heartbeat:
    """See the module docstring. ``clock`` is a seam for tests."""

    def __init__(self, ping: Callable[[], object], *, every_s: float = 1.0,
                 idle_s: float = 45.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ping = ping
        self.every_s = every_s
        self.idle_s = idle_s
        self.clock = clock
        self._until = clock() + idle_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-heartbeat", daemon=True)

    def beat(self) -> None:
        """The main loop is alive: ping for ``idle_s`` more."""
        self.expect(0.0)

    def expect(self, seconds: float) -> None:
        """The next step may take ``seconds``: ping until then (plus ``idle_s``)."""
        with self._lock:
            self._until = self.clock() + seconds + self.idle_s

    def alive(self) -> bool:
        with self._lock:
            return self.clock() <= self._until

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            if self.alive():
                self.ping()
