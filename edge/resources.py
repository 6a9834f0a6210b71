"""Falcon resources: parse, call the core, render. Nothing else lives here.

Two faces over one :class:`~edge.core.Core`:

- the Open Inference Protocol (KServe V2) under ``/v2``;
- the simple JSON face, ``POST /v1/models/{model}/predict`` (:class:`Predict`, which
  ``edge.kservev1`` also routes at KServe V1's ``/v1/models/{model}:predict``).
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from typing import Any

import falcon
import orjson
from gunicorn.http.errors import ParseException

from apikeys import ADMIN, PREDICT
from edge import v2codec
from edge.audit import RequestContext
from edge.core import EXTENSIONS, SERVER_NAME, SERVER_VERSION, Core
from edge.drain import draining
from edge.errors import InvalidInput, PayloadTooLarge
from edge.validation import ModelMeta, TensorMeta
from telemetry import trace_id_of, traceparent_of

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
TIMEOUT_HEADER = "X-Request-Timeout-Ms"


TRACEPARENT_RE = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


KEY_HEADER = "X-Falcon-Request-Key"
DRAIN_MAX = 1 << 20  # a body over the limit but under this is read (and dropped) before the 413


def context(req: falcon.Request, resp: falcon.Response, face: str,
            host: str = "edge") -> RequestContext:
    """Request id, request key and W3C trace context.

    The request key is HAProxy's unique id for this HTTP request
    (``X-Falcon-Request-Key`` = ``<front host id>-<uuid>``, set on every request,
    the same on every edge a retry reaches); an edge reached directly makes one
    up. The request id is the client's ``X-Request-Id`` when well-formed, else
    the request key. With the front's accept time (``X-Request-Start``), the
    pair keys the audit row: a request HAProxy re-sent to another edge or host
    after the first had logged it is one row, and two requests that share a
    client id are two. The trace id is the client's ``traceparent`` trace id, or
    a new one (echoed with this edge's span id: with tracing on, the request span's
    id and sampled flag, see ``edge.tracing``); it travels to the daemon, into
    logs and into the audit record. Id and traceparent are echoed back."""
    key = req.get_header(KEY_HEADER)
    if not key or not REQUEST_ID_RE.match(key):
        key = f"{host}-{uuid.uuid4().hex}"
    given = req.get_header("X-Request-Id")
    rid = given if given and REQUEST_ID_RE.match(given) else key
    resp.set_header("X-Request-Id", rid)
    span = req.context.get("span")  # edge.tracing's request span, when tracing is on
    if span is not None:
        trace_id = trace_id_of(span)
        resp.set_header("traceparent", traceparent_of(span))
    else:
        match = TRACEPARENT_RE.match(req.get_header("traceparent") or "")
        trace_id = match.group(1) if match and match.group(1) != "0" * 32 else secrets.token_hex(16)
        resp.set_header("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01")
    req.context.face, req.context.request_id, req.context.trace_id = face, rid, trace_id
    routing = req.get_header("X-Routing-Key")
    return RequestContext(rid, face, trace_id=trace_id, accepted=front_time(req),
                          request_key=key, api_key_id=req.context.get("api_key_id"),
                          routing_key=routing if routing and REQUEST_ID_RE.match(routing) else None,
                          span=span)


def label(req: falcon.Request, model: str, version: str, cached: bool = False) -> None:
    """What the metrics middleware reports for this request."""
    req.context.model, req.context.version, req.context.cached = model, version, cached


def read_body(req: falcon.Request, limit: int) -> bytes:
    """The body, at most ``limit`` bytes (PayloadTooLarge beyond). A chunked body
    (no Content-Length) is read from the server's stream, which decodes it to its end;
    Falcon's bounded stream would give nothing without a length."""
    length = req.content_length
    if length is not None and length > limit:
        if length <= DRAIN_MAX:  # read it first: a socket closed with unread bytes sends
            req.bounded_stream.exhaust()  # a reset that can destroy the 413 in flight
        raise PayloadTooLarge("body", f"{length} bytes exceed the limit of {limit}")
    stream = req.bounded_stream if length is not None else req.stream
    try:
        data = stream.read(limit + 1)
    except (ParseException, OSError) as exc:  # a bad chunk size, a body cut short
        raise InvalidInput("body", f"malformed or incomplete body ({type(exc).__name__})"
                           ) from None
    if len(data) > limit:
        raise PayloadTooLarge("body", f"more than {limit} bytes")
    return data


