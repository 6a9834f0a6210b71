"""Shared fixtures: real processes on free ports in temp dirs.

``make_stack`` builds a model repository in a temp dir (the shipped digits demo
plus the synthetic multi-input model), picks free loopback ports and a unique
shared-memory prefix, and starts daemon, edge and HAProxy exactly as
``falconctl up`` does. Teardown stops only what it started, by pid, and checks
that no shared-memory segment with the test's prefix is left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from modelfactory import write_multi_io_model  # noqa: E402
from pg_fixture import pg_cluster, pg_dsn  # noqa: E402,F401  (fixtures: session cluster, DB per module)

import shm  # noqa: E402
from falconctl.stack import Stack, free_port  # noqa: E402


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


@pytest.fixture(scope="module")
def module_stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackFactory]:
    factory = StackFactory(tmp_path_factory.mktemp("stacks"))
    yield factory
    assert factory.close() == [], "shared-memory segments left behind"


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    factory = StackFactory(tmp_path)
    yield factory
    assert factory.close() == [], "shared-memory segments left behind"


def falconctl(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    """``falconctl ARGS`` with the stack's configuration; fails the test if it fails."""
    out = subprocess.run([sys.executable, "-m", "falconctl", *args], env=stack.env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def create_key(stack: Stack, name: str, *args: str) -> str:
    """A new API key for ``stack`` (``falconctl keys create --name NAME ARGS``)."""
    return falconctl(stack, "keys", "create", "--name", name, *args).stdout.strip()


@pytest.fixture(scope="module")
def stack(module_stacks: StackFactory) -> Stack:
    """One running stack (daemon + 2 edge workers + HAProxy) shared by a module."""
    return module_stacks()


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


@pytest.fixture
def memcached() -> Iterator[Memcached]:
    server = Memcached().start()
    yield server
    server.stop()
