"""The daemon's way to a remote trace collector: ``falcon-daemon.service.d/tracing.conf``.

    text = dropin_text(settings.tracing.endpoint)   # None: no drop-in needed
    write_dropin(unit_dir, text, report_add)         # writes, keeps or removes it

``falcon-daemon.service`` (ops/systemd/) reaches loopback only
(``IPAddressDeny=any`` + ``IPAddressAllow=localhost``): enough for the usual
OpenTelemetry Collector agent on each host (``http://127.0.0.1:4318/v1/traces``).
When ``tracing.endpoint`` names another host, ``falconctl install`` calls
:func:`install_dropin`, which resolves that name *at install time* and allows
exactly its addresses with ``IPAddressAllow=`` in a drop-in (systemd's allow list
wins over its deny list for a matching address, systemd.resource-control(5)).
Tracing off or on loopback: a drop-in left by an earlier install is removed. The
endpoint is read as the units see it: the installed ``falcon.toml`` overridden by
``falcon.env``. Re-running ``falconctl install`` after the endpoint (or the
collector's addresses) changed refreshes the file; a name that does not resolve
is an error naming ``tracing.endpoint``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import settings as settings_mod
from service.durable import write_atomically
from settings import ConfigError

DROPIN = "falcon-daemon.service.d/tracing.conf"
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]
HEADER = """\
# Written by `falconctl install` because tracing.endpoint ({endpoint}) names a
# collector off this host: the daemon may reach its addresses, resolved when
# `falconctl install` ran, besides loopback (falcon-daemon.service allows only
# localhost). Re-run `falconctl install` after changing tracing.endpoint or when
# the collector's addresses change: it rewrites this file, or removes it when
# tracing is off or the collector is on loopback. Do not edit: it is regenerated.
[Service]
"""


class DropinError(RuntimeError):
    """tracing.endpoint cannot be turned into addresses; the message names it."""


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to for a TCP connection (getaddrinfo)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


def collector_addresses(endpoint: str, resolver: Resolver = resolve) -> list[Address]:
    """The collector's addresses outside loopback, sorted (IPv4 first); empty when
    tracing is off (``endpoint`` empty) or every address is a loopback one."""
    if not endpoint:
        return []
    try:
        url = urlsplit(endpoint)
        host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    except ValueError as exc:
        raise DropinError(f"tracing.endpoint {endpoint!r}: {exc}") from None
    if not host:
        raise DropinError(f"tracing.endpoint {endpoint!r}: no host")
    try:
        found = [ipaddress.ip_address(host)]
    except ValueError:
        found = _resolved(endpoint, host, port, resolver)
    return sorted({a for a in found if not a.is_loopback}, key=lambda a: (a.version, int(a)))


def _resolved(endpoint: str, host: str, port: int, resolver: Resolver) -> list[Address]:
    try:
        found = [ipaddress.ip_address(a.partition("%")[0]) for a in resolver(host, port)]
    except OSError as exc:
        raise DropinError(f"tracing.endpoint {endpoint!r}: cannot resolve {host!r} "
                          f"({exc}); the daemon's unit needs its addresses") from None
    if not found:
        raise DropinError(f"tracing.endpoint {endpoint!r}: {host!r} has no address")
    return found


def dropin_text(endpoint: str, resolver: Resolver = resolve) -> str | None:
    """The drop-in for ``endpoint``, or None when the unit's own loopback allowance
    suffices (tracing off, or a collector on this host)."""
    addresses = collector_addresses(endpoint, resolver)
    if not addresses:
        return None
    if any(c in endpoint for c in "\n\r"):
        raise DropinError(f"tracing.endpoint {endpoint!r}: a line break")
    return HEADER.format(endpoint=endpoint) + \
        "IPAddressAllow=" + " ".join(str(a) for a in addresses) + "\n"


def installed_endpoint(etc: Path) -> str:
    """``tracing.endpoint`` as the units see it: ``etc/falcon.toml`` overridden by
    ``etc/falcon.env`` (their ``EnvironmentFile=``)."""
    env = {}
    try:
        for line in (etc / "falcon.env").read_text().splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith("#"):
                env[key.strip()] = value.strip().strip('"\'')
    except FileNotFoundError:
        pass
    env["FALCON_CONFIG"] = str(etc / "falcon.toml")
    try:
        return settings_mod.load(env=env).tracing.endpoint
    except ConfigError as exc:
        raise DropinError(f"{etc}: configuration error: {exc}") from None


def write_dropin(unit_dir: Path, text: str | None, add: Callable[[str, str], None]) -> None:
    """Make ``unit_dir/DROPIN`` hold ``text`` (mode 0644), or remove it when None;
    ``add(what, status)`` reports created/updated/unchanged/removed/skipped."""
    path = unit_dir / DROPIN
    if text is None:
        if path.exists():
            path.unlink()
            try:
                path.parent.rmdir()  # only when nothing else is in it
            except OSError:
                pass
            add(f"{path} (tracing off or on loopback)", "removed")
        else:
            add(f"{path} (tracing off or on loopback: the unit allows localhost)", "skipped")
        return
    try:
        same = path.read_text() == text and (path.stat().st_mode & 0o7777) == 0o644
    except FileNotFoundError:
        write_atomically(path, text, mode=0o644)
        add(str(path), "created")
        return
    if not same:
        write_atomically(path, text, mode=0o644)
    add(str(path), "unchanged" if same else "updated")


def install_dropin(etc: Path, unit_dir: Path, add: Callable[[str, str], None],
                   resolver: Resolver = resolve) -> None:
    """What ``falconctl install`` runs once ``etc/falcon.toml`` is in place."""
    write_dropin(unit_dir, dropin_text(installed_endpoint(etc), resolver), add)
