"""The one place core errors become gRPC status codes: a table and one wrapper.

The gRPC twin of ``edge.http_errors`` (same classes, same order of precedence).
Every handler of :class:`~edge.grpcface.service.InferenceService` runs inside
:func:`answer`: an :class:`~edge.errors.EdgeError` becomes its code with the
error's message (``inputs[0].shape: ...`` names the field, as REST's 400 does); an
exception nobody planned for is logged with its traceback and answered
``INTERNAL`` with a message that leaks nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import grpc

from edge import errors

log = logging.getLogger(__name__)

CODES: dict[type[errors.EdgeError], grpc.StatusCode] = {
    errors.PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,  # before InvalidInput
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InferenceFailed: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ResultTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,  # fewer rows fit
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    errors.Forbidden: grpc.StatusCode.PERMISSION_DENIED,
}

T = TypeVar("T")


def code_for(exc: errors.EdgeError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in CODES:
            return CODES[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


def answer(context: grpc.ServicerContext, method: str, handler: Callable[[], T]) -> T:
    """``handler()``'s result, or the call aborted with the status of what it raised
    (``context.abort`` raises: nothing after it runs)."""
    try:
        return handler()
    except errors.EdgeError as exc:
        code = code_for(exc)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.INTERNAL):
            log.info("%s -> %s: %s", method, code.name, exc)
        if isinstance(exc, errors.Unavailable):
            context.set_trailing_metadata((("retry-after", str(max(1, round(exc.retry_after)))),))
        context.abort(code, str(exc))
    except Exception:  # noqa: BLE001 - the generic INTERNAL, logged with its traceback
        log.exception("unhandled error in %s", method)
        context.abort(grpc.StatusCode.INTERNAL, "internal server error")
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


