"""``falconctl up`` supervises: kill -9 of each component under load through
HAProxy is followed by a restart (predictions resume, failures in the gap are
503s with Retry-After, connection errors only while HAProxy itself is down, the
audit table holds exactly the 200s the client saw), the embedded PostgreSQL
too; a component that dies at once on every start stops the stack with a
message naming it and exit 1."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psycopg2

import shm
from tests.loadgen import LoadGen
from tests.pg_fixture import make_root
from tests.stacks import ROOT, make_repo, stack_env
from tests.stacks import descendants as _descendants
from tests.stacks import zombie as _zombie

DIGITS = np.load(ROOT / "tests" / "data" / "digits_test.npz")
COMPONENTS = {  # name in up's messages -> how to tell its process among up's children
    "daemon": ["-m", "falconctl", "daemon"],
    "edge": ["-m", "falconctl", "edge"],
    "haproxy": ["haproxy"],
    "memcached": ["memcached"],
    "shipper": ["-m", "falconctl", "ship"],
}


class Up:
    """A ``falconctl up`` process; its output is collected by a thread."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc = subprocess.Popen([sys.executable, "-m", "falconctl", "up", "--root",
                                      str(ROOT)], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, count: int = 1, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.output.count(text) < count:
            assert time.monotonic() < deadline, f"no {text!r} x{count}:\n{self.output}"
            assert self.proc.poll() is None or self.output.count(text) >= count, \
                f"falconctl up exited {self.proc.returncode}:\n{self.output}"
            time.sleep(0.05)

    def pid_of(self, name: str) -> int:
        """The pid of component ``name``: a child of ours whose argv holds its marker."""
        marker = COMPONENTS[name]
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
            for pid in task.read_text().split():
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
                except OSError:
                    continue
                args = [Path(argv[0]).name, *argv[1:]] if len(marker) == 1 else argv
                if any(args[i:i + len(marker)] == marker for i in range(len(args))):
                    return int(pid)
        raise AssertionError(f"no {name} among up's children")

    def wait_for_new_pid(self, name: str, old: int, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if (pid := self.pid_of(name)) != old:
                    return pid
            except AssertionError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{name} was not started again:\n{self.output}")

    @property
    def pid_file(self) -> Path:
        return Path(self.env["FALCON_PATHS_STATE_DIR"]) / "postgres" / "postmaster.pid"

    def audit_dsn(self) -> str:
        """The embedded PostgreSQL's DSN, from its postmaster.pid (line 4: the port)."""
        port = self.pid_file.read_text().splitlines()[3]
        return f"host=127.0.0.1 port={port} dbname=falcon user=postgres"

    def postmaster_pid(self) -> int:
        try:
            return int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0


@contextmanager
def running_up(**overrides: str) -> Iterator[Up]:
    """`falconctl up` on free ports in a fresh directory (the embedded PostgreSQL runs
    as 'postgres', so not under pytest's 0700 temp dir); its own copy of the models."""
    root = make_root("falcon-upsup-")
    env = stack_env(root, make_repo(root / "models"), **overrides)
    up = Up(env)
    try:
        up.wait_for("Ctrl-C stops everything", timeout=120)
        yield up
    finally:
        if up.proc.poll() is None:
            os.kill(up.proc.pid, signal.SIGINT)
            try:
                up.proc.wait(60)
            except subprocess.TimeoutExpired:
                up.proc.kill()
                up.proc.wait()
        prefix = env["FALCON_DAEMON_SHM_PREFIX"]
        for name in shm.list_segments(prefix):  # left only by a daemon that never came back
            shm.unlink(name)
        shm.remove_dir(prefix)
        shutil.rmtree(root, ignore_errors=True)


def audit_rows(dsn: str) -> dict[str, int]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT request_id, count(*) FROM audit.predictions GROUP BY 1")
        rows = dict(cur.fetchall())
    conn.close()
    return rows


def test_kill9_of_each_component_under_load_restarts_it_and_loses_nothing():
    with running_up() as up:
        dsn = up.audit_dsn()
        load = LoadGen(up.env["FALCON_HAPROXY_BIND"], DIGITS["X"], threads=4, timeout=5).start()
        windows: dict[str, tuple[float, float]] = {}  # kill -> first 200 sent after it
        seen = set(_descendants(up.proc.pid))  # every process up ran, the killed ones too
        try:
            time.sleep(1.0)
            for name in COMPONENTS:
                pid = up.pid_of(name)
                killed = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                up.wait_for(f"{name} exited unexpectedly (killed by SIGKILL)", timeout=10)
                up.wait_for(f"restarting {name}", timeout=20)
                up.wait_for_new_pid(name, pid)
                seen.update(_descendants(up.proc.pid))
                windows[name] = (killed, first_200_after(load, killed, within=15))
                time.sleep(0.5)
            postmaster = up.postmaster_pid()  # not our child: pg_ctl daemonizes it
            os.kill(postmaster, signal.SIGKILL)
            up.wait_for("postgres exited unexpectedly (postmaster gone)", timeout=10)
            up.wait_for("restarting postgres", timeout=20)
            deadline = time.monotonic() + 30
            while up.postmaster_pid() in (0, postmaster):
                assert time.monotonic() < deadline, up.output
                time.sleep(0.1)
            time.sleep(1.0)
        finally:
            outcomes = load.stop()
        assert up.proc.poll() is None, up.output
        statuses = {o.status for o in outcomes}
        assert statuses <= {200, 503, 0}, statuses
        assert all(o.retry_after for o in outcomes if o.status == 503)
        h_killed, h_back = windows["haproxy"]
        lost = [o for o in outcomes if o.status == 0]
        assert all(o.started + o.seconds >= h_killed and o.started <= h_back for o in lost)
        ok = load.ok()
        assert len(ok) > 100, statuses
        rows = wait_for_rows(dsn, set(ok))
        assert [rid for rid, count in rows.items() if count > 1] == []
        # a row without a 200: only a response lost with HAProxy (written, then cut)
        assert set(rows) - set(ok) <= {o.request_id for o in lost}
        daemon_log = Path(up.env["FALCON_PATHS_STATE_DIR"]) / "logs" / "daemon.log"
        assert "re-attached" in daemon_log.read_text()
        seen.update(_descendants(up.proc.pid))
        os.kill(up.proc.pid, signal.SIGTERM)  # as Ctrl-C (test_up.py): everything, exit 0
        assert up.proc.wait(60) == 0, up.output
        up.wait_for("stopped:")
        assert "daemon exit 0" in up.output and "shipper exit 0" in up.output, up.output
        assert shm.list_segments(up.env["FALCON_DAEMON_SHM_PREFIX"]) == []
        # nothing left running: not the restarted components, not the killed edge's workers
        assert [p for p in seen if Path(f"/proc/{p}").exists() and not _zombie(p)] == []


def first_200_after(load: LoadGen, since: float, within: float) -> float:
    """When the first request sent after ``since`` that got a 200 was sent."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        sent = [o.started for o in list(load.outcomes) if o.status == 200 and o.started > since]
        if sent:
            return min(sent)
        time.sleep(0.05)
    raise AssertionError(f"no 200 within {within} s: {[o.status for o in load.outcomes[-20:]]}")


def wait_for_rows(dsn: str, expected: set[str], timeout: float = 30.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            rows = audit_rows(dsn)
        except psycopg2.OperationalError:  # still recovering from its kill -9
            assert time.monotonic() < deadline, "the audit database did not come back"
            time.sleep(0.25)
            continue
        if expected <= set(rows) or time.monotonic() > deadline:
            missing = expected - set(rows)
            assert not missing, f"{len(missing)} of {len(expected)} 200s not in the audit table"
            return rows
        time.sleep(0.25)


def test_a_component_that_dies_at_every_start_stops_the_stack_naming_it():
    with running_up() as up:
        repo = Path(up.env["FALCON_DAEMON_MODEL_REPOSITORY"])
        repo.rename(repo.with_name("models-gone"))  # every new daemon exits 1 at once
        os.kill(up.pid_of("daemon"), signal.SIGKILL)
        code = up.proc.wait(60)
        up.wait_for("stopped:")
        assert code == 1, up.output
        assert re.search(r"daemon exited 5 times within 60 s \(last: exit status 1\)",
                         up.output), up.output
        assert "is not a directory" in up.output  # the tail of its log says why
        assert up.output.count("restarting daemon") == 4, up.output
