"""``falconctl hosts load|unload|split|rollback|status|history|forget``: the
operator's side of the fleet state (falconctl/hosts.py wires the arguments).

    falconctl hosts load MODEL VERSION      every host loads (and warms) it; no traffic yet
    falconctl hosts split MODEL 1=90 2=10   every host routes so
    falconctl hosts rollback MODEL          the split before the last split write
    falconctl hosts rollback MODEL --to-revision N   the split as of revision N (retry-safe)
    falconctl hosts unload MODEL VERSION    refused while it has weight (desired, or on a live host)
    falconctl hosts status [--json]         desired vs actual per host
    falconctl hosts history [MODEL]         revisions: who, when, old -> new
    falconctl hosts forget HOST              drop a host's report (a host gone for good)

A write prints the revision it made (or "unchanged": the state already is
what was asked, so re-running a command is harmless) and returns at once; the
hosts converge by themselves. ``--wait S`` waits up to S seconds for every
host to report it; ``--if-revision N`` writes only if the head is still N
(two operators at once: the second is told, nothing is written).

Exit statuses (fleet/errors.py): 0 done (status, ``--wait``: every expected
host converged to the head revision); 1 refused (nothing written: a bad or
unsafe change named by field, or PostgreSQL refused, e.g. a missing privilege
or a read-only standby); 2 a configuration error; 3 the ``--if-revision``
precondition failed; 4 PostgreSQL unreachable; 5 not converged (status, or a
write's ``--wait``: written, but some host is behind, failing a step, silent
for three re-read intervals, or never reported — the hosts of ``haproxy.hosts``,
or this host's ``host.id`` when that is empty).

Every command checks the schema is current with reads only, and migrates
only when it is behind (``CREATE SCHEMA IF NOT EXISTS`` needs CREATE on the
database even when the schema exists): least-privilege roles work.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import socket
import sys
import time
from typing import Any

from fleet.errors import (
    NOT_CONVERGED_EXIT,
    REFUSED_EXIT,
    STALE_EXIT,
    UNREACHABLE_EXIT,
    FleetError,
    FleetUnavailable,
    StaleRevision,
)
from fleet.store import Desired, FleetStore, HostRow
from settings import ConfigError, Settings


def actor() -> str:
    """Who runs this command, as the OS says (not ``$USER``, which anyone sets)."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return f"falconctl:{name} (uid {uid}) on {socket.gethostname()}"


def open_store(s: Settings) -> FleetStore:
    """A store on ``fleet.dsn`` whose schema is current (checked; migrated only
    when behind: a role without CREATE works once it is current)."""
    if not s.fleet.dsn:
        raise ConfigError("fleet.dsn is empty: set it ($FALCON_FLEET_DSN) to the database "
                          "holding the fleet state")
    store = FleetStore(s.fleet.dsn)
    try:
        store.ensure_schema()
    except BaseException:
        store.close()
        raise
    return store


def run(func: Any, s: Settings, args: argparse.Namespace) -> int:
    """``func(store, s, args)`` with the fleet's errors as one line and an exit status.
    ``args.expected``: the hosts that must report (``haproxy.hosts`` on the front,
    else this host); ``args.split``: a split's ``{version: weight}``."""
    from audit.migrate import MigrationError

    try:
        store = open_store(s)
        try:
            return int(func(store, s, args))
        finally:
            store.close()
    except MigrationError as exc:  # e.g. a released migration edited: say which
        return _fail(args, exc, REFUSED_EXIT)
    except StaleRevision as exc:
        return _fail(args, exc, STALE_EXIT)
    except FleetUnavailable as exc:
        return _fail(args, exc, UNREACHABLE_EXIT)
    except FleetError as exc:  # refused, PostgreSQL refused (DatabaseError), schema not current
        return _fail(args, exc, REFUSED_EXIT)


def _fail(args: argparse.Namespace, exc: Exception, code: int) -> int:
    print(f"falconctl hosts {args.hosts_command}: {exc}", file=sys.stderr)
    return code


def change(store: FleetStore, s: Settings, args: argparse.Namespace) -> int:
    op = args.hosts_command
    done = store.change(op, args.model, actor(), version=getattr(args, "version", None),
                        split=getattr(args, "split", None),
                        to_revision=getattr(args, "to_revision", None),
                        if_revision=args.if_revision)
    desired = store.desired()
    if done is None:
        state = desired.models.get(args.model)
        print(f"{args.model}: unchanged at revision {desired.revision}"
              + (f": {_state(state.to_json())}" if state else ""))
    else:
        old = ("(joins the fleet; the hosts ran) " if done.joins else "") + _state(done.old)
        print(f"revision {done.revision}: {op} {args.model}: {old} -> {_state(done.new)}")
        if done.target is not None:
            print(f"  restored revision {done.target}'s split; to retry safely: "
                  f"falconctl hosts rollback {args.model} --to-revision {done.target}")
    if args.wait:
        return wait_converged(store, args.expected, args.wait)
    return 0


