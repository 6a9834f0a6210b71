"""``falconctl keys create|list|revoke``: API keys, and HAProxy's per-key limits.

The keys file's format, the key format and their locked read-modify-write are
:mod:`apikeys`'s; this module is the operator's side of it. ``create`` prints the key once (it cannot be
recovered: only its hash is stored); ``revoke`` takes effect in every edge
worker within ``auth.reload_s``, without a restart.

Per-key rate limits live in HAProxy (``ops/haproxy/haproxy.cfg``): a key of the
default class may send ``haproxy.rate_per_key`` requests per window; a key
created with ``--class NAME`` gets that class's limit from
``haproxy.key_classes`` (``"high=500000,trial=100"``). HAProxy learns the
classes from a map file, ``<haproxy run_dir>/haproxy-key-limits.map``, one
``<key id> <limit>`` line per key of another class: written before every
HAProxy start (:func:`falconctl.stack.haproxy_env`) and by every ``keys``
command, which also loads it into a running HAProxy through its runtime API
(``prepare map`` / ``commit map``: all at once), so a new key's class applies
at once, without a reload.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from apikeys import (
    DEFAULT_CLASS,
    PREDICT,
    SCOPES,
    ApiKey,
    KeysFileError,
    add_key,
    load_keys,
    revoke_key,
)
from falconctl.commands import guarded
from service.durable import write_atomically
from settings import ConfigError, Settings

LIMITS_MAP = "haproxy-key-limits.map"


# -- HAProxy's per-key limits map ------------------------------------------------------


def key_classes(s: Settings) -> dict[str, int]:
    """``haproxy.key_classes`` parsed: class -> requests per window."""
    out: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in s.haproxy.key_classes.split(","))):
        name, _, limit = item.partition("=")
        if not name.strip() or not limit.strip().isdigit() or int(limit) < 1:
            raise ConfigError(f"haproxy.key_classes: {item!r} is not 'class=requests' "
                              "with a positive integer")
        out[name.strip()] = int(limit)
    return out


def limits_map_text(keys: dict[str, ApiKey], classes: dict[str, int]) -> tuple[str, list[str]]:
    """The map's lines, and warnings for keys whose class is not configured
    (they get the default limit)."""
    lines, warnings = [], []
    for key in sorted(keys.values(), key=lambda k: k.id):
        if key.revoked or key.rate_class == DEFAULT_CLASS:
            continue
        if key.rate_class not in classes:
            warnings.append(f"key {key.id}: class {key.rate_class!r} is not in "
                            "haproxy.key_classes; it gets the default limit")
            continue
        lines.append(f"{key.id} {classes[key.rate_class]}\n")
    return "".join(lines), warnings


def write_limits_map(s: Settings) -> Path:
    """(Re)write ``<haproxy run_dir>/haproxy-key-limits.map`` from the keys file. An
    unreadable keys file is reported and gives an empty map (every key at the
    default limit) rather than no HAProxy at all."""
    path = Path(s.haproxy_run_dir) / LIMITS_MAP
    classes = key_classes(s)
    try:
        text, warnings = limits_map_text(load_keys(Path(s.keys_file)), classes)
    except (OSError, KeysFileError) as exc:
        text, warnings = "", [f"per-key classes not applied: {exc}"]
    for warning in warnings:
        print(f"falconctl: {warning}", file=sys.stderr)
    write_atomically(path, text, mode=0o644, owner_of_dir=True)
    return path


def haproxy_command(sock_path: Path, command: str, timeout: float = 2.0) -> str:
    """One command on HAProxy's runtime API socket; its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(sock_path))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


def push_limits_map(s: Settings, path: Path) -> str:
    """Load the map file into a running HAProxy, atomically; says what happened."""
    sock_path = Path(s.haproxy_socket)
    if not sock_path.exists():
        return "HAProxy is not running here; it reads the map when it starts"
    try:
        answer = haproxy_command(sock_path, f"prepare map {path}")
        version = answer.split(":")[-1].strip()
        if not version.isdigit():
            return f"HAProxy refused 'prepare map': {answer.strip()}"
        for line in path.read_text().splitlines():
            key_id, limit = line.split()
            haproxy_command(sock_path, f"add map @{version} {path} {key_id} {limit}")
        answer = haproxy_command(sock_path, f"commit map @{version} {path}")
    except OSError as exc:
        return f"could not reach HAProxy's runtime API ({exc}): reload it to apply the limits"
    return "HAProxy's per-key limits updated" if not answer.strip() else \
        f"HAProxy answered 'commit map': {answer.strip()}"


