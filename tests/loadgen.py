"""A bounded load generator for tests: N threads posting digits rows, every
outcome recorded (request id, status, what the client received)."""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tests.httpx_lite import request


@dataclass
class Outcome:
    request_id: str
    status: int           # 0: no HTTP answer (connection reset, timeout)
    doc: Any = None
    sent_rows: list[list[float]] | None = None
    seconds: float = 0.0  # as the client saw it
    started: float = 0.0  # time.monotonic() when it was sent
    retry_after: str | None = None  # the answer's Retry-After header


@dataclass
class LoadGen:
    addr: str
    rows: np.ndarray
    threads: int = 4
    model: str = "digits"
    rows_per_request: int = 0  # 0: 1 to 3 at random
    max_requests: int = 20000
    timeout: float = 10.0
    netns: str | None = None   # send from this network namespace (tests/netns.py)
    send_ids: bool = True      # False: no X-Request-Id; the id is the one the answer names
                               # (HAProxy's request key), "" when there was no answer
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> LoadGen:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for t in self._workers:
            t.join(self.timeout + 5)
        return self.outcomes

    def _run(self, seed: int) -> None:
        if self.netns is None:
            self._loop(seed)
            return
        from tests.netns import entered

        with entered(self.netns):
            self._loop(seed)

    def _loop(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not self._stop.is_set() and len(self.outcomes) < self.max_requests:
            size = self.rows_per_request or int(rng.integers(1, 4))
            rows = self.rows[rng.integers(0, len(self.rows), size=size)].tolist()
            rid = uuid.uuid4().hex if self.send_ids else ""
            started = time.monotonic()
            try:
                ans = request(self.addr, "POST", f"/v1/models/{self.model}/predict",
                              json.dumps({"instances": rows}),
                              {"X-Request-Id": rid} if rid else {}, timeout=self.timeout)
                rid = rid or ans.headers.get("x-request-id", "")
                outcome = Outcome(rid, ans.status, ans.json() if ans.status == 200 else None, rows,
                                  retry_after=ans.headers.get("retry-after"))
            except (OSError, ValueError, http.client.HTTPException):  # no HTTP answer
                outcome = Outcome(rid, 0)
                time.sleep(0.01)
            outcome.seconds, outcome.started = time.monotonic() - started, started
            with self._lock:
                self.outcomes.append(outcome)

    def ok(self) -> dict[str, Outcome]:
        return {o.request_id: o for o in self.outcomes if o.status == 200}


@dataclass
class OpenLoopRun:
    """What :func:`open_loop` offered and got back."""
    outcomes: list[Outcome]
    offered_rate: float  # requests/s it was asked for
    late_s: float        # how far behind schedule the last request was sent

    def served_rate(self, seconds: float) -> float:
        return sum(o.status == 200 for o in self.outcomes) / seconds


def encode_bodies(rows: np.ndarray, *, rows_per_request: int, count: int,
                  seed: int) -> list[bytes]:
    """``count`` distinct ``/v1`` predict bodies of ``rows_per_request`` rows drawn
    from ``rows``, encoded once, so a load loop spends nothing on JSON."""
    rng = np.random.default_rng(seed)
    return [json.dumps({"instances": rows[rng.integers(0, len(rows), size=rows_per_request)]
                        .tolist()}).encode() for _ in range(count)]


def open_loop(addr: str, bodies: list[bytes], *, rate: float, seconds: float, model: str,
              timeout: float = 10.0, max_in_flight: int = 1024) -> OpenLoopRun:
    """Fire requests at a fixed ``rate`` whatever the answers (an open-loop
    load: it does not slow down when the server does), each on its own thread,
    cycling through the pre-encoded ``bodies`` (:func:`encode_bodies`).

    A generator that cannot keep its schedule turns into a closed loop and measures
    nothing: ``late_s`` says how late the last request left, for the caller to check.
    Bodies repeat once the list is exhausted: run it against a stack without the
    prediction cache, or pass as many bodies as requests."""
    from concurrent.futures import ThreadPoolExecutor

    outcomes: list[Outcome] = []
    lock = threading.Lock()
    late = 0.0

    def one(body: bytes, due: float) -> None:
        nonlocal late
        rid, started = uuid.uuid4().hex, time.monotonic()
        with lock:
            late = max(late, started - due)
        try:
            ans = request(addr, "POST", f"/v1/models/{model}/predict", body,
                          {"X-Request-Id": rid, "Content-Type": "application/json"},
                          timeout=timeout)
            outcome = Outcome(rid, ans.status)
        except (OSError, ValueError, http.client.HTTPException):  # no HTTP answer
            outcome = Outcome(rid, 0)
        outcome.seconds, outcome.started = time.monotonic() - started, started
        with lock:
            outcomes.append(outcome)

    with ThreadPoolExecutor(max_workers=max_in_flight) as pool:
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, bodies[i % len(bodies)], due)
    return OpenLoopRun(outcomes, rate, late)
