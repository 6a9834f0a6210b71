"""``falconctl hosts``: the serving hosts (or edges) as this host's HAProxy sees
them, taking one out of rotation (HAProxy's runtime API,
``<haproxy run_dir>/haproxy.sock``, level admin; under systemd
``/run/falcon-haproxy/haproxy.sock``, mode 0660: root or the falcon-haproxy group),
and the fleet's models (fleet/, in PostgreSQL: ``fleet.dsn``).

    falconctl hosts list               name, state, health check, in flight, served
    falconctl hosts drain host-a       no new requests; in-flight ones finish
    falconctl hosts maint host-a       out of rotation at once (health checks stop)
    falconctl hosts ready host-a       back in rotation
    falconctl hosts traffic MODEL      each host's split of MODEL as its edge reports it

    falconctl hosts load|unload MODEL VERSION     the fleet's desired state (fleet/cli.py)
    falconctl hosts split MODEL 1=90 2=10
    falconctl hosts rollback MODEL [--to-revision N]
    falconctl hosts status|history|forget

    falconctl reconcile                this host's reconciler (falcon-reconciler.service)

The fleet commands write the desired state once, with a revision; each host's
reconciler converges its daemon to it (fleet/reconciler.py), driving it
through its socket with the daemon client (:class:`SocketDaemon`).

``traffic`` calls every host's edge directly (its management API, not through
HAProxy, which would reach one), with an admin API key (``--key`` or
``$FALCON_ADMIN_KEY``) when auth is on; exit 1 if a host failed or they differ.

The backend is ``hosts`` when ``haproxy.hosts`` lists several hosts, else this
host's ``edges`` (servers ``edge1`` and the standby ``edge2``). A state set here
lasts until HAProxy restarts (a reload keeps nothing either): to remove a host
for good, take it out of ``haproxy.hosts`` and restart HAProxy.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import io
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from falconctl.commands import guarded
from falconctl.keys import haproxy_command
from falconctl.stack import parse_hosts, split_hostport
from settings import ConfigError, Settings

if TYPE_CHECKING:
    from wire import ops

STATES = ("ready", "drain", "maint")


class HostsError(RuntimeError):
    """HAProxy's runtime API refused or could not be reached; the message says which."""


def backend(s: Settings) -> str:
    return "hosts" if parse_hosts(s.haproxy.hosts) else "edges"


def _command(s: Settings, command: str) -> str:
    sock = Path(s.haproxy_socket)
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


def admin_call(addr: str, method: str, path: str, body: Any, key: str,
               timeout: float = 60.0) -> tuple[int, Any]:
    """One call to an edge's management API; (status, JSON answer). 0 and an
    error document when the host cannot be reached."""
    host, port = split_hostport(addr)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, {"error": raw[:200].decode(errors="replace")}
    except (OSError, http.client.HTTPException) as exc:
        return 0, {"error": f"cannot reach {addr}: {exc}"}
    finally:
        conn.close()


def every_host(s: Settings, method: str, path: str, body: Any,
               key: str) -> list[tuple[str, int, Any]]:
    """The same management call on every host of ``haproxy.hosts``, in order."""
    hosts = parse_hosts(s.haproxy.hosts)
    if not hosts:
        raise HostsError("haproxy.hosts is empty (one host): use `falconctl models "
                         "split|rollback` on it")
    return [(name, *admin_call(addr, method, path, body, key)) for name, addr in hosts]


def cmd_traffic(s: Settings, args: argparse.Namespace) -> int:
    key = args.key or os.environ.get("FALCON_ADMIN_KEY", "")
    model = quote(args.model, safe="")
    results = every_host(s, "GET", f"/v1/models/{model}/traffic", None, key)
    failed, splits = 0, set()
    for name, status, doc in results:
        if status != 200:
            failed += 1
            print(f"{name:<16} FAILED ({status or 'unreachable'}): {doc.get('error', doc)}")
            continue
        split = doc.get("split")
        splits.add(json.dumps(split, sort_keys=True))
        print(f"{name:<16} ok  split {json.dumps(split, sort_keys=True)}")
    if failed:
        print(f"falconctl hosts traffic: {failed} of {len(results)} hosts failed")
        return 1
    if len(splits) > 1:
        print("falconctl hosts: the hosts' splits DIFFER")
        return 1
    return 0