def sync_haproxy(s: Settings) -> None:
    """After a change of the keys file: the map rewritten and pushed. Failures
    are reported, not raised: the keys file is already written."""
    try:
        path = write_limits_map(s)
    except (OSError, ConfigError) as exc:
        print(f"falconctl: HAProxy's per-key limits map not updated: {exc}", file=sys.stderr)
        return
    print(f"falconctl: {push_limits_map(s, path)}", file=sys.stderr)


# -- the commands ---------------------------------------------------------------------


def create_demo_key(s: Settings) -> str | None:
    """``falconctl up``: a key named "demo" (scope predict) when the keys file has
    no active key; the key, or None when there was one already."""
    path = Path(s.keys_file)
    if any(not k.revoked for k in load_keys(path).values()):
        return None
    return add_key(path, "demo", [PREDICT])[0]


def cmd_create(s: Settings, args: argparse.Namespace) -> int:
    try:
        key, entry = add_key(Path(s.keys_file), args.name, args.scope or [PREDICT],
                                args.model or [], args.rate_class)
    except ValueError as exc:
        print(f"falconctl keys create: {exc}", file=sys.stderr)
        return 2
    print(f"created key {entry.id} ({entry.name}; scopes {', '.join(entry.scopes)}; models "
          f"{', '.join(entry.models) or 'all'}; class {entry.rate_class}).\n"
          "The key, shown only now (only its hash is kept):", file=sys.stderr)
    print(key, flush=True)
    sync_haproxy(s)
    return 0


def cmd_list(s: Settings, args: argparse.Namespace) -> int:
    keys = load_keys(Path(s.keys_file))
    print(f"{'ID':<12}  {'NAME':<16}  {'SCOPES':<14}  {'MODELS':<16}  {'CLASS':<10}  "
          f"{'CREATED':<20}  REVOKED")
    for k in sorted(keys.values(), key=lambda k: k.created):
        print(f"{k.id:<12}  {k.name:<16}  {','.join(k.scopes):<14}  "
              f"{','.join(k.models) or '*':<16}  {k.rate_class:<10}  {k.created:<20}  "
              f"{(k.revoked_at or 'yes') if k.revoked else 'no'}")
    return 0


def cmd_revoke(s: Settings, args: argparse.Namespace) -> int:
    path = Path(s.keys_file)
    entry = revoke_key(path, args.id)
    if entry is None:
        print(f"falconctl keys revoke: no key {args.id!r} in {path}", file=sys.stderr)
        return 1
    sync_haproxy(s)
    print(f"revoked key {args.id} ({entry.name}); every edge worker refuses it "
          f"within {s.auth.reload_s:g} s")
    return 0


_guarded = guarded("keys", lambda: (KeysFileError,))


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """``falconctl keys ...`` (keys file: ``auth.keys_file``)."""
    keys = sub.add_parser("keys", help="API keys: create, list, revoke")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    c = ksub.add_parser("create", help="create a key and print it (once)")
    c.add_argument("--name", required=True, help="who or what the key is for")
    c.add_argument("--scope", action="append", choices=SCOPES,
                   help="predict (default) and/or admin; repeat for both")
    c.add_argument("--model", action="append", metavar="NAME",
                   help="allow only this model; repeat for several (default: all)")
    c.add_argument("--class", dest="rate_class", default=DEFAULT_CLASS,
                   help="rate-limit class from haproxy.key_classes (default: %(default)s)")
    c.set_defaults(func=_guarded(cmd_create))
    ksub.add_parser("list", help="every key (never the key itself)").set_defaults(
        func=_guarded(cmd_list))
    r = ksub.add_parser("revoke", help="revoke a key by id")
    r.add_argument("id")
    r.set_defaults(func=_guarded(cmd_revoke))
