"""Prometheus multiprocess mode for every process of a host.

The edge's gunicorn workers, the daemon and the shipper all write their
metrics into one directory (``<run_dir>/metrics``); the edge's ``GET /metrics``
merges them, so one scrape shows the whole host. prometheus-client picks its
storage when first imported, so :func:`enable` must run before any module that
declares metrics is imported.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from shm.names import pid_alive

ENV = "PROMETHEUS_MULTIPROC_DIR"
_DB = re.compile(r"^[a-z_]+_(\d+)\.db$")


def metrics_dir(run_dir: str) -> Path:
    return Path(run_dir) / "metrics"


def enable(run_dir: str) -> Path:
    """Point prometheus-client at the host's metrics directory and remove the
    files of processes that no longer exist (their counters restart from zero,
    which ``rate()`` handles as a counter reset)."""
    path = metrics_dir(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    for entry in path.iterdir():
        m = _DB.match(entry.name)
        if m and not pid_alive(int(m.group(1))):
            entry.unlink(missing_ok=True)
    os.environ[ENV] = str(path)
    return path

