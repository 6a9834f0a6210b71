"""``falconctl hosts``: the serving hosts (or edges) as this host's HAProxy sees
them, and taking one out of rotation, through HAProxy's runtime API
(``<run_dir>/haproxy.sock``, level admin).

    falconctl hosts list               name, state, health check, in flight, served
    falconctl hosts drain host-a       no new requests; in-flight ones finish
    falconctl hosts maint host-a       out of rotation at once (health checks stop)
    falconctl hosts ready host-a       back in rotation

The backend is ``hosts`` when ``haproxy.hosts`` lists several hosts, else this
host's ``edges`` (servers ``edge1`` and the standby ``edge2``). A state set here
lasts until HAProxy restarts (a reload keeps nothing either): to remove a host
for good, take it out of ``haproxy.hosts`` and restart HAProxy.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from falconctl.commands import guarded
from falconctl.keys import haproxy_command
from falconctl.stack import parse_hosts
from settings import ConfigError, Settings

STATES = ("ready", "drain", "maint")


class HostsError(RuntimeError):
    """HAProxy's runtime API refused or could not be reached; the message says which."""


def backend(s: Settings) -> str:
    return "hosts" if parse_hosts(s.haproxy.hosts) else "edges"


def _command(s: Settings, command: str) -> str:
    sock = Path(s.paths.run_dir) / "haproxy.sock"
    try:
        return haproxy_command(sock, command)
    except OSError as exc:
        raise HostsError(f"cannot reach HAProxy's runtime API at {sock}: {exc}") from None


def servers(s: Settings) -> list[dict[str, str]]:
    """One row per server of the backend, from ``show stat``."""
    rows = csv.DictReader(io.StringIO(_command(s, "show stat").lstrip("# ")))
    name = backend(s)
    return [r for r in rows
            if r["pxname"] == name and r["svname"] not in ("FRONTEND", "BACKEND")]


def set_state(s: Settings, server: str, state: str) -> None:
    """Raises :class:`HostsError` if the server is unknown or HAProxy refuses."""
    if state not in STATES:
        raise HostsError(f"state {state!r}: expected one of {', '.join(STATES)}")
    known = [r["svname"] for r in servers(s)]
    if server not in known:
        raise HostsError(f"no server {server!r} in backend {backend(s)!r} "
                         f"(known: {', '.join(known) or 'none'})")
    answer = _command(s, f"set server {backend(s)}/{server} state {state}").strip()
    if answer:
        raise HostsError(f"HAProxy refused: {answer}")


def cmd_list(s: Settings, args: argparse.Namespace) -> int:
    rows = servers(s)
    print(f"{'server':<16} {'status':<12} {'check':<10} {'in flight':>9} {'served':>10}")
    for r in rows:
        print(f"{r['svname']:<16} {r['status']:<12} {r['check_status'] or '-':<10} "
              f"{r['scur']:>9} {r['stot']:>10}")
    return 0


def cmd_set(s: Settings, args: argparse.Namespace) -> int:
    set_state(s, args.server, args.state)
    print(f"{backend(s)}/{args.server}: {args.state}")
    return 0


_guarded = guarded("hosts", lambda: (HostsError, ConfigError))


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hosts", help="serving hosts behind HAProxy: list, drain, maint, ready")
    hs = p.add_subparsers(dest="hosts_command", required=True)
    hs.add_parser("list", help="each server's state and load").set_defaults(
        func=_guarded(cmd_list))
    for state, doc in (("drain", "no new requests; in-flight ones finish"),
                       ("maint", "out of rotation at once"),
                       ("ready", "back in rotation")):
        c = hs.add_parser(state, help=doc)
        c.add_argument("server", help="host name as in haproxy.hosts (or edge1/edge2)")
        c.set_defaults(func=_guarded(cmd_set), state=state)
