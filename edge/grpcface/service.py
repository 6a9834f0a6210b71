"""``inference.GRPCInferenceService`` over the edge core: parse, authorise, call, render.

The gRPC face of the Open Inference Protocol, as Triton defines it, so stock
``tritonclient.grpc`` works. Each RPC is a thin adapter over :class:`~edge.core.Core`
(the same validation, version routing and splits, cache and audit as REST):

=======================  =========  ==================================================
RPC                      scope      core call
=======================  =========  ==================================================
ServerLive               open       (the process answers)
ServerReady              open       ``Core.ready``
ServerMetadata           open       name, version, extensions
ModelReady               predict    ``Core.model_ready``
ModelMetadata            predict    ``Core.metadata``
ModelConfig              predict    ``Core.metadata`` -> ``edge.modelconfig.model_config``
ModelInfer               predict    ``Core.infer`` (audited, face ``grpc``; an output's
                                    ``classification``: edge/classification.py)
ModelStatistics          predict    ``Core.stats``
RepositoryIndex          admin      ``Core.manage(ops.Index())``
RepositoryModelLoad      admin      ``Core.manage(ops.Load(...))`` (``parameters["version"]``)
RepositoryModelUnload    admin      ``Core.manage(ops.Unload(...))``
=======================  =========  ==================================================

The other RPCs of the service (shared memory, trace and log settings, streaming)
answer ``UNIMPLEMENTED``, grpcio's default.

Request metadata, as REST's headers: ``authorization: Bearer <key>`` (or
``x-api-key``), ``x-request-id``, ``traceparent``, ``x-routing-key``; from HAProxy
only (with ``x-falcon-proxy-secret``, see :mod:`edge.proxyauth`) ``x-falcon-request-key``
and ``x-request-start``. The client's gRPC deadline is the request's deadline
(lowered to ``edge.deadline_ms`` at most). Answers carry ``x-request-id`` and
``traceparent`` in their trailing metadata. Errors: :mod:`edge.grpcface.status`.

Tracing on (``tracing.endpoint``), a ``ModelInfer`` call is a SERVER span
``inference.GRPCInferenceService/ModelInfer`` (``rpc.*`` attributes), child of the
call's ``traceparent`` as REST's request span is, with the core's child spans.
"""

from __future__ import annotations

import hmac
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import json_format

from apikeys import ADMIN, PREDICT, Authorizer
from edge import metrics
from edge.audit import RequestContext
from edge.auth import authorize
from edge.core import EXTENSIONS, SERVER_NAME, SERVER_VERSION, Core
from edge.errors import Forbidden, InvalidInput
from edge.grpcface import codec, status
from edge.grpcface.proto import grpc_service_pb2 as pb
from edge.grpcface.proto import grpc_service_pb2_grpc as pb_grpc
from edge.modelconfig import model_config
from edge.proxyauth import TRUSTED_HEADERS
from edge.resources import REQUEST_ID_RE, TRACEPARENT_RE, model_metadata_body
from telemetry import sampled_trace_id, trace_id_of, traceparent_of
from wire import ops

FACE = "grpc"
SECRET_KEY = "x-falcon-proxy-secret"
READY_HEADER = "x-falcon-ready"
HEALTH = ("falcon.Health", "Ready")  # HAProxy's health check (ops/haproxy/haproxy.cfg)
_TRUSTED = tuple(h.lower() for h in TRUSTED_HEADERS)
# The status label of a refused call in the requests metric: its HTTP twin (edge.http_errors).
HTTP_EQUIVALENT = {grpc.StatusCode.INVALID_ARGUMENT: "400", grpc.StatusCode.UNAUTHENTICATED: "401",
                   grpc.StatusCode.PERMISSION_DENIED: "403", grpc.StatusCode.NOT_FOUND: "404",
                   grpc.StatusCode.RESOURCE_EXHAUSTED: "413", grpc.StatusCode.UNAVAILABLE: "503",
                   grpc.StatusCode.DEADLINE_EXCEEDED: "504"}
LOAD_DEADLINE_S = 120.0  # loading parses and publishes a model: more than a prediction's


ANSWER_ENVELOPE = 1024  # bytes of a ModelInferResponse beyond its tensors' contents (ample)

