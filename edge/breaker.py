"""Circuit breakers that do not serialise a worker's threads.

pybreaker's ``CircuitBreaker.call`` holds the breaker's lock for the whole
protected call, so one breaker shared by a gthread worker's threads would let
only one of them talk to the daemon (or memcached) at a time. :class:`Breaker`
keeps pybreaker's state machine (closed -> open after ``fail_max`` failures ->
half-open after ``reset_timeout`` -> closed on a success) but takes the lock
only around the state transitions, never across the call.

NOTE: this relies on pybreaker's state objects (``before_call``,
``_handle_error``, ``_handle_success``), stable since pybreaker 0.x;
``tests/unit/test_breaker.py`` pins the behaviour.

Each breaker's state is exported as ``falcon_breaker_state{breaker}``
(0 closed, 1 half-open, 2 open; the max over the host's processes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pybreaker

from edge.metrics import BREAKER_STATE

T = TypeVar("T")

STATE_VALUE = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_HALF_OPEN: 1, pybreaker.STATE_OPEN: 2}

Open = pybreaker.CircuitBreakerError


class _Exporter(pybreaker.CircuitBreakerListener):
    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        BREAKER_STATE.labels(cb.name).set(STATE_VALUE.get(new.name, 0))


class Breaker:
    """A breaker named ``name``: failures are the exceptions in ``count`` (others,
    like a client's bad input, pass through and count as successes)."""

    def __init__(self, name: str, *, fail_max: int = 5, reset_timeout: float = 2.0,
                 count: Iterable[type[BaseException]] = (Exception,)) -> None:
        self.count = tuple(count)
        self.cb = pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=reset_timeout,
                                           name=name, listeners=[_Exporter()])
        BREAKER_STATE.labels(name).set(0)

    @property
    def name(self) -> str:
        return str(self.cb.name)

    @property
    def state(self) -> str:
        return str(self.cb.current_state)

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``func`` unless the breaker is open (then raise :data:`Open` at once)."""
        with self.cb._lock:
            self._admit()
        try:
            result = func(*args, **kwargs)
        except self.count as exc:
            with self.cb._lock:
                try:
                    self.cb.state._handle_error(exc, reraise=False)
                except Open:
                    pass  # this failure tripped it; the caller gets the real error
            raise
        with self.cb._lock:
            self.cb.state._handle_success()
        return result

    def _admit(self) -> None:
        """Under the lock: raise :data:`Open` while open within the reset timeout;
        after it, half-open, and this call is the trial. (pybreaker's open-state
        ``before_call`` would run the trial itself, inside the lock, and the
        caller would then run it a second time.)"""
        if self.cb.current_state == pybreaker.STATE_OPEN:
            opened = self.cb._state_storage.opened_at
            if opened is not None and \
                    datetime.now(UTC) < opened + timedelta(seconds=self.cb.reset_timeout):
                raise Open("Timeout not elapsed yet, circuit breaker still open")
            self.cb.half_open()
            _Exporter().state_change(self.cb, None, self.cb.state)
        # closed, half-open: pybreaker's states admit every call

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a trial call through."""
        opened = self.cb._state_storage.opened_at
        if self.state != pybreaker.STATE_OPEN or opened is None:
            return 1.0
        elapsed = (datetime.now(UTC) - opened).total_seconds()
        return max(0.1, self.cb.reset_timeout - elapsed)
