"""An API key: its format, its entry in the keys file, generation and hashing.

A key is ``fk_<id>_<secret>``::

    fk_ 3f9c0a1b2d4e _ Qm9...43 chars...
        |            |
        |            +-- secret: 32 bytes from `secrets`, base64url, no padding (43 chars)
        +-- id: 12 lowercase hex characters (48 random bits); public

The id names the key everywhere a key must be named (logs, audit records,
``falconctl keys list``, HAProxy's per-key limits map); the key itself is shown
once, by ``falconctl keys create``, and never stored: the keys file holds
``sha256(key)`` only.

APPSEC: a plain SHA-256 is the right hash here, not a slow KDF (bcrypt,
scrypt, argon2). Slow KDFs protect *low-entropy* secrets (passwords) against
offline guessing; a 256-bit random secret cannot be guessed however fast the
hash, and a slow KDF would cost milliseconds of CPU on every request. The
stored digest is compared in constant time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from apikeys.errors import KeysFileError

PREDICT, ADMIN = "predict", "admin"
SCOPES = (PREDICT, ADMIN)
DEFAULT_CLASS = "default"
KEY_RE = re.compile(r"^fk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # names, model names in allow lists, classes


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
    """One entry of the keys file (never the key itself). ``models`` empty means
    every model; ``rate_class`` (``class`` in the file) picks the key's HAProxy rate
    limit (``haproxy.key_classes``)."""

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
        """The entry a keys file's JSON object describes. Raises KeysFileError
        naming ``where``."""
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
