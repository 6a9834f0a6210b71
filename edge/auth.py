"""API keys: their format, the keys file, and the edge's authorisation step.

A key is ``fk_<id>_<secret>``::

    fk_ 3f9c0a1b2d4e _ Qm9...43 chars...
        |            |
        |            +-- secret: 32 bytes from `secrets`, base64url, no padding (43 chars)
        +-- id: 12 lowercase hex characters (48 random bits); public

The id names the key everywhere a key must be named (logs, the
``falcon_auth_failures_total`` metric's log lines, audit records,
``falconctl keys list``, HAProxy's per-key limits map); the key itself is shown
once, by ``falconctl keys create``, and never stored: the keys file holds
``sha256(key)`` only.

APPSEC: a plain SHA-256 is the right hash here, not a slow KDF (bcrypt,
scrypt, argon2). Slow KDFs protect *low-entropy* secrets (passwords) against
offline guessing; a 256-bit random secret cannot be guessed however fast the
hash, and a slow KDF would cost milliseconds of CPU on every request. The
stored digest is compared in constant time (:func:`hmac.compare_digest`).

The keys file (JSON, mode 0600, replaced atomically and durably by
``service.durable.write_atomically``)::

    {"version": 1,
     "keys": [{"id": "3f9c0a1b2d4e", "name": "demo", "sha256": "<64 hex>",
               "scopes": ["predict"], "models": [], "class": "default",
               "created": "2024-05-01T12:00:00Z", "revoked": false, "revoked_at": null}]}

``models`` empty means every model; ``class`` picks the key's HAProxy rate
limit (``haproxy.key_classes``). Each edge worker re-reads the file when its
inode, mtime or size changed, checking at most every ``auth.reload_s``: a
revocation reaches every worker within that time, without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import falcon
from prometheus_client import Counter

from edge.errors import Forbidden, Unauthorized
from service.durable import write_atomically
from settings import ConfigError, Settings

log = logging.getLogger(__name__)

PREDICT, ADMIN = "predict", "admin"
SCOPES = (PREDICT, ADMIN)
DEFAULT_CLASS = "default"
FILE_VERSION = 1
KEY_RE = re.compile(r"^fk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # names, model names in allow lists, classes
HOW = "send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"

AUTH_FAILURES = Counter("falcon_auth_failures_total",
                        "Requests refused by the edge's API key check, by reason.", ["reason"])


class KeysFileError(ValueError):
    """The keys file is not valid JSON or an entry is malformed (likely a hand
    edit); the message names the file and the entry."""


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def digest(key: str) -> str:
    """What the keys file stores of a key: hex SHA-256 (see the APPSEC note above)."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse(key: str) -> str | None:
    """The id of a well-formed key, else None."""
    match = KEY_RE.match(key)
    return match.group(1) if match else None


@dataclass(frozen=True)
class ApiKey:
    """One entry of the keys file (never the key itself)."""

    id: str
    name: str
    sha256: str
    scopes: tuple[str, ...]
    models: tuple[str, ...] = ()
    rate_class: str = DEFAULT_CLASS
    created: str = field(default_factory=_now_iso)
    revoked: bool = False
    revoked_at: str | None = None

    def matches(self, key: str) -> bool:
        return hmac.compare_digest(digest(key), self.sha256)

    def allows_model(self, model: str) -> bool:
        return not self.models or model in self.models

    def revoke(self) -> ApiKey:
        return self if self.revoked else replace(self, revoked=True, revoked_at=_now_iso())

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["class"] = doc.pop("rate_class")
        doc["scopes"], doc["models"] = list(self.scopes), list(self.models)
        return doc

    @classmethod
    def from_doc(cls, doc: Any, where: str) -> ApiKey:
        if not isinstance(doc, dict):
            raise KeysFileError(f"{where}: expected an object")
        try:
            key = cls(id=doc["id"], name=doc["name"], sha256=doc["sha256"],
                      scopes=tuple(doc["scopes"]), models=tuple(doc.get("models", ())),
                      rate_class=doc.get("class", DEFAULT_CLASS), created=doc.get("created", ""),
                      revoked=doc.get("revoked", False), revoked_at=doc.get("revoked_at"))
        except (KeyError, TypeError) as exc:
            raise KeysFileError(f"{where}: missing or malformed field {exc}") from None
        if not re.fullmatch(r"[0-9a-f]{12}", str(key.id)) or \
                not re.fullmatch(r"[0-9a-f]{64}", str(key.sha256)):
            raise KeysFileError(f"{where}: malformed id or sha256")
        if not set(key.scopes) <= set(SCOPES) or key.revoked not in (True, False):
            raise KeysFileError(f"{where}: scopes must be among {SCOPES}, revoked a boolean")
        return key


def generate(name: str, scopes: Iterable[str], models: Iterable[str] = (),
             rate_class: str = DEFAULT_CLASS) -> tuple[str, ApiKey]:
    """A new random key and its entry. Raises ValueError on a bad name, scope,
    model or class."""
    scopes, models = tuple(dict.fromkeys(scopes)), tuple(dict.fromkeys(models))
    for what, value in [("name", name), ("class", rate_class)] + [("model", m) for m in models]:
        if not NAME_RE.match(value):
            raise ValueError(f"{what} {value!r}: use 1-64 of A-Z a-z 0-9 . _ -")
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ValueError(f"scopes must be one or more of {', '.join(SCOPES)}")
    key_id = secrets.token_hex(6)
    key = f"fk_{key_id}_{secrets.token_urlsafe(32)}"
    return key, ApiKey(key_id, name, digest(key), scopes, models, rate_class)


