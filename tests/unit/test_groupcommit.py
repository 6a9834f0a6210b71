"""audit.groupcommit's protocol with threads and a fake owner (no files, no servers):
one writer, many writers sharing a sync, a failed sync failing every waiter it covered
and never retried, the owner failing meanwhile, interrupted waiters and leaders (the
waiter's lock is a seam that can be interrupted, as a killed greenlet's would be), and
the three sync policies' entry points."""

from __future__ import annotations

import errno
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from audit.groupcommit import GroupCommit
from audit.segment import WalFailed

TIMEOUT = 10.0


class Interrupted(Exception):
    """What a killed greenlet or an interrupted thread would raise while it waits."""


class Owner:
    """A fake owner: appends are counted in bytes, a sync point is the byte count
    when the sync was claimed. ``hook(n)`` runs inside the n-th sync (0-based): it may
    block or raise."""

    def __init__(self, before_sync: Callable[[], None] | None = None,
                 lock_factory: Callable[[], Any] = threading.Lock) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.attempts: list[int] = []    # the point of every sync begun
        self.durable = 0                 # what durable() was told, at most
        self.stops: list[bool] = []      # one entry per stop(): was a sync in flight?
        self.hook: Callable[[int], None] = lambda n: None
        self.commit: GroupCommit[int] = GroupCommit(
            self.cond, point=lambda: self.commit.written, sync=self.sync,
            durable=self.mark_durable, stop=lambda: self.stops.append(self.commit.syncing),
            before_sync=before_sync, name="t", lock_factory=lock_factory)

    def sync(self, point: int) -> None:
        n = len(self.attempts)
        self.attempts.append(point)
        self.hook(n)

    def mark_durable(self, point: int) -> None:
        self.durable = max(self.durable, point)

    def append(self, size: int = 10) -> int:
        with self.cond:
            self.commit.check()
            return self.commit.appended(size)

    def commit_one(self) -> tuple[int, bool]:
        """Append and wait (policy batch); the ticket and whether it was durable then."""
        ticket = self.append()
        self.commit.wait(ticket)
        with self.cond:
            return ticket, self.commit.synced >= ticket and self.durable >= ticket


class Runner:
    """Threads whose outcome (a value or the exception) is kept by name."""

    def __init__(self) -> None:
        self.results: dict[str, Any] = {}
        self.threads: list[threading.Thread] = []

    def start(self, name: str, fn: Callable[[], Any]) -> None:
        def run() -> None:
            try:
                self.results[name] = fn()
            except BaseException as exc:  # noqa: BLE001 - kept for the asserts
                self.results[name] = exc
        t = threading.Thread(target=run, name=name, daemon=True)
        self.threads.append(t)
        t.start()

    def join(self) -> dict[str, Any]:
        for t in self.threads:
            t.join(TIMEOUT)
            assert not t.is_alive(), f"{t.name} never returned (a lost wake-up)"
        return self.results


