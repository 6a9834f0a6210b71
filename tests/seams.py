"""Instrumented seams shared by tests and benchmarks (real behaviour, counted)."""

from __future__ import annotations

import os
import threading


class CountingFsync:
    """The WAL writer's fsync seam (``WalWriter(fsync=...)``): the real
    fdatasync, counted (thread-safe)."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        with self._lock:
            self.calls += 1
        os.fdatasync(fd)
