"""``falconctl models list|status|load|unload|split|rollback``: model versions
while serving, straight through the daemon's socket (no HTTP, no API key: the
operator is on the host). Split changes and rollbacks are written to the audit
trail from a WAL stream of this command's own, which the shipper lands like any
other: the intent before the change is sent (no WAL, no change), the outcome
after. The actor is ``falconctl:<user> (uid N, pid P)`` as the daemon sees this
command's connection (``SO_PEERCRED``; not ``$USER``, which anyone can set), and
the daemon logs every change with it too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from settings import Settings


def _core(s: Settings) -> Any:
    from edge.core import Core
    from edge.daemon_client import DaemonClient

    return Core(DaemonClient(s.daemon_socket))


def _auditor(s: Settings) -> tuple[Any, list[str]]:
    """An auditor with a WAL stream of this command's own; the streams it made."""
    from audit.wal import WalWriter
    from edge.audit import Auditor

    def writer(wal_dir: Path, stream: str) -> WalWriter:
        return WalWriter(wal_dir, stream, sync="always", min_free_bytes=s.audit.min_free_bytes)

    wal_dir = Path(s.wal_dir)
    streams: list[str] = []

    def tracked(wal_dir: Path, stream: str) -> WalWriter:
        streams.append(stream)
        return writer(wal_dir, stream)

    return Auditor(wal_dir, f"{s.host_id}-falconctl", tracked), streams


def _audited(s: Settings, core: Any, args: argparse.Namespace, deadline: float) -> Any:
    """A split or rollback with its intent in the audit trail before and its
    outcome after (as the management API does, edge/admin.py)."""
    if not s.audit.enabled:
        return _dispatch(core, args, deadline)
    from edge.audit import RequestContext
    from edge.errors import EdgeError
    from wire import ops

    actor = core.client.call(ops.Ping(), deadline).peer or "unknown"
    auditor, streams = _auditor(s)
    ctx = RequestContext(uuid.uuid4().hex, "admin", api_key_id=f"falconctl:{actor}",
                         request_key=uuid.uuid4().hex)
    op, model = args.models_command, args.name
    requested = {"split": parse_split(args.weights)} if op == "split" else {}
    try:
        auditor.event(dataclasses.replace(ctx, request_key=f"{ctx.request_key}.intent"), op,
                      model, {"phase": "intent", "requested": requested})
        try:
            result = _dispatch(core, args, deadline)
        except EdgeError as exc:
            auditor.event(ctx, op, model, {"phase": "failed", "error": str(exc)})
            raise
        auditor.event(ctx, op, model, {"phase": "done", "old": result["old"],
                                       "new": result["new"]})
        return result
    finally:
        auditor.close()
        _give_to_wal_owner(Path(s.wal_dir), streams)


def _give_to_wal_owner(wal_dir: Path, streams: list[str]) -> None:
    """Run as root next to services running as ``falcon``: hand our stream to the
    WAL directory's owner, or the shipper could not remove it once shipped."""
    if os.geteuid() != 0:
        return
    st = wal_dir.stat()
    for stream in streams:
        for path in [wal_dir / stream, *(wal_dir / stream).iterdir()]:
            os.chown(path, st.st_uid, st.st_gid)


def parse_split(items: list[str]) -> dict[str, int]:
    split = {}
    for item in items:
        version, _, weight = item.partition("=")
        if not version or not weight.isdigit():
            raise SystemExit(f"falconctl models split: expected VERSION=WEIGHT, got {item!r}")
        split[version] = int(weight)
    return split


def run(s: Settings, args: argparse.Namespace) -> int:
    from edge.errors import EdgeError

    core = _core(s)
    deadline = time.monotonic() + 120.0
    try:
        if args.models_command in ("split", "rollback"):
            result = _audited(s, core, args, deadline)
        else:
            result = _dispatch(core, args, deadline)
    except EdgeError as exc:
        print(f"falconctl models {args.models_command}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def _dispatch(core: Any, args: argparse.Namespace, deadline: float) -> Any:
    from wire import ops

    cmd = args.models_command
    if cmd == "list":
        return [m.to_wire() for m in core.models(deadline)]
    if cmd == "status":
        return [e.to_wire() for e in core.manage(ops.Index(), deadline).models]
    change: ops.Op[ops.Answer]
    if cmd in ("load", "unload"):
        change = (ops.Load if cmd == "load" else ops.Unload)(model=args.name,
                                                              version=args.version)
    elif cmd == "split":
        change = ops.Split(model=args.name, split=parse_split(args.weights))
    else:
        change = ops.Rollback(model=args.name)
    return core.manage(change, deadline).to_wire()


def add_subcommands(sub: Any) -> None:
    m = sub.add_parser("models", help="model versions while serving")
    msub = m.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list", help="loaded models, versions and traffic splits")
    msub.add_parser("status", help="every version in the repository and its state")
    for name, text in (("load", "load a model's versions (or one) from the repository"),
                       ("unload", "unload a model's versions (or one)")):
        p = msub.add_parser(name, help=text)
        p.add_argument("name")
        p.add_argument("--version")
    p = msub.add_parser("split", help="set the traffic split, e.g. 1=90 2=10")
    p.add_argument("name")
    p.add_argument("weights", nargs="+", metavar="VERSION=WEIGHT")
    p = msub.add_parser("rollback", help="go back to the previous traffic split")
    p.add_argument("name")
    m.set_defaults(func=run)
