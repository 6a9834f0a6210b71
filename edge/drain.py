"""Graceful stop of the edge: not-ready first, then finish, then exit.

On SIGTERM the gunicorn arbiter (:class:`DrainingArbiter`) first raises a
flag shared with every worker — ``/v2/health/ready`` then answers 503, so
HAProxy's health check takes this edge out of rotation and stops sending it
new work (and stops reusing its idle keep-alive connections) — keeps serving
for ``edge.drain_s``, and only then lets gunicorn's graceful stop finish the
requests in flight and exit. SIGINT/SIGQUIT stay immediate.

The flag is one byte of anonymous shared memory created in the arbiter before
the workers are forked (``preload_app``), so every worker sees it at once.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from typing import Any

from gunicorn.arbiter import Arbiter

log = logging.getLogger(__name__)

_FLAG: Any = multiprocessing.RawValue("b", 0)


def draining() -> bool:
    return bool(_FLAG.value)


class DrainingArbiter(Arbiter):
    drain_s: float = 0.0

    def handle_term(self) -> None:
        if self.drain_s > 0 and not _FLAG.value:
            _FLAG.value = 1
            log.info("SIGTERM: reporting not-ready for %.1fs before stopping", self.drain_s)
            deadline = time.monotonic() + self.drain_s
            while time.monotonic() < deadline:  # keep supervising the workers meanwhile
                self.murder_workers()
                self.manage_workers()
                time.sleep(0.1)
        super().handle_term()
