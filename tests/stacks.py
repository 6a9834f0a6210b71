"""What tests and benchmarks share to run the platform: a model repository, a
stack's environment (free loopback ports, temp dirs, a unique shared-memory
prefix), a factory that starts stacks and checks nothing is leaked when it
closes them, ``falconctl`` against a stack, and a memcached of our own.
The fixtures over these are in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import shm
from audit.record import AuditRecord
from audit.wal import START, StreamReader, list_streams
from falconctl.stack import Stack, free_port
from tests.modelfactory import write_multi_io_model

__all__ = ["ROOT", "Memcached", "StackFactory", "create_key", "falconctl", "free_port",
           "make_repo", "stack_env", "wal_records", "descendants", "zombie", "wait_grpc_ready"]

ROOT = Path(__file__).resolve().parent.parent


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "models" / "digits", path / "digits",
                    ignore=shutil.ignore_patterns("*.py", "example.json"))
    write_multi_io_model(path)
    return path

def stack_env(tmp: Path, repo: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FALCON_")}
    env.update({
        "FALCON_PATHS_RUN_DIR": str(tmp / "run"),
        "FALCON_PATHS_STATE_DIR": str(tmp / "state"),
        "FALCON_DAEMON_MODEL_REPOSITORY": str(repo),
        "FALCON_DAEMON_SHM_PREFIX": f"ftest{uuid.uuid4().hex[:10]}",
        "FALCON_EDGE_BIND": f"127.0.0.1:{free_port()}",
        "FALCON_EDGE_WORKERS": "2",
        "FALCON_EDGE_THREADS": "4",
        "FALCON_EDGE_METADATA_TTL_S": "0.5",
        "FALCON_EDGE_DRAIN_S": "0",  # tests that stop an edge under load set it
        "FALCON_HAPROXY_BIND": f"127.0.0.1:{free_port()}",
        "FALCON_HAPROXY_STATS_BIND": f"127.0.0.1:{free_port()}",
        "FALCON_GRPC_BIND": f"127.0.0.1:{free_port()}",
        "FALCON_GRPC_PUBLIC_BIND": f"127.0.0.1:{free_port()}",
        "FALCON_CONFIG": str(tmp / "falcon.toml"),
        # Most tests call the API without a key; tests of auth turn it on
        # (make_stack(FALCON_AUTH_ENABLED="true")).
        "FALCON_AUTH_ENABLED": "false",
    })
    (tmp / "falcon.toml").write_text("# tests configure everything through the environment\n")
    env.update(overrides)
    return env

class StackFactory:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.stacks: list[Stack] = []

    def __call__(self, *, start: bool = True, audit: bool = False, repo: Path | None = None,
                 **env: str) -> Stack:
        tmp = self.tmp / f"stack{len(self.stacks)}"
        tmp.mkdir(parents=True)
        repo = repo or make_repo(tmp / "models")
        stack = Stack(stack_env(tmp, repo, **env), tmp / "logs")
        self.stacks.append(stack)
        if start:
            stack.start(audit=audit)
        return stack

    def close(self) -> list[str]:
        leaked = []
        for stack in self.stacks:
            stack.stop()
            prefix = stack.env["FALCON_DAEMON_SHM_PREFIX"]
            for name in shm.list_segments(prefix):
                leaked.append(name)
                shm.unlink(name)
            shm.remove_dir(prefix)  # left by a daemon killed on purpose
        return leaked

def falconctl(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    """``falconctl ARGS`` with the stack's configuration; fails the test if it fails."""
    out = subprocess.run([sys.executable, "-m", "falconctl", *args], env=stack.env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out

def create_key(stack: Stack, name: str, *args: str) -> str:
    """A new API key for ``stack`` (``falconctl keys create --name NAME ARGS``)."""
    return falconctl(stack, "keys", "create", "--name", name, *args).stdout.strip()

class Memcached:
    """A memcached of our own on a free loopback port (stoppable, restartable)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Memcached:
        self.proc = subprocess.Popen(["memcached", "-u", "nobody", "-l", "127.0.0.1",
                                      "-p", str(self.port), "-U", "0", "-m", "64"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("memcached did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)


def wal_records(stack: Stack) -> list[AuditRecord]:
    """Every audit record in ``stack``'s WAL, all streams, shipped or not."""
    wal_dir = Path(stack.settings.wal_dir)
    out = []
    for stream in list_streams(wal_dir):
        reader = StreamReader(wal_dir, stream)
        out += [AuditRecord.from_payload(p) for _, p in reader.read(START, max_records=100000)]
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, read from /proc."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            kids = [int(x) for x in task.read_text().split()]
            out += kids
            todo += kids
    return out


def zombie(pid: int) -> bool:
    """Whether ``pid`` has exited and waits to be reaped."""
    try:
        return re.search(r"\) Z ", Path(f"/proc/{pid}/stat").read_text()) is not None
    except OSError:
        return False


def wait_grpc_ready(target: str, timeout: float = 30.0) -> None:
    """Until HAProxy's health check has found the gRPC process up."""
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    client = tg.InferenceServerClient(target)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.is_server_ready():
                return
        except InferenceServerException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no gRPC answer through HAProxy at {target}")
