"""One process's view of the keys file, re-read when it changes.

Usage: ``store = KeyStore(path, reload_s=1.0)``; ``store.get(key_id)`` (an
:class:`~apikeys.key.ApiKey` or None) from any thread. Each edge worker holds one: a
revocation written by ``falconctl keys`` reaches every worker within ``reload_s``,
without a restart.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from apikeys.errors import KeysFileError
from apikeys.key import ApiKey
from apikeys.keyfile import load_keys

log = logging.getLogger(__name__)


class KeyStore:
    """One process's view of the keys file, thread-safe.

    :meth:`get` re-reads the file when it changed (inode, mtime or size: a
    ``falconctl keys`` write is a rename, so a new inode), checking at most every
    ``reload_s`` of ``clock``. The constructor reads it once and raises KeysFileError
    (or OSError) if it is malformed or unreadable; later, a malformed file is logged
    and the keys read before stay in force (APPSEC: a broken hand edit must not lock
    every client out; ``falconctl keys`` never writes a broken file). A deleted file
    means no keys. A file that changed and cannot be read (permissions, I/O error, not
    a file) means no keys either, logged as an error: APPSEC: what it says may be a
    revocation, and the keys read before must not stay in force for ever (issue 15
    item 13).
    """

    def __init__(self, path: Path, reload_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.reload_s = reload_s
        self.clock = clock
        self._lock = threading.Lock()
        self._sig = self._signature()
        self._keys = load_keys(path)
        self._next_check = clock() + reload_s

    def _signature(self) -> tuple[int, int, int, int] | None:
        """What identifies the file's content; a file that cannot be stat'ed (gone, or a
        directory turned unreadable) has none, and changing to none is a change too."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size

    @property
    def keys(self) -> Mapping[str, ApiKey]:
        self._maybe_reload()
        return self._keys

    def get(self, key_id: str) -> ApiKey | None:
        return self.keys.get(key_id)

    def _maybe_reload(self) -> None:
        if self.clock() < self._next_check:
            return
        with self._lock:
            if self.clock() < self._next_check:
                return
            self._next_check = self.clock() + self.reload_s
            sig = self._signature()
            if sig == self._sig:
                return
            self._sig = sig  # whatever happens next, log it once per change
            try:
                keys = load_keys(self.path)
            except KeysFileError as exc:
                log.error("API keys file unusable, keeping the %d keys read before: %s",
                          len(self._keys), exc)
                return
            except OSError as exc:
                log.error("API keys file unreadable, refusing every key until it can be "
                          "read (it may hold a revocation): %s", exc)
                keys = {}
            self._keys = keys
            log.info("API keys reloaded from %s: %d (%d revoked)", self.path, len(keys),
                     sum(k.revoked for k in keys.values()))
