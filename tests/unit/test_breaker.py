"""edge.breaker: pybreaker's state machine without its lock across the call."""

from __future__ import annotations

import threading
import time

import pybreaker
import pytest

from edge.breaker import Breaker, Open
from edge.metrics import BREAKER_STATE as STATE


class Down(Exception):
    pass


class BadInput(Exception):
    pass


def fail() -> None:
    raise Down("dependency down")


def test_concurrent_calls_are_not_serialised():
    breaker = Breaker("t-concurrent")
    barrier = threading.Barrier(4, timeout=5)  # breaks unless 4 calls are inside at once
    results: list[int] = []

    def work() -> None:
        results.append(breaker.call(barrier.wait))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == [0, 1, 2, 3]


def test_pybreaker_own_call_would_serialise():
    """Why the wrapper exists: the same barrier deadlocks under pybreaker.call."""
    cb = pybreaker.CircuitBreaker()
    barrier = threading.Barrier(2, timeout=0.5)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            cb.call(barrier.wait)
        except threading.BrokenBarrierError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert errors


def test_opens_after_fail_max_then_half_opens_and_closes():
    breaker = Breaker("t-states", fail_max=3, reset_timeout=0.2, count=(Down,))
    for _ in range(3):
        with pytest.raises(Down):
            breaker.call(fail)
    assert breaker.state == "open"
    assert STATE.labels("t-states")._value.get() == 2
    with pytest.raises(Open):
        breaker.call(lambda: 1)
    assert 0 < breaker.retry_after() <= 0.2
    time.sleep(0.25)
    calls = []
    assert breaker.call(lambda: calls.append(1) or 7) == 7
    assert calls == [1]  # the trial ran once (pybreaker's open state would run it twice)
    assert breaker.state == "closed"
    assert STATE.labels("t-states")._value.get() == 0


def test_a_failed_trial_opens_it_again_and_never_holds_the_lock():
    breaker = Breaker("t-trial", fail_max=1, reset_timeout=0.1, count=(Down,))
    with pytest.raises(Down):
        breaker.call(fail)
    time.sleep(0.15)
    inside = threading.Event()
    release = threading.Event()

    def slow_trial() -> None:
        inside.set()
        release.wait(5)
        raise Down("still down")

    trial = threading.Thread(target=lambda: pytest.raises(Down, breaker.call, slow_trial))
    trial.start()
    assert inside.wait(5)
    assert breaker.state == "half-open"
    assert STATE.labels("t-trial")._value.get() == 1
    # the breaker's lock is free during the trial: another thread can take it
    got = []

    def take_lock() -> None:
        if breaker.cb._lock.acquire(timeout=1):
            got.append(True)
            breaker.cb._lock.release()
    probe = threading.Thread(target=take_lock)
    probe.start()
    probe.join(2)
    assert got == [True]
    release.set()
    trial.join(5)
    assert breaker.state == "open"


def test_errors_outside_count_do_not_trip_it():
    breaker = Breaker("t-exclude", fail_max=2, count=(Down,))

    def bad() -> None:
        raise BadInput("client error")

    for _ in range(5):
        with pytest.raises(BadInput):
            breaker.call(bad)
    assert breaker.state == "closed"
