"""The one place core errors become HTTP: a status table and one handler.

Every error body is ``{"error": "<message>"}`` (the Open Inference Protocol's
shape), Falcon's own errors (unknown route, wrong method) included. An
exception nobody planned for is logged with its traceback and answered with a
generic 500 that leaks nothing (as Falcon's ``_python_error_handler`` does).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import falcon
import orjson

from edge import errors

log = logging.getLogger(__name__)

STATUS: dict[type[errors.EdgeError], str] = {
    errors.PayloadTooLarge: falcon.HTTP_413,  # before its base class InvalidInput
    errors.InvalidInput: falcon.HTTP_400,
    errors.InferenceFailed: falcon.HTTP_400,
    errors.ResultTooLarge: falcon.HTTP_400,  # the same request never fits; fewer rows do
    errors.ModelNotFound: falcon.HTTP_404,
    errors.ModelNotReady: falcon.HTTP_503,
    errors.Unavailable: falcon.HTTP_503,
    errors.DeadlineExceeded: falcon.HTTP_504,
    errors.Unauthorized: falcon.HTTP_401,
    errors.Forbidden: falcon.HTTP_403,
}


def status_for(exc: errors.EdgeError) -> str:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return falcon.HTTP_500


def render_error(resp: falcon.Response, status: str, message: str) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = orjson.dumps({"error": message})


def handle_edge_error(req: falcon.Request, resp: falcon.Response, exc: errors.EdgeError,
                      params: dict[str, Any]) -> None:
    status = status_for(exc)
    render_error(resp, status, str(exc))
    if status.startswith("5"):  # server-side failures, with the ids that follow them across processes
        log.info("%s %s -> %s request_id=%s trace=%s: %s", req.method, req.path, status[:3],
                 req.context.get("request_id"), req.context.get("trace_id"), exc)
    if status == falcon.HTTP_503:  # every 503 says when to come back (ModelNotReady: 1 s)
        retry_after = exc.retry_after if isinstance(exc, errors.Unavailable) else 1.0
        resp.set_header("Retry-After", str(max(1, math.ceil(retry_after))))
    elif isinstance(exc, errors.Unauthorized):  # RFC 6750 section 3
        resp.set_header("WWW-Authenticate", 'Bearer realm="falcon"' +
                        (', error="invalid_token"' if exc.invalid else ""))


def handle_http_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError,
                      params: dict[str, Any]) -> None:
    message = exc.description or exc.title or "error"
    render_error(resp, exc.status, message)  # type: ignore[arg-type]
    if exc.headers:
        resp.set_headers(exc.headers)


def handle_unexpected(req: falcon.Request, resp: falcon.Response, exc: Exception,
                      params: dict[str, Any]) -> None:
    log.exception("unhandled error on %s %s", req.method, req.path)
    render_error(resp, falcon.HTTP_500, "internal server error")


def install(app: falcon.App) -> None:
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(errors.EdgeError, handle_edge_error)
