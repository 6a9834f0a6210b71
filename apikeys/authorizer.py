"""The authorisation decision: which key a credential is, and whether it may do this.

Usage: ``entry = Authorizer(store).check(credential, PREDICT, model)``: the key's
:class:`~apikeys.key.ApiKey`, or :class:`~apikeys.errors.Unauthenticated` /
:class:`~apikeys.errors.NotPermitted` with a ``reason``. Where the credential comes
from (a header, gRPC metadata) and what a refusal becomes (401/403, a gRPC code, a
metric) is the caller's: ``edge/auth.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from apikeys.errors import NotPermitted, Refused, Unauthenticated
from apikeys.key import ApiKey, parse
from apikeys.store import KeyStore

log = logging.getLogger(__name__)

HOW = "send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
LOG_EVERY_S = 60.0  # a refused real key is logged once a minute per key and reason


class Authorizer:
    """Transport-free and thread-safe: :meth:`check` returns the key's entry or raises
    :class:`Unauthenticated` (no, malformed, unknown, wrong or revoked key) or
    :class:`NotPermitted` (missing scope, model not allowed). A refusal of a real key
    is logged with its id (never the key), once a minute per key and reason."""

    def __init__(self, store: KeyStore, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock
        self._logged: dict[tuple[str, str], float] = {}

    def _refuse(self, exc: Refused) -> Refused:
        if exc.key_id is not None:  # a real key: worth a line
            now, seen = self.clock(), (exc.key_id, exc.reason)
            if seen not in self._logged or now - self._logged[seen] >= LOG_EVERY_S:
                self._logged[seen] = now
                log.warning("API key %s refused (%s): %s", exc.key_id, exc.reason, exc)
        return exc

    def check(self, credential: str | None, scope: str, model: str | None = None) -> ApiKey:
        if not credential:
            raise self._refuse(Unauthenticated("missing", f"missing API key: {HOW}"))
        key_id = parse(credential)
        if key_id is None:
            raise self._refuse(Unauthenticated(
                "malformed", "malformed API key: expected fk_<id>_<secret>"))
        entry = self.store.get(key_id)
        # NOTE: an unknown id answers faster than a wrong secret; ids are public,
        # so that tells nothing. The secret is compared in constant time.
        if entry is None or not entry.matches(credential):
            raise self._refuse(Unauthenticated("invalid", "invalid API key",
                                               key_id if entry else None))
        if entry.revoked:
            raise self._refuse(Unauthenticated(
                "revoked", f"API key {key_id} has been revoked", key_id))
        if scope not in entry.scopes:
            raise self._refuse(NotPermitted(
                "scope", f"API key {key_id} lacks the '{scope}' scope (it has: "
                f"{', '.join(entry.scopes)})", key_id))
        if model is not None and not entry.allows_model(model):
            raise self._refuse(NotPermitted(
                "model", f"API key {key_id} may not use model '{model}'", key_id))
        return entry