def parse_json(body: bytes) -> Any:
    if not body:
        raise InvalidInput("body", "empty; expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput("body", f"malformed JSON: {exc}{v2codec.utf8_error(body)}") from None


def requested_timeout(req: falcon.Request) -> int | None:
    raw = req.get_header(TIMEOUT_HEADER)
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise InvalidInput(TIMEOUT_HEADER, f"expected a positive integer of milliseconds, got {raw!r}")
    return int(raw)


def front_time(req: falcon.Request) -> float | None:
    """When HAProxy accepted the request (``X-Request-Start: t=<µs>``, unix
    seconds): the audit record's time, identical on every edge a retry reaches.
    None when absent, malformed, or more than a day away from this host's clock
    (a forged header must not create far-off partitions)."""
    raw = req.get_header("X-Request-Start") or ""
    if not raw.startswith("t=") or not raw[2:].isdigit() or len(raw) > 20:
        return None
    accepted = int(raw[2:]) / 1e6
    return accepted if abs(time.time() - accepted) < 86400.0 else None


def queued_s(req: falcon.Request) -> float:
    """Seconds since HAProxy accepted the request, 0 when unknown or implausible
    (this clock behind the front's by more than a second, more than 10 minutes)."""
    accepted = front_time(req)
    if accepted is None:
        return 0.0
    waited = time.time() - accepted
    return max(0.0, waited) if -1.0 < waited < 600.0 else 0.0


def send_json(resp: falcon.Response, obj: Any) -> None:
    resp.content_type = falcon.MEDIA_JSON
    resp.data = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


class Resource:
    # The API key scope a route needs (edge.auth.AuthMiddleware); None: open.
    # APPSEC: a resource that does not say needs admin.
    scope: str | None = ADMIN

    def __init__(self, core: Core, max_body: int, host_id: str = "edge") -> None:
        self.core = core
        self.max_body = max_body
        self.host_id = host_id  # prefix of the request ids this edge makes up

    def deadline(self, req: falcon.Request) -> float:
        return self.core.deadline(requested_timeout(req), queued_s(req))


class Live(Resource):
    scope = None
    traced = False  # health checks: no span (edge.tracing)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_json(resp, {"live": True})


class Ready(Resource):
    """200 only when the daemon answers and serves a model and this edge is not
    stopping; 503 otherwise, so HAProxy stops sending it work."""

    scope = None
    traced = False

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        ready = not draining() and self.core.ready()
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        send_json(resp, {"ready": ready})


class ServerMetadata(Resource):
    scope = None

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_json(resp, {"name": SERVER_NAME, "version": SERVER_VERSION,
                         "extensions": list(EXTENSIONS)})


def _tensor_meta(t: TensorMeta) -> dict[str, Any]:
    body: dict[str, Any] = {"name": t.name, "datatype": v2codec.numpy_to_v2(t.dtype),
                            "shape": list(t.shape)}
    if t.class_labels:
        body["parameters"] = {"class_labels": list(t.class_labels)}
    return body


def model_metadata_body(meta: ModelMeta) -> dict[str, Any]:
    """V2 model metadata. A model with a ZipMap output (served as FP32 [N, C]) also
    says its class labels, in column order, as ``parameters.class_labels`` of that
    output and of the model (the first such output's), with
    ``parameters.probabilities_output`` naming it."""
    body: dict[str, Any] = {"name": meta.name, "versions": list(meta.versions),
                            "platform": meta.platform,
                            "inputs": [_tensor_meta(t) for t in meta.inputs],
                            "outputs": [_tensor_meta(t) for t in meta.outputs]}
    zipmap = next((t for t in meta.outputs if t.class_labels), None)
    if zipmap is not None:
        body["parameters"] = {"class_labels": list(zipmap.class_labels),
                              "probabilities_output": zipmap.name}
    return body


class ModelMetadata(Resource):
    scope = PREDICT

    def on_get(self, req: falcon.Request, resp: falcon.Response, model: str,
               version: str | None = None) -> None:
        meta = self.core.metadata(model, version, self.deadline(req))
        send_json(resp, model_metadata_body(meta))


class ModelReady(Resource):
    """200 ``{"ready": true}`` when the model (version) is loaded; 400 ``{"ready":
    false}`` when it is in the repository but not loaded (the Open Inference Protocol:
    "a 4xx status code indicating false"; ``tritonclient``'s ``is_model_ready`` reads
    any non-200 as false); 404 when the repository has no such model or version."""

    scope = PREDICT

    def on_get(self, req: falcon.Request, resp: falcon.Response, model: str,
               version: str | None = None) -> None:
        ready = self.core.model_state(model, version, self.deadline(req))
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_400
        send_json(resp, {"name": model, "ready": ready})


class Infer(Resource):
    scope = PREDICT

    def on_post(self, req: falcon.Request, resp: falcon.Response, model: str,
                version: str | None = None) -> None:
        ctx = context(req, resp, "v2", self.host_id)
        deadline = self.deadline(req)
        body = read_body(req, self.max_body)
        header_length = v2codec.parse_header_length(req.get_header(v2codec.HEADER_LENGTH_HEADER))
        parsed = v2codec.decode_infer_request(body, header_length,
                                              max_body_elements=self.max_body)
        outputs = [o.name for o in parsed.outputs] if parsed.outputs is not None else None
        result = self.core.infer(ctx, model, version, parsed.inputs, outputs, deadline,
                                 parsed.classes)
        label(req, result.model, result.version, result.cached)
        data, headers = v2codec.encode_infer_response(
            model_name=result.model, model_version=result.version,
            request_id=parsed.id if parsed.id is not None else ctx.request_id,
            outputs=result.outputs, binary=parsed.wants_binary)
        resp.data = data
        for name, value in headers.items():
            resp.set_header(name, value)


class Predict(Resource):
    """``POST /v1/models/{model}/predict`` with ``{"instances": [[...], ...]}``."""

    scope = PREDICT

    def on_post(self, req: falcon.Request, resp: falcon.Response, model: str,
                version: str | None = None) -> None:
        ctx = context(req, resp, "v1", self.host_id)
        deadline = self.deadline(req)
        doc = parse_json(read_body(req, self.max_body))
        if not isinstance(doc, dict):
            raise InvalidInput("body", "expected a JSON object with an 'instances' list")
        if "instances" not in doc:
            raise InvalidInput("instances", "missing; expected a list of rows")
        unknown = sorted(set(doc) - {"instances"})
        if unknown:
            raise InvalidInput(unknown[0], "unknown field (allowed: instances)")
        pred = self.core.predict(ctx, model, version, doc["instances"], deadline)
        label(req, pred.model, pred.version, pred.cached)
        send_json(resp, {"model": pred.model, "version": pred.version, "request_id": ctx.request_id,
                         "cached": pred.cached, "predictions": pred.rows})

