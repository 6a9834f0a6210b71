"""systemd's notification protocol (sd_notify(3)), without libsystemd.

``notify("READY=1")`` sends one datagram to ``$NOTIFY_SOCKET`` (a path, or an
abstract socket when it starts with ``@``). Outside systemd the variable is
unset and every call is a no-op returning False: nothing pretends to have
told anyone.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping


def notify(state: str, env: Mapping[str, str] | None = None,
           socket_factory: Callable[..., socket.socket] = socket.socket) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``, ``"WATCHDOG=1"``, ``"STOPPING=1"``).

    Returns True if a datagram was sent. Raises OSError only if the socket is
    set but unreachable (a misconfiguration worth seeing).
    """
    env = os.environ if env is None else env
    addr = env.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket_factory(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(addr)
        sock.sendall(state.encode())
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``$WATCHDOG_USEC``), or None if
    the watchdog is off or meant for another process (``$WATCHDOG_PID``)."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6
