"""The API keys' errors (root :class:`ApiKeyError`). None carries an HTTP status: the
edge maps :class:`Unauthenticated` to 401 and :class:`NotPermitted` to 403
(``edge/auth.py``)."""

from __future__ import annotations


class ApiKeyError(Exception):
    """Root of every error the ``apikeys`` package raises on purpose."""


class KeysFileError(ApiKeyError, ValueError):
    """The keys file is not valid JSON or an entry is malformed (likely a hand
    edit); the message names the file and the entry."""


class Refused(ApiKeyError):
    """A credential the :class:`~apikeys.authorizer.Authorizer` does not accept for
    what was asked. ``reason`` is one of :data:`REASONS` (a metric label); ``key_id``
    the key's id when the credential named a real key, else None. The message never
    holds the key itself."""

    def __init__(self, reason: str, message: str, key_id: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.key_id = key_id


class Unauthenticated(Refused):
    """No usable key: none was sent (``missing``), it is ``malformed``, unknown or
    wrong (``invalid``), or ``revoked``. ``invalid`` is true when a key was sent but
    not accepted (the client should get a new one rather than retry: RFC 6750's
    ``invalid_token``)."""

    @property
    def invalid(self) -> bool:
        return self.reason != "missing"


class NotPermitted(Refused):
    """A valid key that may not do this: it lacks the ``scope``, or the ``model`` is
    not in its allow list."""


REASONS = ("missing", "malformed", "invalid", "revoked", "scope", "model")
