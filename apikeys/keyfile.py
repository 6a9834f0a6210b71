"""The keys file: reading it, writing it durably, and changing it under a lock.

Usage: ``key, entry = add_key(path, "alice", ["predict"])``, ``revoke_key(path, id)``,
``load_keys(path)`` (id -> :class:`~apikeys.key.ApiKey`). The file (JSON, mode 0600,
replaced atomically and durably by ``service.durable.write_atomically``)::

    {"version": 1,
     "keys": [{"id": "3f9c0a1b2d4e", "name": "demo", "sha256": "<64 hex>",
               "scopes": ["predict"], "models": [], "class": "default",
               "created": "2024-05-01T12:00:00Z", "revoked": false, "revoked_at": null}]}

Every change is a read-modify-write under ``<keys file>.lock`` (:func:`locked`): two
``falconctl keys`` at once would otherwise each write what they read, and one could
undo the other's revocation. Readers (the edge's :class:`~apikeys.store.KeyStore`)
take no lock: they see the old file or the new one, whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from apikeys.errors import KeysFileError
from apikeys.key import DEFAULT_CLASS, ApiKey, generate
from service.durable import write_atomically

FILE_VERSION = 1


def load_keys(path: Path) -> dict[str, ApiKey]:
    """id -> entry; an absent file has no keys. Raises KeysFileError, OSError."""
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise KeysFileError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != FILE_VERSION or \
            not isinstance(doc.get("keys"), list):
        raise KeysFileError(f"{path}: expected {{\"version\": {FILE_VERSION}, \"keys\": [...]}}")
    keys = [ApiKey.from_doc(entry, f"{path}: keys[{i}]") for i, entry in enumerate(doc["keys"])]
    return {k.id: k for k in keys}


def save_keys(path: Path, keys: Iterable[ApiKey]) -> None:
    """Replace the keys file with ``keys``. As root, the file takes its directory's
    owner (the service user's state directory), so the services can read what an
    operator wrote with sudo. Raises OSError (a failed fsync leaves the old file)."""
    doc = {"version": FILE_VERSION, "keys": [k.to_doc() for k in keys]}
    write_atomically(path, json.dumps(doc, indent=2) + "\n", mode=0o600, owner_of_dir=True)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold ``<keys file>.lock`` (flock, exclusive) across a read-modify-write of the
    keys file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def add_key(path: Path, name: str, scopes: Sequence[str], models: Sequence[str] = (),
            rate_class: str = DEFAULT_CLASS) -> tuple[str, ApiKey]:
    """Add a new key to the keys file; returns the key (to show once) and its entry.
    Raises ValueError on a bad name, scope, model or class (nothing written),
    KeysFileError, OSError."""
    with locked(path):
        keys = load_keys(path)
        key, entry = generate(name, scopes, models, rate_class)
        keys[entry.id] = entry
        save_keys(path, keys.values())
    return key, entry


def revoke_key(path: Path, key_id: str) -> ApiKey | None:
    """Mark the key revoked in the keys file; its entry, or None (nothing written)
    when the file has no such key. Revoking twice keeps the first time. Raises
    KeysFileError, OSError."""
    with locked(path):
        keys = load_keys(path)
        if key_id not in keys:
            return None
        keys[key_id] = keys[key_id].revoke()
        save_keys(path, keys.values())
    return keys[key_id]
