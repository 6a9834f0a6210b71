"""The edge's request spans: a Falcon middleware making one SERVER span per request.

Usage: ``create_app(core, ..., tracing=tracing)`` adds :class:`TraceMiddleware` first
in the middleware list when ``tracing.enabled`` (and not at all otherwise); the
worker starts the exporter after the fork (``edge.server``'s ``post_worker_init``).

The span is made once the route is known (``process_resource``: its name is
``"<METHOD> <route template>"``), child of the request's ``traceparent`` if it has a
valid one (sampled as that says), else a new trace sampled at ``tracing.sample_ratio``.
It is left in ``req.context.span``: :func:`edge.resources.context` takes the request's
trace id from it and echoes its ``traceparent``; the core makes its children
(validate, cache lookup, daemon infer, WAL append) from ``RequestContext.span``; the
metrics middleware reads the sampled trace id for its exemplar. It ends in
``process_response`` with the status and what the resource reported (model, version,
cached, request id). Health checks and ``/metrics`` (resources with ``traced =
False``) get none. Attributes follow OpenTelemetry's HTTP semantic conventions.
"""

from __future__ import annotations

from typing import Any

import falcon

from telemetry import Tracing


def attributes(req: falcon.Request, route: str) -> dict[str, Any]:
    """The request span's HTTP semantic-convention attributes (made for a sampled
    request only: ``Tracing.server_span`` calls this after its decision)."""
    host, _, port = (req.get_header("Host") or "").rpartition(":")
    out: dict[str, Any] = {
        "http.request.method": req.method, "http.route": route, "url.path": req.path,
        "url.scheme": req.scheme, "network.protocol.version": req.env.get(
            "SERVER_PROTOCOL", "HTTP/1.1").partition("/")[2] or "1.1",
        "server.address": host or req.env.get("SERVER_NAME", ""),
        "client.address": req.access_route[0] if req.access_route else "",
    }
    if port.isdigit():
        out["server.port"] = int(port)
    agent = req.get_header("User-Agent")
    if agent:
        out["user_agent.original"] = agent
    return out


class TraceMiddleware:
    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         params: dict[str, Any]) -> None:
        if resource is None or not getattr(resource, "traced", True):
            return
        route = req.uri_template or req.path
        req.context.span = self.tracing.server_span(f"{req.method} {route}",
                                                    req.get_header("traceparent"),
                                                    lambda: attributes(req, route))

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         req_succeeded: bool) -> None:
        span = req.context.get("span")
        if span is None:
            return
        if span.is_recording():
            status = resp.status_code
            done: dict[str, Any] = {"http.response.status_code": status}
            for name, key in (("falcon.model", "model"), ("falcon.model.version", "version"),
                              ("falcon.request_id", "request_id"), ("falcon.face", "face")):
                value = req.context.get(key)
                if value:
                    done[name] = str(value)
            if req.context.get("model"):
                done["falcon.cached"] = bool(req.context.get("cached"))
            if status >= 500:
                from opentelemetry.trace import Status, StatusCode

                done["error.type"] = str(status)
                span.set_status(Status(StatusCode.ERROR))
            span.set_attributes(done)  # (one lock and one pass, not one per attribute)
        span.end()
