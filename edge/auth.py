"""The edge's API key check: a thin adapter from HTTP (and gRPC) to ``apikeys``.

Usage: ``create_app(..., authorizer=from_settings(settings))`` installs
:class:`AuthMiddleware`; each resource declares the scope it needs in a ``scope``
class attribute. The key format, the keys file, the reloading store and the decision
itself are the transport-free :mod:`apikeys` package; this module only finds the
credential in a request, asks :meth:`apikeys.Authorizer.check`, counts a refusal in
``falcon_auth_failures_total{reason}`` (``edge/metrics.py``) and turns it into the
edge's :class:`~edge.errors.Unauthorized` (401) or :class:`~edge.errors.Forbidden`
(403) through :func:`authorize`, which the gRPC face (``edge/grpcface/service.py``)
calls too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import falcon

from apikeys import (
    ADMIN,
    ApiKey,
    Authorizer,
    KeysFileError,
    KeyStore,
    NotPermitted,
    Unauthenticated,
)
from edge.errors import Forbidden, Unauthorized
from edge.metrics import AUTH_FAILURES
from settings import ConfigError, Settings

log = logging.getLogger(__name__)


def authorize(authorizer: Authorizer, credential: str | None, scope: str,
              model: str | None = None) -> ApiKey:
    """The key's entry, or Unauthorized / Forbidden (each refusal counted by reason)."""
    try:
        return authorizer.check(credential, scope, model)
    except Unauthenticated as exc:
        AUTH_FAILURES.labels(exc.reason).inc()
        raise Unauthorized(str(exc), invalid=exc.invalid) from None
    except NotPermitted as exc:
        AUTH_FAILURES.labels(exc.reason).inc()
        raise Forbidden(str(exc)) from None


def may_use(req: falcon.Request, model: str) -> bool:
    """Whether the request's API key may use ``model``: what a route answering about
    every model keeps (APPSEC: a key limited to some models sees only theirs). True
    when auth is off (no key on the request)."""
    key = req.context.get("api_key")
    return key is None or key.allows_model(model)


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
        entry = authorize(self.authorizer, credential(req), scope, params.get("model"))
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