# -- the keys file ---------------------------------------------------------------


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
    doc = {"version": FILE_VERSION, "keys": [k.to_doc() for k in keys]}
    # As root, the file takes its directory's owner (the service user's state
    # directory), so the services can read what an operator wrote with sudo.
    write_atomically(path, json.dumps(doc, indent=2) + "\n", mode=0o600, owner_of_dir=True)


class KeyStore:
    """One process's view of the keys file, thread-safe.

    :meth:`get` re-reads the file when it changed (inode, mtime or size: a
    ``falconctl keys`` write is a rename, so a new inode), checking at most every
    ``reload_s``. The constructor reads it once and raises KeysFileError if it is
    malformed; later, a malformed file is logged and the keys read before stay in
    force (APPSEC: a broken hand edit must not lock every client out; ``falconctl
    keys`` never writes a broken file). A deleted file means no keys. A file that
    changed and cannot be read (permissions, I/O error, not a file) means no keys
    either, logged as an error: APPSEC: what it says may be a revocation, and the
    keys read before must not stay in force for ever (issue 15 item 13).
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


# -- the authorisation step --------------------------------------------------------


class Authorizer:
    """Transport-free: which key a credential is, and whether it may do this.

    :meth:`check` returns the key's entry or raises Unauthorized (no, malformed,
    unknown, wrong or revoked key) or Forbidden (missing scope, model not
    allowed); each refusal is counted in ``falcon_auth_failures_total{reason}``.
    """

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self._logged: dict[tuple[str, str], float] = {}

    def _refuse(self, reason: str, exc: Exception, key_id: str | None = None) -> Exception:
        AUTH_FAILURES.labels(reason).inc()
        if key_id is not None:  # a real key: worth a line, once a minute per key and reason
            now = time.monotonic()
            if now - self._logged.get((key_id, reason), -60.0) >= 60.0:
                self._logged[(key_id, reason)] = now
                log.warning("API key %s refused (%s): %s", key_id, reason, exc)
        return exc

    def check(self, credential: str | None, scope: str, model: str | None = None) -> ApiKey:
        if not credential:
            raise self._refuse("missing", Unauthorized(f"missing API key: {HOW}"))
        key_id = parse(credential)
        if key_id is None:
            raise self._refuse("malformed", Unauthorized(
                "malformed API key: expected fk_<id>_<secret>", invalid=True))
        entry = self.store.get(key_id)
        # NOTE: an unknown id answers faster than a wrong secret; ids are public,
        # so that tells nothing. The secret is compared in constant time.
        if entry is None or not entry.matches(credential):
            raise self._refuse("invalid", Unauthorized("invalid API key", invalid=True),
                               key_id if entry else None)
        if entry.revoked:
            raise self._refuse("revoked", Unauthorized(
                f"API key {key_id} has been revoked", invalid=True), key_id)
        if scope not in entry.scopes:
            raise self._refuse("scope", Forbidden(
                f"API key {key_id} lacks the '{scope}' scope (it has: "
                f"{', '.join(entry.scopes)})"), key_id)
        if model is not None and not entry.allows_model(model):
            raise self._refuse("model", Forbidden(
                f"API key {key_id} may not use model '{model}'"), key_id)
        return entry


def credential(req: falcon.Request) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or else ``X-API-Key``."""
    auth = req.get_header("Authorization")
    if auth:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer":
            return value.strip()
    return req.get_header("X-API-Key")


class AuthMiddleware:
    """Falcon middleware: the route's resource declares the scope it needs in a
    ``scope`` class attribute (None: open). APPSEC: a resource that declares
    nothing needs ``admin`` (fail closed), except ``open_resources``. Sets
    ``req.context.api_key_id`` (the id, never the key) and ``req.context.api_key``
    (the entry: a route that answers about every model keeps those it allows)."""

    def __init__(self, authorizer: Authorizer, open_resources: tuple[type, ...] = ()) -> None:
        self.authorizer = authorizer
        self.open_resources = open_resources

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         params: dict[str, Any]) -> None:
        if resource is None or isinstance(resource, self.open_resources):
            return
        scope = getattr(resource, "scope", ADMIN)
        if scope is None:
            return
        entry = self.authorizer.check(credential(req), scope, params.get("model"))
        req.context.api_key_id = entry.id
        req.context.api_key = entry  # (a route over every model filters by allows_model)


_warn_registered = False


def _warn_disabled() -> None:
    log.warning("AUTH IS DISABLED (auth.enabled = false): every caller may predict and "
                "manage models without an API key")


def from_settings(s: Settings) -> Authorizer | None:
    """The edge's authorizer, or None (logged loudly, here and in every forked
    worker) when ``auth.enabled`` is false. Raises ConfigError naming the file
    if the keys file is malformed."""
    global _warn_registered
    if not s.auth.enabled:
        _warn_disabled()
        if not _warn_registered:  # gunicorn preloads the app, then forks its workers
            os.register_at_fork(after_in_child=_warn_disabled)
            _warn_registered = True
        return None
    path = Path(s.keys_file)
    try:
        store = KeyStore(path, s.auth.reload_s)
    except (OSError, KeysFileError) as exc:
        raise ConfigError(f"auth.keys_file: {exc}") from None
    active = sum(not k.revoked for k in store.keys.values())
    if not active:
        log.warning("no active API key in %s: every request needing one is refused "
                    "(create one with `falconctl keys create`)", path)
    return Authorizer(store)