def wait_converged(store: FleetStore, names: list[str], seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while True:
        desired, rows = store.desired(), store.hosts()
        verdict = verdicts(desired, rows, names)
        behind = [h for h, ok in verdict.items() if not ok] or (["no host"] if not verdict else [])
        if not behind:
            print(f"every host converged to revision {desired.revision}")
            return 0
        if time.monotonic() >= deadline:
            print(f"not converged after {seconds:.0f} s: {', '.join(behind)}")
            return NOT_CONVERGED_EXIT
        time.sleep(0.1)


def verdicts(desired: Desired, rows: list[HostRow], names: list[str]) -> dict[str, bool]:
    """``{host: converged}`` over the hosts that reported and the ``names`` that
    must (never reported: False). Empty means nothing converged anywhere."""
    out = {r.host: r.converged == desired.revision and not r.error and not r.stale
           for r in rows}
    for name in names:
        out.setdefault(name, False)
    return out


def _state(doc: dict[str, Any] | None) -> str:
    if not doc:
        return "-"
    return (f"versions {','.join(doc.get('versions', [])) or '-'} split "
            f"{json.dumps(doc.get('split', {}), sort_keys=True)}")


def _host_state(desired: Desired, row: HostRow | None) -> str:
    if row is None:
        return "NO REPORT (no reconciler has run there)"
    if row.stale:
        return f"SILENT for {row.age_s:.0f} s (reconciler down?)"
    if row.error:
        return f"FAILING at revision {row.seen}: {row.error}"
    if row.converged == desired.revision:
        return "converged"
    return f"BEHIND (converged to {row.converged or '-'}, read {row.seen})"


def status(store: FleetStore, s: Settings, args: argparse.Namespace) -> int:
    desired, rows = store.desired(), store.hosts()
    verdict = verdicts(desired, rows, args.expected)
    by_host = {r.host: r for r in rows}
    if args.json:
        print(json.dumps(status_doc(desired, by_host, verdict), indent=2, sort_keys=True))
    else:
        print(f"fleet revision {desired.revision}")
        for model, st in sorted(desired.models.items()):
            print(f"  desired  {model:<16} {_state(st.to_json())}")
        for host in sorted(verdict):
            row = by_host.get(host)
            print(f"{host:<16} {_host_state(desired, row)}")
            for model, st in sorted(desired.models.items()):
                got = row.actual.get(model) if row else None
                mark = "=" if got is not None and got.to_json() == st.to_json() else "≠"
                print(f"  {mark} actual {model:<16} {_state(got.to_json() if got else None)}")
    behind = [h for h, ok in verdict.items() if not ok]
    if not verdict:
        print("falconctl hosts status: no host has reported and none is expected: not "
              "converged", file=sys.stderr if args.json else sys.stdout)
        return NOT_CONVERGED_EXIT
    if behind:
        print(f"falconctl hosts status: {len(verdict) - len(behind)} of {len(verdict)} hosts "
              f"converged to revision {desired.revision} (not: {', '.join(sorted(behind))})",
              file=sys.stderr if args.json else sys.stdout)
        return NOT_CONVERGED_EXIT
    return 0


def status_doc(desired: Desired, by_host: dict[str, HostRow],
               verdict: dict[str, bool]) -> dict[str, Any]:
    return {
        "revision": desired.revision,
        "desired": {m: st.to_json() for m, st in desired.models.items()},
        "converged": bool(verdict) and all(verdict.values()),
        "hosts": {h: {"converged": ok,
                      "state": _host_state(desired, by_host.get(h)),
                      "converged_revision": by_host[h].converged if h in by_host else None,
                      "error": by_host[h].error if h in by_host else None,
                      "heartbeat_age_s": by_host[h].age_s if h in by_host else None,
                      "actual": ({m: a.to_json() for m, a in by_host[h].actual.items()}
                                 if h in by_host else None)}
                  for h, ok in verdict.items()},
    }


def history(store: FleetStore, s: Settings, args: argparse.Namespace) -> int:
    for c in store.history(args.model, args.limit):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.at))
        print(f"{c.revision:>6} {when} {c.op:<8} {c.model:<16} {_state(c.old)} -> "
              f"{_state(c.new)}  by {c.actor}")
    return 0


def forget(store: FleetStore, s: Settings, args: argparse.Namespace) -> int:
    if not store.forget(args.host):
        print(f"falconctl hosts forget: no report from {args.host!r}", file=sys.stderr)
        return 1
    print(f"{args.host}: forgotten (it reappears if its reconciler runs again)")
    return 0


def add_arguments(hs: Any, wrap: Any) -> None:
    """The fleet subcommands of ``falconctl hosts`` (``wrap(func)`` -> a command)."""
    for name, doc in (("load", "every host loads and warms a version (no traffic yet)"),
                      ("unload", "every host unloads a version (refused while it carries traffic)"),
                      ("split", "every host routes a model's traffic so, e.g. 1=90 2=10"),
                      ("rollback", "the model's split before its last split write")):
        c = hs.add_parser(name, help=doc)
        c.add_argument("model")
        if name in ("load", "unload"):
            c.add_argument("version")
        if name == "split":
            c.add_argument("weights", nargs="+", metavar="VERSION=WEIGHT")
        if name == "rollback":
            c.add_argument("--to-revision", type=int, metavar="N",
                           help="restore the split as of revision N (a retry changes nothing)")
        c.add_argument("--if-revision", type=int, metavar="N",
                       help="write only if the fleet state is still at revision N (else exit 3)")
        c.add_argument("--wait", type=float, default=0.0, metavar="S",
                       help="wait up to S seconds for every host to converge (exit 5 if "
                            "not; 1 refused, 3 stale --if-revision, 4 no database)")
        c.set_defaults(func=wrap(change))
    c = hs.add_parser("status", help="desired vs actual per host (exit 0 every expected host "
                                     "converged, 5 not, 4 no database)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=wrap(status))
    c = hs.add_parser("history", help="the fleet state's revisions: who, when, old -> new")
    c.add_argument("model", nargs="?")
    c.add_argument("--limit", type=int, default=50)
    c.set_defaults(func=wrap(history))
    c = hs.add_parser("forget", help="drop a host's report (a host gone for good)")
    c.add_argument("host")
    c.set_defaults(func=wrap(forget))