class SocketDaemon:
    """The local daemon as the reconciler drives it (:class:`fleet.reconciler.DaemonOps`),
    through the daemon client: its ``models`` op, and ``load``/``unload``/``split``."""

    def __init__(self, path: str, timeout_s: float = 120.0) -> None:
        from edge.daemon_client import DaemonClient

        self.client = DaemonClient(path)
        self.timeout_s = timeout_s  # loading parses, publishes and warms a model

    def _call(self, op: ops.Op[ops.A]) -> ops.A:
        import time

        from edge.errors import EdgeError
        from fleet.errors import DaemonRefused, DaemonUnavailable
        from wire.messages import MessageError, RemoteError

        try:
            return self.client.call(op, time.monotonic() + self.timeout_s)
        except RemoteError as exc:
            raise DaemonRefused(str(exc)) from None
        except (EdgeError, MessageError) as exc:  # unavailable, deadline exceeded, malformed
            raise DaemonUnavailable(str(exc)) from None

    def models(self) -> dict[str, Any]:
        from fleet.plan import Actual
        from wire import ops

        return {m.name: Actual.from_json(m.to_wire()) for m in self._call(ops.Models()).models}

    def apply(self, model: str, step: tuple[str, Any]) -> None:
        from wire import ops

        op, arg = step
        change: ops.Op[ops.Answer]
        if op == "split":
            change = ops.Split(model=model, split=arg)
        else:
            change = (ops.Load if op == "load" else ops.Unload)(model=model, version=arg)
        self._call(change)

    def close(self) -> None:
        self.client.close()


def cmd_reconcile(s: Settings, args: argparse.Namespace) -> int:
    from falconctl.cli import _setup_logging
    from service.metrics import enable as enable_metrics

    _setup_logging("reconciler")
    enable_metrics(s.paths.run_dir)  # before fleet.metrics declares them
    from fleet.reconciler import serve

    if not s.fleet.dsn:  # falcon.target wants this unit on every host: not an error
        from service.sdnotify import notify

        logging.getLogger("falconctl").warning(
            "fleet.dsn is empty: no fleet state, this host's models are its own "
            "(`falconctl models`); nothing to reconcile")
        notify("READY=1\nSTATUS=fleet.dsn is empty: nothing to reconcile")
        return 0
    daemon = SocketDaemon(s.daemon_socket)
    return serve(s.host_id, s.fleet.dsn, s.fleet.interval_s, daemon, daemon.timeout_s)


def fleet_command(func: Any) -> Any:
    """A fleet subcommand: its arguments prepared (the split parsed, the hosts that
    must report), then fleet/cli.py's runner (its own exit statuses)."""
    def command(s: Settings, args: argparse.Namespace) -> int:
        from falconctl.models import parse_split
        from fleet import cli

        if getattr(args, "weights", None):
            args.split = parse_split(args.weights)
        # the hosts that must report: the front's, or this one (one host, no haproxy.hosts)
        args.expected = [name for name, _ in parse_hosts(s.haproxy.hosts)] or [s.host_id]
        return cli.run(func, s, args)
    return command


_guarded = guarded("hosts", lambda: (HostsError, ConfigError))


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hosts", help="serving hosts behind HAProxy: list, drain, maint, ready, "
                                     "traffic; the fleet's models: load, unload, split, "
                                     "rollback, status, history, forget")
    hs = p.add_subparsers(dest="hosts_command", required=True)
    hs.add_parser("list", help="each server's state and load").set_defaults(
        func=_guarded(cmd_list))
    for state, doc in (("drain", "no new requests; in-flight ones finish"),
                       ("maint", "out of rotation at once"),
                       ("ready", "back in rotation")):
        c = hs.add_parser(state, help=doc)
        c.add_argument("server", help="host name as in haproxy.hosts (or edge1/edge2)")
        c.set_defaults(func=_guarded(cmd_set), state=state)
    c = hs.add_parser("traffic", help="each host's split of a model, from its edge "
                                      "(exit 1 if they differ)")
    c.add_argument("model")
    c.add_argument("--key", default="", help="an admin API key (default $FALCON_ADMIN_KEY)")
    c.set_defaults(func=_guarded(cmd_traffic))
    from fleet.cli import add_arguments

    add_arguments(hs, fleet_command)
    sub.add_parser("reconcile", help="this host's fleet reconciler (converges the daemon to "
                                     "the fleet state)").set_defaults(func=cmd_reconcile)
