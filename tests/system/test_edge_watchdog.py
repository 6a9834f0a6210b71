"""edge/watchdog.py without systemd: gunicorn under a fake $NOTIFY_SOCKET.

READY=1 comes from our thread (never gunicorn's premature one), once a worker
answers; WATCHDOG=1 follows every half period while the edge answers, stops
when its workers hang, and resumes when they recover.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from falconctl.stack import free_port, http_status
from tests.system.systemd_falcon import FALCONCTL


class Notifications:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.got: list[tuple[float, str]] = []

    def collect(self, seconds: float) -> list[tuple[float, str]]:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self.got.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                pass
        return self.got

    def pings_between(self, start: float, end: float) -> list[float]:
        return [t for t, m in self.got if m == "WATCHDOG=1" and start <= t <= end]


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Notifications, str]]:
    notes = Notifications(tmp_path / "notify")
    bind = f"127.0.0.1:{free_port()}"
    (tmp_path / "falcon.toml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FALCON_", "NOTIFY_", "WATCHDOG_"))}
    env.update(NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="2000000",
               FALCON_CONFIG=str(tmp_path / "falcon.toml"),
               FALCON_PATHS_RUN_DIR=str(tmp_path / "run"),
               FALCON_PATHS_STATE_DIR=str(tmp_path / "state"),
               FALCON_EDGE_BIND=bind, FALCON_EDGE_WORKERS="2", FALCON_EDGE_DRAIN_S="0")
    with open(tmp_path / "edge.log", "wb") as log:
        proc = subprocess.Popen([FALCONCTL, "edge"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc, notes, bind
    finally:
        for pid in children(proc.pid):
            os.kill(pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        notes.sock.close()


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_ready_once_a_worker_answers_then_pings_while_healthy(edge):
    proc, notes, bind = edge
    host, port = bind.rsplit(":", 1)
    deadline = time.monotonic() + 60
    while not any(m.startswith("READY=1") for _, m in notes.got):
        assert time.monotonic() < deadline and proc.poll() is None, notes.got
        notes.collect(0.2)
    ready = [m for _, m in notes.got if m.startswith("READY=1")]
    assert ready == [ready[0]] and "serving" in ready[0], notes.got  # not gunicorn's own
    assert http_status(host, int(port), "/v2/health/live", timeout=10.0) == 200
    t0 = time.monotonic()
    notes.collect(3.5)
    assert len(notes.pings_between(t0, time.monotonic())) >= 2, notes.got
    workers = children(proc.pid)
    assert len(workers) == 2

    for pid in workers:  # hung workers: alive (no gunicorn timeout yet), answering nothing
        os.kill(pid, signal.SIGSTOP)
    hung = time.monotonic()
    notes.collect(5.0)
    # at most the pings of the first period (2 s) after the hang, then silence
    late = notes.pings_between(hung + 3.0, time.monotonic())
    assert late == [], notes.got
    for pid in workers:
        os.kill(pid, signal.SIGCONT)
    back = time.monotonic()
    notes.collect(4.0)
    assert notes.pings_between(back, time.monotonic()), notes.got
    assert proc.poll() is None
