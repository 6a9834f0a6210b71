"""One host's reconciler: converge the local daemon to the fleet's desired
state, and report what it runs. Its own process (``falconctl reconcile``,
``falcon-reconciler.service``); never the daemon, never the request path.

    rec = Reconciler("host-a", FleetStore(dsn), daemon, Listener(dsn), interval_s=10)
    rec.run(stop)          # until stop.is_set(); rec.pass_once() does one pass

A pass reads the desired state, asks the daemon what it runs (its ``models``
op), runs the steps of :func:`fleet.plan.plan` for every managed model through
the daemon's socket (load warms a version before it can be chosen; the split
moves traffic; unload comes last), reads the daemon again and reports it
(:meth:`fleet.store.FleetStore.report`: actual state, converged revision,
error, heartbeat; the audit event of what changed). Models the fleet does not
manage are left alone.

A pass runs when ``NOTIFY fleet_changed`` arrives and every ``interval_s``
(a missed notification, a daemon restarted, a host back from the dead), or
sooner (1 s) while the daemon is unreachable or refused a step.

PostgreSQL down: nothing already running changes. A lost notification
connection means "poll now"; a pass that cannot read the desired state still
converges the daemon to the last desired state it read (a daemon restarted
meanwhile is trimmed and re-split at once, not when PostgreSQL returns), logs
the outage once, retries with back-off up to ``interval_s``, and logs the
recovery; the report of what changed meanwhile is written once it is back.
Counted in ``falcon_fleet_postgres_unavailable_total`` (fleet/metrics.py,
merged into the host's scrape with the others).

Any other error (PostgreSQL refusing: a missing privilege, a read-only standby
after a failover; the schema not migrated; a bug) is logged once per kind,
counted in ``falcon_fleet_errors_total{kind}``, and retried with the same
back-off, holding the last state: the reconciler never exits on it.

Watchdog: ``on_pass`` is called at least once a second while the loop waits;
``expect(s)`` before every daemon step (``s``: the step's bound, ``step_s``)
and every database call (0), so that fleet/heartbeat.py pings systemd while
a long load runs and stops when the loop is stuck beyond its bound.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from fleet import metrics
from fleet.errors import (
    DaemonRefused,
    DaemonUnavailable,
    DatabaseError,
    FleetError,
    FleetUnavailable,
)
from fleet.plan import Actual, Step, converged, plan
from fleet.store import Desired

log = logging.getLogger(__name__)

DAEMON_RETRY_S = 1.0
FIRST_BACKOFF_S = 0.5


class DaemonOps(Protocol):
    """The local daemon as the reconciler drives it (falconctl/hosts.py wires
    the daemon client to it)."""

    def models(self) -> dict[str, Actual]:
        """Every loaded model; raises DaemonUnavailable."""

    def apply(self, model: str, step: Step) -> None:
        """Run one step; raises DaemonUnavailable or DaemonRefused."""


class StoreOps(Protocol):
    def desired(self) -> Desired: ...

    def report(self, host: str, seen: int, converged: bool, actual: dict[str, Actual] | None,
               error: str, interval_s: float, steps: list[Any], managed: set[str],
               initial: dict[str, Actual] | None = None) -> dict[str, Any] | None: ...


class ListenerOps(Protocol):
    def wait(self, timeout: float) -> bool: ...


class Reconciler:
    """See the module docstring. ``sleep`` and ``clock`` are seams for tests."""

    def __init__(self, host: str, store: StoreOps, daemon: DaemonOps, listener: ListenerOps,
                 *, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 on_pass: Callable[[], None] = lambda: None,
                 pause: Callable[[threading.Event, float], bool] = threading.Event.wait,
                 expect: Callable[[float], None] = lambda s: None,
                 step_s: float = 120.0) -> None:
        """``on_pass`` is called at least once a second while the loop waits;
        ``pause(stop, s)`` waits up to ``s`` seconds for ``stop`` (back-off);
        ``expect(s)``: the next call may take ``s`` seconds (``step_s`` for a
        daemon step, the daemon client's timeout)."""
        self.host = host
        self.store = store
        self.daemon = daemon
        self.listener = listener
        self.interval_s = interval_s
        self.clock = clock
        self.on_pass = on_pass
        self.pause = pause
        self.expect = expect
        self.step_s = step_s
        self.listening = True  # the listener's connection works (as far as known)
        self.failing: set[str] = set()  # error kinds logged since the last good pass
        self.last: Desired | None = None   # the last desired state read
        self.initial: dict[str, Actual] | None = None  # what ran before unreported steps
        self.outage_since: float | None = None
        self.last_error = ""

    # -- one pass ---------------------------------------------------------------
    def pass_once(self) -> bool:
        """One pass; True when the daemon runs the desired state. Raises
        FleetUnavailable (or any other error: DatabaseError, SchemaNotCurrent,
        a ChecksumMismatch) when the desired state could not be read (then the
        last one read was applied) or the report could not be written."""
        try:
            self.expect(0.0)
            desired = self.store.desired()
        except Exception:  # unreachable, refused, a released migration edited: hold the line
            if self.last is not None:
                self._converge(self.last)  # hold the line on the last known state
            raise
        self.last = desired
        actual, steps, error = self._converge(desired)
        initial = self.initial
        ok = not error and actual is not None and all(
            converged(d, actual.get(m)) for m, d in desired.models.items())
        self._note_error(error)
        metrics.REVISION.set(desired.revision)
        metrics.CONVERGED.set(1 if ok else 0)
        if not ok:
            metrics.NOT_CONVERGED.inc()
        self.expect(0.0)
        event = self.store.report(self.host, desired.revision, ok, actual, error,
                                  self.interval_s, steps, set(desired.models), initial)
        self.initial = None  # reported: the next change is measured from this report
        if event is not None:
            log.info("recorded: revision %d on %s, %s -> %s", event["revision"], self.host,
                     event["old"], event["new"])
        return ok

    def _converge(self, desired: Desired) -> tuple[dict[str, Actual] | None, list[Any], str]:
        """Run the plan's steps; (actual after, steps done, error or "")."""
        try:
            self.expect(self.step_s)
            actual = self.daemon.models()
        except DaemonUnavailable as exc:
            return None, [], f"daemon: {exc}"
        if self.initial is None:
            self.initial = actual
        done: list[Any] = []
        errors = []
        for model, want in sorted(desired.models.items()):
            for step in plan(want, actual.get(model)):
                try:
                    self.expect(self.step_s)  # a load parses, publishes and warms a model
                    self.daemon.apply(model, step)
                except DaemonRefused as exc:
                    errors.append(f"{model}: {step[0]} {step[1]}: {exc}")
                    break
                except DaemonUnavailable as exc:
                    return None, done, f"daemon: {exc}"
                log.info("revision %d: %s %s %s", desired.revision, model, step[0], step[1])
                done.append([model, step[0], step[1]])
                metrics.STEPS.labels(step[0]).inc()
        if done:
            try:
                self.expect(self.step_s)
                actual = self.daemon.models()
            except DaemonUnavailable as exc:
                return None, done, f"daemon: {exc}"
        return actual, done, "; ".join(errors)

    def _note_error(self, error: str) -> None:
        if error and error != self.last_error:
            log.warning("not converged: %s (retrying every %.0f s)", error, DAEMON_RETRY_S)
        elif not error and self.last_error:
            log.info("converged again")
        self.last_error = error

    # -- the loop ---------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set; never returns early on an error (see the module doc)."""
        backoff = FIRST_BACKOFF_S
        wait = 0.0
        while not stop.is_set():
            try:
                self._wait(wait, stop)
                if stop.is_set():
                    break
                ok = self.pass_once()
                self._recovered()
                backoff = FIRST_BACKOFF_S
                wait = self.interval_s if ok or not self.last_error else DAEMON_RETRY_S
                wait = min(wait, self.interval_s)
                continue
            except FleetUnavailable as exc:
                self._outage(exc)
            except Exception as exc:  # noqa: BLE001 - PostgreSQL refused, a bug: retry, hold
                self._failed(exc)
            end = self.clock() + backoff
            while not self.pause(stop, max(0.0, min(1.0, end - self.clock()))) \
                    and self.clock() < end:
                self.on_pass()
            backoff = min(backoff * 2, max(self.interval_s, FIRST_BACKOFF_S))
            wait = 0.0

    def _wait(self, seconds: float, stop: threading.Event) -> None:
        """Until a change is notified, ``seconds`` pass or ``stop`` is set (a
        stop is noticed within a second). A listener that fails returns at once
        the first time (poll now: the pass notices an outage and holds the last
        state); while it stays down, its reconnects are tried once a second."""
        end = self.clock() + seconds
        while not stop.is_set():
            self.on_pass()  # a heartbeat per second (the systemd watchdog)
            try:
                woke = self.listener.wait(max(0.0, min(1.0, end - self.clock())))
                self.listening = True
                if woke:
                    return
            except FleetError:
                if self.listening:
                    self.listening = False
                    return
                self.pause(stop, max(0.0, min(1.0, end - self.clock())))
            if self.clock() >= end:
                return

    def _failed(self, exc: Exception) -> None:
        kind = type(exc).__name__
        if isinstance(exc, DatabaseError) and exc.pgcode:
            kind = f"{kind}:{exc.pgcode}"
        metrics.ERRORS.labels(type(exc).__name__).inc()
        if kind not in self.failing:
            self.failing.add(kind)
            if isinstance(exc, FleetError):
                log.error("%s; this host keeps its last state and serves; retrying with "
                          "back-off up to %.0f s", exc, self.interval_s)
            else:
                log.exception("reconciler pass failed (%s); retrying with back-off up to "
                              "%.0f s", kind, self.interval_s)

    def _outage(self, exc: Exception) -> None:
        metrics.POSTGRES_DOWN.inc()
        metrics.POSTGRES_UP.set(0)
        if self.outage_since is None:
            self.outage_since = self.clock()
            log.warning("%s; this host keeps its last state and serves; retrying with "
                        "back-off up to %.0f s", exc, self.interval_s)

    def _recovered(self) -> None:
        metrics.POSTGRES_UP.set(1)
        if self.failing:
            log.info("a pass succeeded again after %s", ", ".join(sorted(self.failing)))
            self.failing.clear()
        if self.outage_since is not None:
            log.info("PostgreSQL reachable again after %.1f s", self.clock() - self.outage_since)
            self.outage_since = None


def serve(host: str, dsn: str, interval_s: float, daemon: DaemonOps, step_s: float) -> int:
    """The ``falconctl reconcile`` process: READY=1 once its loop runs (PostgreSQL
    may be down: the host serves regardless), WATCHDOG=1 every second from
    fleet/heartbeat.py while the loop is alive (``step_s``: the longest a daemon
    step may take), SIGTERM/SIGINT stop it (the handlers only set an event)."""
    import signal

    from fleet.heartbeat import Heartbeat
    from fleet.store import FleetStore, Listener
    from service.sdnotify import notify, watchdog_interval

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda n, f: stop.set())
    store, listener = FleetStore(dsn), Listener(dsn)
    watchdog = watchdog_interval() is not None
    heartbeat = Heartbeat(lambda: notify("WATCHDOG=1") if watchdog else None)
    rec = Reconciler(host, store, daemon, listener, interval_s=interval_s,
                     on_pass=heartbeat.beat, expect=heartbeat.expect, step_s=step_s)
    notify("READY=1\nSTATUS=reconciling")
    log.info("reconciling host %s every %.1f s and on notification", host, interval_s)
    heartbeat.start()
    try:
        rec.run(stop)
    finally:
        heartbeat.stop()
        notify("STOPPING=1")
        listener.close()
        store.close()
    log.info("stopped")
    return 0
