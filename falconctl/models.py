"""``falconctl models list|status|load|unload|split|rollback``: model versions
while serving, straight through the daemon's socket (no HTTP, no API key: the
operator is on the host). Split changes and rollbacks are written to the audit
trail from a WAL stream of this command's own, which the shipper lands like any
other (the actor is ``falconctl:<user>``).
"""

from __future__ import annotations

import argparse
import getpass
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


def _record(s: Settings, event: str, result: dict[str, Any]) -> None:
    if not s.audit.enabled:
        return
    from audit.wal import WalWriter
    from edge.audit import Auditor, RequestContext

    def writer(wal_dir: Path, stream: str) -> WalWriter:
        return WalWriter(wal_dir, stream, sync="always", min_free_bytes=s.audit.min_free_bytes)

    wal_dir = Path(s.wal_dir)
    streams: list[str] = []

    def tracked(wal_dir: Path, stream: str) -> WalWriter:
        streams.append(stream)
        return writer(wal_dir, stream)

    auditor = Auditor(wal_dir, f"{s.host_id}-falconctl", tracked)
    ctx = RequestContext(uuid.uuid4().hex, "admin", api_key_id=f"falconctl:{getpass.getuser()}")
    auditor.event(ctx, event, result["model"], {"old": result["old"], "new": result["new"]})
    auditor.close()
    _give_to_wal_owner(wal_dir, streams)


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
        result = _dispatch(core, args, deadline)
    except EdgeError as exc:
        print(f"falconctl models {args.models_command}: {exc}", file=sys.stderr)
        return 1
    if args.models_command in ("split", "rollback"):
        _record(s, args.models_command, result)
    print(json.dumps(result, indent=2))
    return 0


def _dispatch(core: Any, args: argparse.Namespace, deadline: float) -> Any:
    cmd = args.models_command
    if cmd == "list":
        return core.models(deadline)
    if cmd == "status":
        return core.manage("index", {}, deadline)["models"]
    if cmd in ("load", "unload"):
        return core.manage(cmd, {"model": args.name, "version": args.version}, deadline)
    if cmd == "split":
        return core.manage("split", {"model": args.name, "split": parse_split(args.weights)},
                           deadline)
    return core.manage("rollback", {"model": args.name}, deadline)


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
