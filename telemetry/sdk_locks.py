"""The OpenTelemetry SDK's per-span locks as C locks in a gevent worker.

Usage (what :meth:`telemetry.tracing.Tracing.start` does, after the fork)::

    sdk_locks.use_native_locks()   # nothing unless gevent has patched threading

Every SDK span makes four locks (the span's, its attributes', its events' and its
links') with ``threading.Lock()``; in a gevent worker that name is gevent's
cooperative lock, a Python object whose creation and acquisition the edge's profile
showed as the largest single cost of a sampled request's spans (``python -m
bench.profile_path --env FALCON_TRACING_ENDPOINT=... FALCON_TRACING_SAMPLE_RATIO=1.0``).
A cooperative lock is only needed when its holder may yield to another greenlet; the
SDK's critical sections (setting attributes, links, status, the end time) do no I/O,
so they cannot switch greenlets, and the interpreter's own lock
(``_thread.allocate_lock``) serves, as it does in a process gevent has not patched
(the daemon, the gthread edge). Only the three SDK modules' ``threading`` name is
redirected (to a view of the module whose ``Lock`` is the C one); gevent's patching
of everything else is untouched.
"""

from __future__ import annotations

import importlib
import threading
import types
from typing import Any

SDK_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.attributes", "opentelemetry.sdk.util")


class _NativeLockThreading(types.ModuleType):
    """``threading`` as the module sees it, but ``Lock`` is the interpreter's C lock."""

    def __init__(self, lock: Any) -> None:
        super().__init__("threading")
        self.Lock = lock

    def __getattr__(self, name: str) -> Any:
        return getattr(threading, name)


def use_native_locks() -> bool:
    """Redirect the SDK modules' ``threading.Lock`` to the C lock when gevent has
    patched ``threading`` in this process; True if it did. Idempotent."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    if not monkey.is_module_patched("threading"):
        return False
    view = _NativeLockThreading(monkey.get_original("_thread", "allocate_lock"))
    for name in SDK_MODULES:
        module = importlib.import_module(name)
        if getattr(module, "threading", None) is threading:
            module.threading = view  # type: ignore[attr-defined]
    return True
