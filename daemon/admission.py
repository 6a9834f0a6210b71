"""Admission of infer requests: at most ``max_inflight`` at once, none while draining.

How to use it (from the event loop only; it is not thread-safe)::

    admission = Admission(max_inflight=256)
    problem = admission.refusal(deadline_ms)    # None, or (wire error type, message)
    with admission.holding(lv):                 # counted until the answer is ready
        answer = await batcher.infer(...)
    await admission.idle.wait()                 # what a drain waits for

A request beyond ``max_inflight`` is refused at once (``Overloaded``, retryable)
instead of queueing without bound; while draining, new requests are refused
(``Draining``, retryable) and the admitted ones, queued ones included, finish. A
request without a time budget left (``deadline_ms`` missing or not positive) is
``DeadlineExceeded`` before anything else. The refusal and the count are checked
and taken in one turn of the loop (no ``await`` between), so ``max_inflight`` holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from daemon import metrics
from daemon.loader import LoadedVersion
from wire import messages


class Admission:
    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.inflight = 0
        self.draining = False
        self.idle = asyncio.Event()
        self.idle.set()

    def refusal(self, deadline_ms: int | None) -> tuple[str, str] | None:
        """Why a request with ``deadline_ms`` left cannot be admitted now, or None."""
        if deadline_ms is None or deadline_ms <= 0:
            return messages.DEADLINE_EXCEEDED, "deadline_ms missing or already expired"
        if self.draining:
            return messages.DRAINING, "daemon is draining"
        if self.inflight >= self.max_inflight:
            return messages.OVERLOADED, f"{self.inflight} requests in flight"
        return None

    @contextmanager
    def holding(self, lv: LoadedVersion) -> Iterator[None]:
        """Count one request of ``lv`` in flight (here, in ``lv.inflight`` that an
        unload waits on, and in the gauge) for the ``with`` block."""
        self.inflight += 1
        lv.inflight += 1
        metrics.INFLIGHT.inc()
        self.idle.clear()
        try:
            yield
        finally:
            lv.inflight -= 1
            self.inflight -= 1
            metrics.INFLIGHT.dec()
            if self.inflight == 0:
                self.idle.set()