def until(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def failing(n: int) -> None:
    """A sync hook: every sync fails with EIO."""
    raise OSError(errno.EIO, "injected")


def gate_first_sync(owner: Owner, error: BaseException | None = None) -> threading.Event:
    """Hold the first sync until the returned event is set; then raise ``error``."""
    gate = threading.Event()

    def hook(n: int) -> None:
        if n == 0:
            gate.wait(TIMEOUT)
            if error is not None:
                raise error
    owner.hook = hook
    return gate


# --- policy batch: wait -------------------------------------------------------------------

def test_a_single_writer_leads_one_sync_per_commit() -> None:
    owner = Owner()
    for i in range(5):
        ticket, durable = owner.commit_one()
        assert durable and owner.attempts == [10 * (j + 1) for j in range(i + 1)]
    owner.commit.wait(ticket)  # already covered: no sync
    assert len(owner.attempts) == 5 and owner.commit.waiting == 0


def test_many_writers_share_one_sync() -> None:
    owner = Owner()
    gate = gate_first_sync(owner)
    run = Runner()
    run.start("leader", owner.commit_one)
    until(lambda: owner.attempts == [10])  # the leader's sync is in flight
    for i in range(8):
        run.start(f"w{i}", owner.commit_one)
    until(lambda: owner.commit.waiting == 8)
    gate.set()
    results = run.join()
    assert all(durable for _, durable in results.values())  # each returned durable
    # the leader's sync covered only its own record; the first waiter led one for all 8
    assert owner.attempts == [10, 90] and owner.commit.waiting == 0


def owner_with_joiners(run: Runner, n: int, then: BaseException | None = None) -> Owner:
    """An owner whose first leader, in its ``before_sync``, lets ``n`` others append and
    queue (so its sync covers them), then raises ``then`` if given."""
    def before_sync() -> None:
        if run.threads:
            return
        for i in range(n):
            run.start(f"w{i}", owner.commit_one)
        until(lambda: owner.commit.waiting == n)
        if then is not None:
            raise then

    owner = Owner(before_sync=before_sync)
    return owner


def test_appends_during_before_sync_share_the_leaders_sync() -> None:
    run = Runner()
    owner = owner_with_joiners(run, 5)
    assert owner.commit_one()[1]
    results = run.join()
    assert all(durable for _, durable in results.values())
    assert owner.attempts == [60]  # one sync for six commits


def test_a_failed_sync_fails_every_waiter_it_covered_and_is_never_retried() -> None:
    run = Runner()
    owner = owner_with_joiners(run, 5)  # the failing sync covers the five others
    owner.hook = failing
    with pytest.raises(WalFailed):
        owner.commit_one()
    results = run.join()
    assert all(isinstance(r, WalFailed) for r in results.values())
    assert owner.attempts == [60] and owner.durable == 0
    assert owner.stops == [False]  # the owner was stopped once, after the sync ended
    assert isinstance(owner.commit.failed, OSError)
    with pytest.raises(WalFailed):
        owner.append()
    with pytest.raises(WalFailed):
        owner.commit.wait(10)
    assert owner.commit.lead() is False
    assert owner.attempts == [60]  # never retried


def test_a_failed_sync_fails_the_waiters_it_did_not_cover_too() -> None:
    owner = Owner()
    gate = gate_first_sync(owner, OSError(errno.EIO, "injected"))
    run = Runner()
    run.start("leader", owner.commit_one)
    until(lambda: len(owner.attempts) == 1)
    for i in range(4):
        run.start(f"w{i}", owner.commit_one)
    until(lambda: owner.commit.waiting == 4)
    gate.set()
    results = run.join()
    assert all(isinstance(r, WalFailed) for r in results.values())
    assert owner.attempts == [10] and owner.stops == [False]


def test_the_owner_failing_during_a_sync_is_stopped_when_the_sync_ends() -> None:
    owner = Owner()
    gate = gate_first_sync(owner)
    run = Runner()
    run.start("leader", owner.commit_one)
    until(lambda: len(owner.attempts) == 1)
    run.start("waiter", owner.commit_one)
    until(lambda: owner.commit.waiting == 1)
    with owner.cond:  # e.g. an appender's write failed
        error = owner.commit.fail(OSError(errno.ENOSPC, "disk full"))
    assert isinstance(error, WalFailed)
    assert owner.stops == []  # not while the leader's sync uses the file
    gate.set()
    results = run.join()
    assert results["leader"] == (10, True)  # its sync succeeded: its record is durable
    assert isinstance(results["waiter"], WalFailed)
    assert owner.stops == [False]


# --- interrupted waiters and leaders ------------------------------------------------------

class InterruptibleLock:
    """A waiter's lock whose second acquire (the wait) can be interrupted: at once by
    :meth:`interrupt`, or when woken (``on_wake``), as if the kill arrived just then."""

    def __init__(self, on_wake: bool = False) -> None:
        self._cond = threading.Condition()
        self._held = self._interrupted = False
        self._on_wake = on_wake
        self._acquires = 0

    def acquire(self) -> bool:
        with self._cond:
            self._acquires += 1
            while self._held and not self._interrupted:
                self._cond.wait()
            if self._interrupted or (self._on_wake and self._acquires > 1):
                raise Interrupted()
            self._held = True
            return True

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def interrupt(self) -> None:
        with self._cond:
            self._interrupted = True
            self._cond.notify_all()


class Locks:
    """The lock factory: thread ``name`` gets ``kind(name)``'s lock, kept by name."""

    def __init__(self, on_wake: tuple[str, ...] = ()) -> None:
        self.on_wake = on_wake
        self.by_name: dict[str, InterruptibleLock] = {}

    def __call__(self) -> InterruptibleLock:
        name = threading.current_thread().name
        lock = InterruptibleLock(on_wake=name in self.on_wake)
        self.by_name[name] = lock
        return lock


def test_a_waiter_interrupted_while_queued_leaves_and_wedges_no_one() -> None:
    locks = Locks()
    owner = Owner(lock_factory=locks)
    gate = gate_first_sync(owner)
    run = Runner()
    run.start("leader", owner.commit_one)
    until(lambda: len(owner.attempts) == 1)
    for name in ("a", "b", "c"):
        run.start(name, owner.commit_one)
        until(lambda: owner.commit.waiting == len(run.threads) - 1)
    locks.by_name["a"].interrupt()
    until(lambda: "a" in run.results)
    assert isinstance(run.results["a"], Interrupted) and owner.commit.waiting == 2
    gate.set()
    results = run.join()
    assert results["leader"][1] and results["b"][1] and results["c"][1]
    assert owner.attempts == [10, 40] and owner.commit.failed is None


def test_a_waiter_interrupted_as_it_is_told_to_lead_passes_the_lead_on() -> None:
    locks = Locks(on_wake=("a",))
    owner = Owner(lock_factory=locks)
    gate = gate_first_sync(owner)
    run = Runner()
    run.start("leader", owner.commit_one)
    until(lambda: len(owner.attempts) == 1)
    run.start("a", owner.commit_one)  # first in the queue: told to lead next
    until(lambda: owner.commit.waiting == 1)
    run.start("b", owner.commit_one)
    until(lambda: owner.commit.waiting == 2)
    gate.set()
    results = run.join()
    assert isinstance(results["a"], Interrupted)
    assert results["leader"][1] and results["b"][1]  # b was handed the lead, not left waiting
    assert owner.attempts == [10, 30] and not owner.commit.syncing


def test_an_interrupted_leader_makes_nothing_durable_and_the_next_waiter_leads() -> None:
    run = Runner()
    owner = owner_with_joiners(run, 3, Interrupted())  # e.g. killed in its yield
    with pytest.raises(Interrupted):
        owner.commit_one()
    results = run.join()
    assert all(durable for _, durable in results.values())
    assert owner.attempts == [40]  # one sync, led by a waiter, covering every append
    assert owner.commit.failed is None and owner.stops == []


def test_a_sync_that_raises_something_else_is_not_durable_and_fails_nothing() -> None:
    owner = Owner()
    gate = gate_first_sync(owner, RuntimeError("not an OSError"))
    run = Runner()
    run.start("leader", owner.commit_one)
    until(lambda: len(owner.attempts) == 1)
    run.start("w", owner.commit_one)
    until(lambda: owner.commit.waiting == 1)
    gate.set()
    results = run.join()
    assert isinstance(results["leader"], RuntimeError)
    assert results["w"][1] and owner.attempts == [10, 20] and owner.commit.failed is None


# --- policies always and interval ---------------------------------------------------------

def test_always_syncs_under_the_lock_and_a_failure_stops_the_owner() -> None:
    owner = Owner()
    with owner.cond:
        ticket = owner.commit.appended(10)
        owner.commit.sync_locked()
    assert owner.commit.synced == ticket and owner.durable == 10
    owner.hook = failing
    with owner.cond:
        owner.commit.appended(10)
        with pytest.raises(WalFailed):
            owner.commit.sync_locked()
    assert owner.stops == [False] and owner.commit.synced == 10
    with pytest.raises(WalFailed):
        owner.append()


def test_interval_leads_only_when_something_is_unsynced_and_nothing_in_flight() -> None:
    owner = Owner()
    assert owner.commit.lead() is False and owner.attempts == []
    owner.append()
    owner.append()
    assert owner.commit.lead() is True and owner.attempts == [20] and owner.durable == 20
    assert owner.commit.lead() is False
    gate = gate_first_sync(owner)
    owner.attempts.clear()
    run = Runner()
    run.start("batch", owner.commit_one)
    until(lambda: len(owner.attempts) == 1)
    owner.append()
    assert owner.commit.lead() is False  # a sync is in flight; the next round takes the rest
    gate.set()
    run.join()
    assert owner.commit.lead() is True and owner.commit.synced == owner.commit.written == 40


def test_a_failed_interval_sync_raises_and_fails_the_stream() -> None:
    owner = Owner()
    owner.hook = failing
    owner.append()
    with pytest.raises(WalFailed):
        owner.commit.lead()
    assert owner.stops == [False] and owner.commit.lead() is False


# --- under gevent, as in an edge worker ---------------------------------------------------

GEVENT_APPENDS = """
import os, sys, tempfile
from pathlib import Path
import audit.writer  # imported before gevent patches threading, as gunicorn's preload does
from gevent import monkey
monkey.patch_all()
import gevent
from edge.app import cooperative, greenlet_yield

with tempfile.TemporaryDirectory() as tmp:
    w = audit.writer.WalWriter(Path(tmp), "s", sync="batch", min_free_bytes=0,
                               fsync=cooperative(os.fdatasync), before_sync=greenlet_yield())
    def work(i):
        for n in range(20):
            w.append(b"%d-%d" % (i, n))
    greenlets = [gevent.spawn(work, i) for i in range(20)]
    gevent.joinall(greenlets, timeout=30)
    print(sum(g.successful() for g in greenlets))
    w.close()
"""


def test_greenlets_share_syncs_when_the_module_was_imported_before_patching() -> None:
    """A waiter's lock made from ``threading.Lock`` as it was at import time (not
    patched) would block the whole worker: its greenlets never return."""
    try:
        done = subprocess.run([sys.executable, "-c", GEVENT_APPENDS], capture_output=True,
                              text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("greenlets appending to the WAL hung")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "20"


GEVENT_KILLS = """
import os, sys, tempfile, time
from pathlib import Path
real_sleep = time.sleep
from gevent import monkey
monkey.patch_all()
import gevent
from audit.reader import StreamReader
from audit.segment import START
from audit.writer import WalWriter
from edge.app import cooperative, greenlet_yield

def slow_fsync(fd):  # in gevent's thread pool: the hub keeps running the others
    real_sleep(0.02)
    os.fdatasync(fd)

with tempfile.TemporaryDirectory() as tmp:
    w = WalWriter(Path(tmp), "s", sync="batch", min_free_bytes=0,
                  fsync=cooperative(slow_fsync), before_sync=greenlet_yield())
    done = []
    def work(i):
        w.append(b"first-%d" % i)
        done.append(i)
    greenlets = [gevent.spawn(work, 0)]
    gevent.sleep(0.005)              # 0 leads a sync that covers its record only
    greenlets += [gevent.spawn(work, i) for i in range(1, 10)]
    deadline = time.monotonic() + 5  # 1..9 append and wait, 1 first in the queue (polled:
    while w._commit.waiting < 9 and time.monotonic() < deadline:  # a loaded machine is slow)
        gevent.sleep(0.001)
    queued = w._commit.waiting
    killed = (0, 1, 5)               # the leader, the waiter due to lead next, another
    for i in killed:
        greenlets[i].kill(block=False)
    gevent.joinall(greenlets, timeout=20)
    alive = [i for i in range(10) if i not in killed]
    assert all(greenlets[i].successful() for i in alive), "a survivor failed or hung"
    assert sorted(done) == alive, done
    again = [gevent.spawn(w.append, b"again-%d" % i) for i in range(5)]
    gevent.joinall(again, timeout=20)
    assert all(g.successful() for g in again), "the stream wedged after the kills"
    w.close()
    got = [p for _, p in StreamReader(Path(tmp), "s").read(START, max_records=100,
                                                          max_bytes=1 << 20)]
    assert {b"first-%d" % i for i in alive} <= set(got), got
    print(queued)
"""


def test_greenlets_killed_while_committing_wedge_no_one() -> None:
    """Greenlets killed while they wait for (or lead) a sync, as gevent kills them:
    the others return, durable, and later appends still commit."""
    done = subprocess.run([sys.executable, "-c", GEVENT_KILLS], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "9"  # the kills did hit queued waiters
