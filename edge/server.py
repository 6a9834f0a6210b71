"""Run the edge under gunicorn from the platform's settings.

Worker class ``edge.worker_class``, ``gevent`` by default: each worker process
serves its requests as greenlets on one OS thread (HAProxy sends it at most
``edge.threads`` at once: its server maxconn is workers x threads), so a
request costs no thread hand-off: the greenlet that parsed it sends its frame
to the daemon and sleeps in the hub until the answer is routed to it.
``gthread`` (a thread pool per worker) stays available. Both keep HTTP/1.1
connections alive so HAProxy can reuse them. All requests of a worker share one
multiplexed daemon connection (``edge.daemon_client``), so they reach the daemon
together and can be batched.

Under gevent the process is monkey-patched (``falconctl edge``) before anything
that creates a lock, a thread or a socket is imported -- in the arbiter, since the
app is preloaded there and forked -- so every lock, ``threading.Thread``, socket
and sleep in the edge, the audit writer and the libraries is cooperative.

Tracing (``[tracing]``, ``telemetry``): the arbiter builds the app with a
:class:`~telemetry.Tracing` that has no exporter yet; each worker starts it in
``post_worker_init`` (after the fork and gevent's hub re-init), so its span
exporter is the worker's own background thread -- a greenlet under gevent, whose
HTTP calls to the collector are cooperative like every other socket.
"""

from __future__ import annotations

import os
import re
from typing import Any

from gunicorn.app.base import BaseApplication

from edge import watchdog
from settings import Settings
from telemetry import Tracing

WORKER_CLASSES = {"gevent": "edge.gevent_worker.GeventWorker", "gthread": "gthread"}


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    edge = settings.edge
    return {
        "bind": [edge.bind],
        "workers": edge.workers,
        "worker_class": WORKER_CLASSES[edge.worker_class],
        "threads": edge.threads,  # gthread: the pool's size
        # gevent: a greenlet per open connection, idle keep-alive ones included, so
        # far more than the requests HAProxy sends at once (its server maxconn is
        # workers x threads): a full pool would leave health checks unaccepted.
        "worker_connections": max(1000, 4 * edge.threads),
        "keepalive": 30,
        "graceful_timeout": edge.graceful_timeout_s,
        # a worker stuck past every deadline is killed and replaced
        "timeout": max(30, 2 * edge.deadline_ms // 1000 + 5),
        "proc_name": "falcon-edge",
        # PERF: build the app once in the arbiter and fork it: a worker then
        # costs ~7 MB private instead of ~22 MB (measured by bench/memory.py).
        # Safe: the daemon connection and the WAL stream are opened lazily, per
        # process, after the fork.
        "preload_app": True,
        "control_socket": os.path.join(settings.paths.run_dir,
                                       "edge-" + re.sub(r"\W", "_", edge.bind) + ".ctl"),
        "child_exit": child_exit,
        "on_starting": watchdog.on_starting,  # systemd: READY=1 once a worker answers,
        "when_ready": watchdog.when_ready,  # then WATCHDOG=1 while healthy (edge/watchdog.py)
        "limit_request_line": 8190,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
    }


def child_exit(server: Any, worker: Any) -> None:
    """A worker is gone: drop its live gauges from the merged metrics."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


class EdgeApplication(BaseApplication):
    """gunicorn configured from :class:`settings.Settings`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tracing = Tracing.from_settings(settings, "edge")
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.settings).items():
            self.cfg.set(key, value)
        self.cfg.set("post_worker_init", self.post_worker_init)  # tracing's exporter

    def post_worker_init(self, worker: Any) -> None:
        """In each worker after the fork: start its span exporter (tracing on)."""
        self.tracing.start()

    def load(self) -> Any:
        from edge.app import from_settings

        return from_settings(self.settings, self.tracing)


    def run(self) -> None:
        from edge.drain import DrainingArbiter

        DrainingArbiter.drain_s = self.settings.edge.drain_s
        DrainingArbiter(self).run()


def run(settings: Settings) -> int:
    EdgeApplication(settings).run()
    return 0
