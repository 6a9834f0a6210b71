"""Test hosts as network namespaces: a private network of our own on one machine.

:class:`Network` creates named network namespaces (``ip netns add``), each
with its loopback up, and joins them to one bridge with veth pairs::

    ns <tag>-switch:  bridge br0  ──┬── veth ──  ns <tag>-front   10.<n>.0.1/24
                                    ├── veth ──  ns <tag>-a       10.<n>.0.2/24
                                    └── veth ──  ns <tag>-b       10.<n>.0.3/24

The bridge lives in a namespace of its own too, so no interface or packet of
the test ever touches the machine's own network namespace; ``close()``
deletes every namespace (and with them their interfaces).

Processes go into a namespace with ``nsenter --net=/run/netns/<name>`` (it
execs: the pid we hold is the process itself). The test process itself talks
to a namespace from one thread at a time with :func:`entered`: Linux keeps the
network namespace per *thread* (``setns(2)``), and a socket stays in the
namespace it was created in, so a connection opened inside keeps working
after the thread has switched back.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from falconctl.stack import Proc, Stack

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the body with the calling thread in network namespace ``name``."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")


@dataclass
class Network:
    """Namespaces ``hosts`` (name -> last octet) on one bridged /24."""

    hosts: dict[str, int]
    tag: str = field(default_factory=lambda: "fx" + uuid.uuid4().hex[:6])
    subnet: int = 213
    created: list[str] = field(default_factory=list)

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def addr(self, host: str) -> str:
        return f"10.{self.subnet}.0.{self.hosts[host]}"

    def wrap(self, host: str) -> list[str]:
        """Command prefix that runs a program inside ``host``'s namespace."""
        return ["nsenter", f"--net=/run/netns/{self.ns(host)}", "--"]

    def up(self) -> Network:
        switch = self.ns("switch")
        try:
            self._add(switch)
            ip("-n", switch, "link", "add", "br0", "type", "bridge")
            ip("-n", switch, "link", "set", "br0", "up")
            for i, host in enumerate(self.hosts):
                name = self.ns(host)
                self._add(name)
                # veth pair created inside the host's namespace, one end moved to the switch
                ip("-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}")
                ip("-n", name, "link", "set", f"p{i}", "netns", switch)
                ip("-n", switch, "link", "set", f"p{i}", "master", "br0")
                ip("-n", switch, "link", "set", f"p{i}", "up")
                ip("-n", name, "addr", "add", f"{self.addr(host)}/24", "dev", "eth0")
                ip("-n", name, "link", "set", "eth0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def _add(self, name: str) -> None:
        ip("netns", "add", name)
        self.created.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def close(self) -> None:
        """Kill whatever still runs in our namespaces (ours: a test that failed
        half-way), then delete them."""
        for name in reversed(self.created):
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                                  text=True, timeout=30).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)
        self.created.clear()


@dataclass
class NetStack(Stack):
    """A :class:`~falconctl.stack.Stack` whose processes run in network
    namespace ``netns`` (its readiness checks too)."""

    netns: str = ""

    def _spawn(self, name: str, argv: list[str], extra_env: Mapping[str, str] = {}) -> Proc:
        wrap = ["nsenter", f"--net=/run/netns/{self.netns}", "--"]
        return super()._spawn(name, [*wrap, *argv], extra_env)

    def _wait(self, proc: Proc, check: object, timeout: float) -> None:
        def inside() -> bool:
            with entered(self.netns):
                return bool(check())  # type: ignore[operator]

        super()._wait(proc, inside, timeout)

    def kill(self) -> None:
        """kill -9 every process of this host (each runs in its own process
        group: gunicorn's workers go with their arbiter)."""
        for proc in self.procs.values():
            if proc.alive():
                os.killpg(proc.popen.pid, signal.SIGKILL)
        for proc in self.procs.values():
            proc.popen.wait(10)
