"""Errors of the edge core.

Core errors carry their *cause* (a class), never an HTTP status: the core knows
nothing of HTTP. ``edge.http_errors`` holds the one table that maps each class
to a status code, and the one Falcon handler that renders it.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Root of every error the edge core raises on purpose."""


class InvalidInput(EdgeError):
    """The request is malformed or does not fit the model.

    ``field`` names the offending part of the request in the client's terms
    (``inputs[0].shape``, ``instances[3]``, ``body``), ``reason`` says why.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class PayloadTooLarge(InvalidInput):
    """The request carries more data than the configured limits allow
    (body bytes, batch rows, tensor elements)."""


class ModelNotFound(EdgeError):
    """No such model, or no such version of it, is loaded in the daemon."""


class ModelNotReady(EdgeError):
    """The model exists in the repository but is not loaded (yet)."""


class Unavailable(EdgeError):
    """A dependency (the inference daemon) cannot take the request now:
    down, restarting, draining, or its queue is full. Safe to retry later."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(EdgeError):
    """The request's deadline passed before an answer was computed."""


class InferenceFailed(EdgeError):
    """The model ran but failed on this input (an error inside ONNX Runtime).
    Not retryable; the message comes from the runtime."""


class ResultTooLarge(EdgeError):
    """The answer to this request would exceed the daemon's frame limit
    (``daemon.max_frame_bytes``) or what the face can send (``grpc.max_message_bytes``;
    checked before the audit, so it is never recorded as served). Not retryable as it
    is: send fewer rows."""


class Unauthorized(EdgeError):
    """No usable API key: none was sent, it is malformed, unknown, wrong, or
    revoked. ``invalid`` is true when a key was sent but not accepted (the
    client should get a new one rather than retry)."""

    def __init__(self, message: str, invalid: bool = False) -> None:
        super().__init__(message)
        self.invalid = invalid


class Forbidden(EdgeError):
    """A valid API key that may not do this: it lacks the route's scope, or
    the model is not in its allow list."""