class Call:
    """One call's metadata, read once: credential, ids, trust, deadline."""

    def __init__(self, context: grpc.ServicerContext, proxy_secret: str | None,
                 host: str) -> None:
        md: dict[str, str] = {}
        for k, v in context.invocation_metadata() or ():
            if isinstance(v, str):
                md.setdefault(k.lower(), v)
        self.context = context
        self.md = md
        self.api_key: Any = None  # the caller's key entry, once checked
        self.trusted = self._check_proxy(proxy_secret)
        key = md.get("x-falcon-request-key", "") if self.trusted else ""
        self.request_key = key if REQUEST_ID_RE.match(key) else f"{host}-{uuid.uuid4().hex}"

    def _check_proxy(self, secret: str | None) -> bool:
        """True when HAProxy sent this call (its secret); Forbidden when the call
        carries HAProxy's metadata without it (APPSEC: see edge.proxyauth)."""
        given = self.md.get(SECRET_KEY)
        if given is None:
            if any(h in self.md for h in _TRUSTED):
                raise Forbidden("HAProxy's metadata (x-falcon-request-key, x-request-start, "
                                "forwarded addresses) is accepted only from HAProxy")
            return False
        if secret is None or not hmac.compare_digest(given.encode("latin-1", "replace"),
                                                     secret.encode()):
            raise Forbidden("wrong x-falcon-proxy-secret")
        return True

    def credential(self) -> str | None:
        auth = self.md.get("authorization", "")
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer":
            return value.strip()
        return self.md.get("x-api-key")

    def timeout_ms(self) -> int | None:
        remaining = self.context.time_remaining()
        return None if remaining is None else max(1, int(remaining * 1000))

    def accepted(self) -> float | None:
        raw = self.md.get("x-request-start", "") if self.trusted else ""
        if not raw.startswith("t=") or not raw[2:].isdigit() or len(raw) > 20:
            return None
        accepted = int(raw[2:]) / 1e6
        return accepted if abs(time.time() - accepted) < 86400.0 else None

    def request_context(self, api_key_id: str | None, span: Any = None) -> RequestContext:
        """``span``: the call's span (tracing on), whose trace id and traceparent it takes."""
        given = self.md.get("x-request-id", "")
        rid = given if REQUEST_ID_RE.match(given) else self.request_key
        if span is not None:
            trace, parent = trace_id_of(span), traceparent_of(span)
        else:
            match = TRACEPARENT_RE.match(self.md.get("traceparent", ""))
            trace = match.group(1) if match and match.group(1) != "0" * 32 \
                else secrets.token_hex(16)
            parent = f"00-{trace}-{secrets.token_hex(8)}-01"
        self.context.set_trailing_metadata((("x-request-id", rid), ("traceparent", parent)))
        routing = self.md.get("x-routing-key", "")
        return RequestContext(rid, FACE, trace_id=trace, accepted=self.accepted(),
                              request_key=self.request_key, api_key_id=api_key_id,
                              routing_key=routing if REQUEST_ID_RE.match(routing) else None,
                              span=span)


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """Thread-safe (the core is); one instance serves every call of the process."""

    def __init__(self, core: Core, *, authorizer: Authorizer | None = None,
                 proxy_secret: str | None = None, host_id: str = "grpc",
                 max_elements: int = 16 << 20, max_message: int | None = None,
                 ready: Callable[[], bool] = lambda: True) -> None:
        self.core = core
        self.authorizer = authorizer
        self.proxy_secret = proxy_secret
        self.host_id = host_id
        self.max_elements = max_elements
        # An answer grpcio could not send must be refused before the audit records it as
        # served: its tensors' bytes, less room for the message's own fields.
        self.max_answer = (None if max_message is None
                           else max_message - min(ANSWER_ENVELOPE, max_message // 4))
        self.serving = ready  # False while draining

    # -- the steps every RPC shares ------------------------------------------
    def _serve(self, context: grpc.ServicerContext, method: str, scope: str | None,
               model: str | None, body: Callable[[Call, str | None], Any]) -> Any:
        def run() -> Any:
            call = Call(context, self.proxy_secret, self.host_id)
            key_id = None
            if scope is not None and self.authorizer is not None:
                call.api_key = authorize(self.authorizer, call.credential(), scope, model or None)
                key_id = call.api_key.id
            return body(call, key_id)
        return status.answer(context, method, run)

    def _deadline(self, call: Call) -> float:
        return self.core.deadline(call.timeout_ms())

    # -- health and metadata ---------------------------------------------------
    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.serving() and self.core.ready())

    def health_check(self, requests: Any, context: grpc.ServicerContext) -> bytes:
        """``/falcon.Health/Ready`` (see :data:`HEALTH`): HAProxy's check. Its answer's
        headers say ``x-falcon-ready: true|false``; it takes any number of messages,
        so a check that can send no bytes of a message (no NUL in HAProxy's check
        bodies) still reaches it."""
        ready = self.serving() and self.core.ready()
        context.send_initial_metadata(((READY_HEADER, "true" if ready else "false"),))
        return b""

    def health_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(HEALTH[0], {HEALTH[1]: (
            grpc.stream_unary_rpc_method_handler(self.health_check,
                                                 response_serializer=bytes))})

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION,
                                         extensions=list(EXTENSIONS))

    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._serve(context, "ModelReady", PREDICT, request.name, lambda call, _: (
            pb.ModelReadyResponse(ready=self.core.model_ready(
                request.name, request.version or None, self._deadline(call)))))

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body(call: Call, _: str | None) -> Any:
            meta = self.core.metadata(request.name, request.version or None, self._deadline(call))
            return json_format.ParseDict(model_metadata_body(meta), pb.ModelMetadataResponse(),
                                         ignore_unknown_fields=True)
        return self._serve(context, "ModelMetadata", PREDICT, request.name, body)

    def ModelConfig(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body(call: Call, _: str | None) -> Any:
            meta = self.core.metadata(request.name, request.version or None, self._deadline(call))
            return json_format.ParseDict({"config": model_config(meta, self.core.max_rows)},
                                         pb.ModelConfigResponse())
        return self._serve(context, "ModelConfig", PREDICT, request.name, body)

    # -- inference ---------------------------------------------------------------
    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        labels = [request.model_name, request.model_version, "500", "false"]
        span = self._span(context, "ModelInfer")

        def body(call: Call, key_id: str | None) -> Any:
            ctx = call.request_context(key_id, span)
            deadline = self._deadline(call)
            inputs, outputs = codec.decode_infer_request(request, self.max_elements)
            result = self.core.infer(ctx, request.model_name, request.model_version or None,
                                     inputs, outputs, deadline, codec.requested_classes(request),
                                     max_answer_bytes=self.max_answer)
            labels[1:] = [result.version, "200", "true" if result.cached else "false"]
            return codec.encode_infer_response(result.model, result.version,
                                               request.id or ctx.request_id, result.outputs)
        try:
            return self._serve(context, "ModelInfer", PREDICT, request.model_name, body)
        finally:
            code = context.code() if hasattr(context, "code") else None
            if code is not None and code != grpc.StatusCode.OK:
                labels[2] = HTTP_EQUIVALENT.get(code, "500")
            # the REST face's series, face="grpc": one dashboard and one set of alerts
            metrics.REQUESTS.labels(labels[0], labels[1], FACE, labels[2], labels[3]).inc()
            metrics.EXEMPLARS.observe(metrics.LATENCY, (labels[0], FACE),
                                      time.perf_counter() - started, sampled_trace_id(span))
            if span is not None:
                self._end(span, code, labels)

    def _span(self, context: grpc.ServicerContext, method: str) -> Any:
        """The call's SERVER span, or None (tracing off)."""
        if self.core.tracing.tracer is None:
            return None
        md = dict((k.lower(), v) for k, v in context.invocation_metadata() or ()
                  if isinstance(v, str))
        service = "inference.GRPCInferenceService"
        return self.core.tracing.server_span(f"{service}/{method}", md.get("traceparent"), {
            "rpc.system": "grpc", "rpc.service": service, "rpc.method": method,
            "server.address": self.host_id, "network.peer.address": context.peer() or ""})

    @staticmethod
    def _end(span: Any, code: Any, labels: list[str]) -> None:
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", (code or grpc.StatusCode.OK).value[0])
            span.set_attribute("falcon.model", labels[0])
            span.set_attribute("falcon.model.version", labels[1])
            span.set_attribute("falcon.cached", labels[3] == "true")
            if labels[2].startswith("5"):
                from opentelemetry.trace import Status, StatusCode

                span.set_status(Status(StatusCode.ERROR))
        span.end()

    def ModelStatistics(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body(call: Call, _: str | None) -> Any:
            stats = self.core.stats(request.name or None, request.version or None,
                                    self._deadline(call)).to_wire()
            if call.api_key is not None:  # APPSEC: a key limited to some models sees theirs
                stats["model_stats"] = [m for m in stats.get("model_stats", [])
                                        if call.api_key.allows_model(str(m.get("name")))]
            return json_format.ParseDict(stats, pb.ModelStatisticsResponse(),
                                         ignore_unknown_fields=True)
        return self._serve(context, "ModelStatistics", PREDICT, request.name, body)

    # -- the model repository --------------------------------------------------------
    def RepositoryIndex(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body(call: Call, _: str | None) -> Any:
            index = self.core.manage(ops.Index(), self._deadline(call))
            resp = pb.RepositoryIndexResponse()
            for m in index.models:
                if not request.ready or m.state == "READY":
                    resp.models.add(name=m.name, version=m.version, state=m.state,
                                    reason=m.reason)
            return resp
        return self._serve(context, "RepositoryIndex", ADMIN, None, body)

    def RepositoryModelLoad(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._manage(context, ops.Load, request, pb.RepositoryModelLoadResponse())

    def RepositoryModelUnload(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._manage(context, ops.Unload, request, pb.RepositoryModelUnloadResponse())

    def _manage(self, context: grpc.ServicerContext, op: type[ops.Load | ops.Unload],
                request: Any, done: Any) -> Any:
        def body(call: Call, _: str | None) -> Any:
            change = op(model=request.model_name, version=version_param(request.parameters))
            self.core.manage(change, self.core.clock() + LOAD_DEADLINE_S)
            return done
        return self._serve(context, f"Repository{op.OP.title()}", ADMIN, None, body)


def version_param(params: Any) -> str | None:
    """``parameters["version"]`` of a load or unload (a string or an integer), or None."""
    if "version" not in params:
        return None
    p = params["version"]
    kind = p.WhichOneof("parameter_choice")
    if kind == "string_param":
        return str(p.string_param) or None
    if kind == "int64_param":
        return str(p.int64_param)
    raise InvalidInput("parameters.version", "expected a version number (string or int64)")
