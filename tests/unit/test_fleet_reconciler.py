"""fleet.reconciler's loop on fakes: a daemon that records the steps it is
given, a store that can be "down", a listener that never wakes. What a pass
does, what it reports, and what happens while PostgreSQL or the daemon is away."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from prometheus_client import REGISTRY

from fleet.errors import DaemonRefused, DaemonUnavailable, FleetUnavailable
from fleet.plan import Actual
from fleet.reconciler import Reconciler
from fleet.state import ModelState
from fleet.store import Desired


class FakeDaemon:
    def __init__(self, models: dict[str, Actual]) -> None:
        self.state = {m: (set(a.versions), dict(a.split)) for m, a in models.items()}
        self.steps: list[tuple[str, str, Any]] = []
        self.down = False
        self.missing: set[str] = set()  # versions whose files are not in the repository

    def models(self) -> dict[str, Actual]:
        if self.down:
            raise DaemonUnavailable("no socket")
        return {m: Actual(tuple(sorted(v, key=int)), dict(s)) for m, (v, s) in self.state.items()}

    def apply(self, model: str, step: tuple[str, Any]) -> None:
        if self.down:
            raise DaemonUnavailable("no socket")
        op, arg = step
        versions, split = self.state.setdefault(model, (set(), {}))
        if op == "load":
            if arg in self.missing:
                raise DaemonRefused(f"model {model!r} has no version {arg!r} in the repository")
            versions.add(arg)
        elif op == "unload":
            versions.discard(arg)
        else:
            assert set(arg) <= versions, (arg, versions)  # the daemon's own rule
            self.state[model] = (versions, dict(arg))
        self.steps.append((model, op, arg))


class FakeStore:
    def __init__(self, desired: Desired) -> None:
        self.current = desired
        self.down = False
        self.reports: list[tuple[Any, ...]] = []

    def desired(self) -> Desired:
        if self.down:
            raise FleetUnavailable("PostgreSQL unreachable: connection refused")
        return self.current

    def report(self, *args: Any) -> None:
        if self.down:
            raise FleetUnavailable("PostgreSQL unreachable: connection refused")
        self.reports.append(args)


class Quiet:
    def wait(self, timeout: float) -> bool:
        return False


def desired(revision: int, **models: ModelState) -> Desired:
    return Desired(revision, dict(models))


def test_a_pass_converges_the_managed_models_and_reports_it() -> None:
    daemon = FakeDaemon({"m": Actual(("1",), {}), "own": Actual(("5",), {})})
    store = FakeStore(desired(2, m=ModelState(("1", "2"), {"1": 100})))
    rec = Reconciler("host-a", store, daemon, Quiet())
    assert rec.pass_once() is True
    assert daemon.steps == [("m", "split", {"1": 100}), ("m", "load", "2")]
    host, seen, ok, actual, error, _, steps, managed, initial = store.reports[-1]
    assert (host, seen, ok, error, managed) == ("host-a", 2, True, "", {"m"})
    assert actual["m"] == Actual(("1", "2"), {"1": 100}) and actual["own"] == Actual(("5",), {})
    assert steps == [["m", "split", {"1": 100}], ["m", "load", "2"]]
    assert initial is not None and initial["m"] == Actual(("1",), {})  # the baseline
    assert rec.pass_once() is True and daemon.steps[2:] == []  # nothing more to do


def test_a_refused_step_is_reported_and_the_other_models_still_converge(
        caplog: pytest.LogCaptureFixture) -> None:
    daemon = FakeDaemon({"a": Actual(("1",), {"1": 1}), "b": Actual(("1",), {"1": 1})})
    daemon.missing = {"2"}
    store = FakeStore(desired(3, a=ModelState(("1", "2"), {"1": 1}),
                              b=ModelState(("1",), {"1": 100})))
    rec = Reconciler("host-a", store, daemon, Quiet())
    with caplog.at_level(logging.WARNING, "fleet.reconciler"):
        assert rec.pass_once() is False
        assert rec.pass_once() is False
    assert ("b", "split", {"1": 100}) in daemon.steps
    error = store.reports[-1][4]
    assert error.startswith("a: load 2:") and "no version '2'" in error
    assert sum("not converged" in r.message for r in caplog.records) == 1  # logged once


def test_the_daemon_down_is_reported_without_an_actual_state() -> None:
    daemon = FakeDaemon({})
    daemon.down = True
    store = FakeStore(desired(1, m=ModelState(("1",), {"1": 100})))
    assert Reconciler("h", store, daemon, Quiet()).pass_once() is False
    _, _, ok, actual, error, *_ = store.reports[-1]
    assert (ok, actual) == (False, None) and error.startswith("daemon:")


def test_postgresql_down_holds_the_last_state_and_is_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    daemon = FakeDaemon({"m": Actual(("1",), {})})
    store = FakeStore(desired(1, m=ModelState(("1",), {"1": 100})))
    clock = [0.0]
    stop = threading.Event()
    passes = [0]

    def tick() -> None:  # called at least once a second of (fake) time
        clock[0] += 1.0
        passes[0] += 1
        if passes[0] == 3:
            store.down = True
            # meanwhile the daemon restarts and loads its whole repository, split kept
            daemon.state["m"] = ({"1", "9"}, {"1": 100})
        if passes[0] == 40:
            store.down = False
        if passes[0] == 45:
            stop.set()

    def pause(ev: threading.Event, seconds: float) -> bool:
        clock[0] += seconds
        return ev.is_set()

    rec = Reconciler("h", store, daemon, Quiet(), interval_s=1.0, clock=lambda: clock[0],
                     on_pass=tick, pause=pause)
    outages = REGISTRY.get_sample_value("falcon_fleet_postgres_unavailable_total") or 0.0
    with caplog.at_level(logging.INFO, "fleet.reconciler"):
        rec.run(stop)
    # every failed attempt counted (one a second here: the back-off stops at interval_s)
    counted = REGISTRY.get_sample_value("falcon_fleet_postgres_unavailable_total") - outages
    assert 30 <= counted <= 40, counted
    assert REGISTRY.get_sample_value("falcon_fleet_postgres_up") == 1.0
    # version 9 (not desired) was unloaded from the last desired state read, with no database
    assert ("m", "unload", "9") in daemon.steps
    messages = [r.message for r in caplog.records]
    assert sum("PostgreSQL unreachable" in m for m in messages) == 1, messages
    assert sum("reachable again" in m for m in messages) == 1, messages
    assert store.reports[-1][3]["m"] == Actual(("1",), {"1": 100})  # reported once back


class DownWithTheStore:
    """A listener on the same database as ``store``: it raises while the store is
    down (its reconnect fails too), as fleet.store.Listener does."""

    def __init__(self, store: FakeStore) -> None:
        self.store = store

    def wait(self, timeout: float) -> bool:
        if self.store.down:
            raise FleetUnavailable("PostgreSQL unreachable: connection refused")
        return False


def test_a_daemon_restarted_during_an_outage_is_trimmed_before_postgresql_returns() -> None:
    # before the fix the failing listener sent every loop straight to back-off: no pass
    # ran, and the fallback to the last desired state was unreachable
    daemon = FakeDaemon({"m": Actual(("1",), {})})
    store = FakeStore(desired(1, m=ModelState(("1",), {"1": 100})))
    clock = [0.0]
    stop = threading.Event()
    ticks = [0]
    applied_while_down: list[tuple[str, str, Any]] = []
    apply = daemon.apply

    def recording_apply(model: str, step: tuple[str, Any]) -> None:
        apply(model, step)
        if store.down:
            applied_while_down.append(daemon.steps[-1])

    daemon.apply = recording_apply  # type: ignore[method-assign]

    def tick() -> None:
        clock[0] += 1.0
        ticks[0] += 1
        if ticks[0] == 3:
            store.down = True
            # the daemon restarts: its whole repository loaded, its persisted split lost
            daemon.state["m"] = ({"1", "9"}, {})
        if ticks[0] == 60:
            stop.set()  # PostgreSQL never returned

    def pause(ev: threading.Event, seconds: float) -> bool:
        clock[0] += seconds
        return ev.is_set()

    rec = Reconciler("h", store, daemon, DownWithTheStore(store), interval_s=5.0,
                     clock=lambda: clock[0], on_pass=tick, pause=pause)
    rec.run(stop)
    assert store.down
    assert ("m", "split", {"1": 100}) in applied_while_down, daemon.steps
    assert ("m", "unload", "9") in applied_while_down, daemon.steps
    assert daemon.state["m"] == ({"1"}, {"1": 100})


def test_a_database_refusal_or_a_bug_is_logged_once_and_retried_never_fatal(
        caplog: pytest.LogCaptureFixture) -> None:
    from fleet.errors import DatabaseError

    daemon = FakeDaemon({"m": Actual(("1",), {"1": 100})})
    store = FakeStore(desired(1, m=ModelState(("1",), {"1": 100})))
    failures: list[Exception] = [
        *[DatabaseError("PostgreSQL refused: cannot execute INSERT in a read-only "
                        "transaction", "25006")] * 4,
        *[RuntimeError("a bug")] * 3]
    real_report = store.report

    def report(*args: Any) -> None:
        if failures:
            raise failures.pop(0)
        real_report(*args)

    store.report = report  # type: ignore[method-assign]
    clock = [0.0]
    stop = threading.Event()

    def tick() -> None:
        clock[0] += 1.0
        if clock[0] > 200:
            stop.set()

    def pause(ev: threading.Event, seconds: float) -> bool:
        clock[0] += seconds
        if not failures and store.reports:
            ev.set()
        return ev.is_set()

    rec = Reconciler("h", store, daemon, Quiet(), interval_s=2.0, clock=lambda: clock[0],
                     on_pass=tick, pause=pause)
    with caplog.at_level(logging.INFO, "fleet.reconciler"):
        rec.run(stop)  # before the fix: DatabaseError escaped run() and the process exited
    assert failures == [] and store.reports  # every failure retried, then a report
    messages = [r.message for r in caplog.records]
    assert sum("read-only transaction" in m for m in messages) == 1, messages
    assert sum("pass failed (RuntimeError)" in m for m in messages) == 1, messages
    assert sum("succeeded again" in m for m in messages) == 1, messages
    assert REGISTRY.get_sample_value("falcon_fleet_errors_total",
                                     {"kind": "DatabaseError"}) >= 4


def test_steps_and_database_calls_announce_their_bound_to_the_watchdog() -> None:
    daemon = FakeDaemon({"m": Actual(("1", "9"), {})})
    store = FakeStore(desired(1, m=ModelState(("1",), {"1": 100})))
    bounds: list[float] = []
    rec = Reconciler("h", store, daemon, Quiet(), expect=bounds.append, step_s=120.0)
    assert rec.pass_once() is True
    # desired(), models(), split, unload, models(), report()
    assert bounds == [0.0, 120.0, 120.0, 120.0, 120.0, 0.0]


def test_the_heartbeat_pings_through_a_long_step_and_stops_when_the_loop_is_stuck() -> None:
    import time

    from fleet.heartbeat import Heartbeat

    pings: list[float] = []
    hb = Heartbeat(lambda: pings.append(time.monotonic()), every_s=0.05, idle_s=0.3)
    hb.start()
    try:
        hb.expect(0.6)  # a step that may take 0.6 s: pings go on past idle_s
        time.sleep(0.6)
        assert hb.alive() and len(pings) >= 8
        time.sleep(0.5)  # no beat: the loop is stuck beyond its bound
        assert not hb.alive()
        stuck = len(pings)
        time.sleep(0.3)
        assert len(pings) == stuck  # systemd's WatchdogSec restarts it
        hb.beat()
        time.sleep(0.2)
        assert len(pings) > stuck
    finally:
        hb.stop()


def test_any_failure_to_read_the_desired_state_still_holds_the_last_one() -> None:
    from audit.migrate import ChecksumMismatch

    daemon = FakeDaemon({"m": Actual(("1",), {"1": 100})})
    store = FakeStore(desired(1, m=ModelState(("1",), {"1": 100})))
    rec = Reconciler("h", store, daemon, Quiet())
    assert rec.pass_once() is True
    daemon.state["m"] = ({"1", "9"}, {})  # the daemon restarted

    def edited() -> Desired:
        raise ChecksumMismatch("0007_fleet_state.sql changed after it was applied")

    store.desired = edited  # type: ignore[method-assign]
    with pytest.raises(ChecksumMismatch):
        rec.pass_once()
    assert daemon.state["m"] == ({"1"}, {"1": 100})
