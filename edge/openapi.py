"""``GET /openapi.json``: the OpenAPI 3.0 description of both HTTP faces.

``OpenAPI(routes)`` in ``edge.app.create_app``, with the app's route tables: :func:`spec`
refuses (at start) a route it does not describe, a description without a route, and a
route whose methods differ from its resource's responders. Every operation lists every
status it can answer: its own (the edge's, mapped by ``edge/http_errors.py``), those of a
route that needs an API key (401, 403, 429) and those of HAProxy in front (:data:`FRONT`).
tests/unit/test_openapi.py checks the document against Falcon's router;
tests/integration/test_openapi_fuzz.py runs schemathesis against a real stack."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import falcon
import orjson
from falcon.routing import map_http_methods

from edge.core import SERVER_NAME, SERVER_VERSION

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES"]
SCALAR = {"oneOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}]}
# A row's value for one input: its row (nested lists as the input's shape after the
# batch dimension), or a bare scalar where that shape is [1].
INPUT_ROW = {"oneOf": [SCALAR, {"type": "array", "items": {}}]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


# What each status means, wherever it comes from: the edge (edge/http_errors.py's table)
# or HAProxy in front of it (ops/haproxy/haproxy.cfg answers 408, 413, 429, 502, 503 and 504
# itself, in the same {"error": ...} shape).
ERRORS = {400: "Bad input; the message names the field (a malformed X-Request-Timeout-Ms "
               "header included)",
          401: "No API key, or not a valid one (Authorization: Bearer <key>, or X-API-Key)",
          403: "The API key lacks the route's scope or the model, or a proxy header "
               "(X-Falcon-Request-Key, X-Request-Start, X-Forwarded-For) came from elsewhere "
               "than HAProxy",
          404: "Unknown model or version", 408: "The request did not arrive in time (HAProxy)",
          413: "Body, batch or tensor too large (the edge; HAProxy for any body over its limit)",
          429: "Rate limited (per client address, and per API key, by HAProxy; Retry-After set)",
          502: "The edge failed (HAProxy; Retry-After set)",
          503: "Daemon unavailable or overloaded, or no edge available (Retry-After set)",
          504: "Deadline exceeded (the edge's, or HAProxy's server timeout)"}
# What every operation can answer whatever it is: the proxy-header check (403, edge/proxyauth.py)
# and HAProxy's own refusals.
FRONT = (403, 408, 413, 429, 502, 503, 504)
# What a route that calls the daemon adds: the X-Request-Timeout-Ms header (400), the
# daemon down or full (503), its deadline (504).
DAEMON = (400, 503, 504)
# What a route that needs an API key adds.
SECURED = (401, 403, 429)


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": ERRORS[c], "content": _json(_ref("Error"))}
            for c in sorted(set(codes))}


def _complete(item: dict[str, Any], scope: str | None) -> dict[str, Any]:
    """A path item's operations with what every operation answers (:data:`FRONT`) and,
    for a route that needs an API key ``scope``, its security requirement and statuses."""
    codes = FRONT + (SECURED if scope is not None else ())
    out = {}
    for method, op in item.items():
        op = {**op, "responses": {**_errors(*codes), **op["responses"]}}
        if scope is not None:
            op["security"] = [{"apiKey": []}, {"bearer": []}]
            op["description"] = f"API key scope: {scope}."
        out[method] = op
    return out


MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
TIMEOUT = {"name": "X-Request-Timeout-Ms", "in": "header", "required": False,
           "schema": {"type": "integer", "minimum": 1},
           "description": "Lower the request deadline (never above the server default)."}
HEADER_LENGTH = {"name": "Inference-Header-Content-Length", "in": "header", "required": False,
                 "schema": {"type": "integer", "minimum": 0},
                 "description": "The binary tensor data extension: the body's first this many "
                                "bytes are the JSON header, the tensors' raw bytes follow"}
REQUEST_ID = {"name": "X-Request-Id", "in": "header", "required": False,
              "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Tensor": {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string", "minLength": 1}, "datatype": {"type": "string", "enum": DATATYPES},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "parameters": {"type": "object"}, "data": {"type": "array", "items": {}}}},
    "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "minItems": 1, "items": _ref("Tensor")},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                    "properties": {"name": {"type": "string"}, "parameters": {
                        "type": "object", "properties": {
                            "binary_data": {"type": "boolean"},
                            "classification": {
                                "type": "integer", "minimum": 1,
                                "description": "Triton's classification extension: return "
                                "this output as its top K classes, a BYTES tensor [rows, K] "
                                "([K] without a batch dimension; K clamped to the classes) of "
                                "\"value:index\" strings, \"value:index:label\" where the "
                                "output has class_labels, highest value first"}}}}}}}},
    "InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"},
        "id": {"type": "string"}, "outputs": {"type": "array", "items": _ref("Tensor")}}},
    "ClassLabels": {"type": "object", "properties": {"class_labels": {
        "type": "array", "items": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
        "description": "A ZipMap output's class labels: the columns of its FP32 [N, C] "
                       "tensor, in order"}}},
    "TensorMetadata": {"type": "object", "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string", "enum": DATATYPES},
        "shape": {"type": "array", "items": {"type": "integer"},
                  "description": "-1 marks a dynamic dimension"},
        "parameters": _ref("ClassLabels")}},
    "ModelMetadata": {"type": "object", "properties": {
        "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"},
        "inputs": {"type": "array", "items": _ref("TensorMetadata")},
        "outputs": {"type": "array", "items": _ref("TensorMetadata")},
        "parameters": {"allOf": [_ref("ClassLabels")], "properties": {
            "probabilities_output": {"type": "string"}}}}},
    "ConfigTensor": {"type": "object", "required": ["name", "data_type", "dims"], "properties": {
        "name": {"type": "string"},
        "data_type": {"type": "string", "enum": [f"TYPE_{t}" for t in DATATYPES
                                                 if t != "BYTES"] + ["TYPE_STRING"]},
        "dims": {"type": "array", "items": {"type": "integer"},
                 "description": "-1 marks a dynamic dimension; without the batch dimension "
                                "when max_batch_size > 0"},
        "reshape": {"type": "object", "properties": {"shape": {
            "type": "array", "items": {"type": "integer"}}}}}},
    "ModelConfig": {"type": "object", "required": ["name", "platform", "max_batch_size",
                                                   "input", "output"], "properties": {
        "name": {"type": "string"}, "platform": {"type": "string"},
        "backend": {"type": "string"},
        "version_policy": {"type": "object", "properties": {"specific": {
            "type": "object", "properties": {"versions": {
                "type": "array", "items": {"type": "integer"}}}}}},
        "max_batch_size": {"type": "integer", "minimum": 0,
                           "description": "0: the version does not batch"},
        "input": {"type": "array", "items": _ref("ConfigTensor")},
        "output": {"type": "array", "items": _ref("ConfigTensor")},
        "dynamic_batching": {"type": "object", "properties": {
            "max_queue_delay_microseconds": {"type": "integer", "minimum": 0}}},
        "instance_group": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "kind": {"type": "string"},
            "count": {"type": "integer", "minimum": 1}}}},
        "default_model_filename": {"type": "string"},
        "response_cache": {"type": "object", "properties": {"enable": {"type": "boolean"}}},
        "parameters": {"type": "object", "additionalProperties": {
            "type": "object", "properties": {"string_value": {"type": "string"}}},
            "description": "class_labels (a JSON list), probabilities_output, label_output, "
                           "description, version (the version that answered)"}},
        "description": "Triton's ModelConfig (model_config.proto) as JSON"},
    "PredictRequest": {"type": "object", "required": ["instances"], "additionalProperties": False,
                       "properties": {"instances": {"type": "array", "minItems": 1, "items": {
                           "oneOf": [
                               {"type": "array", "items": {},
                                "description": "A row of a one-input model: the input's row "
                                               "(numbers, strings or booleans, nested as its "
                                               "shape after the batch dimension)"},
                               {"type": "object", "additionalProperties": INPUT_ROW,
                                "description": "A row keyed by input name (any model; needed "
                                               "for several inputs), e.g. {\"color\": \"red\", "
                                               "\"x1\": 0.3}; an input of row shape [1] takes "
                                               "a bare value"},
                               SCALAR]}}}},
    "PredictResponse": {"type": "object", "properties": {
        "model": {"type": "string"}, "version": {"type": "string"},
        "request_id": {"type": "string"}, "cached": {"type": "boolean"},
        "predictions": {"type": "array", "items": {"type": "object", "properties": {
            "label": {"oneOf": [{"type": "integer"}, {"type": "string"}],
                      "description": "As the model gives it"},
            "probabilities": {"type": "object", "additionalProperties": {"type": "number"},
                              "description": "Keyed by class label"}}}}}},
    "ModelReady": {"type": "object", "required": ["name", "ready"], "properties": {
        "name": {"type": "string"}, "ready": {"type": "boolean"}}},
    "ModelList": {"type": "object", "required": ["models"], "properties": {"models": {
        "type": "array", "items": {"type": "string"},
        "description": "Model names, sorted: in the repository or loaded, and allowed to "
                       "the API key"}}},
    "Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
    "Alive": {"type": "object", "required": ["status"], "properties": {
        "status": {"type": "string", "enum": ["alive"]}}},
    "Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
    "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"],
                       "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                      "extensions": {"type": "array",
                                                     "items": {"type": "string"}}}},
    "Statistics": {"type": "object", "required": ["model_stats"], "properties": {
        "model_stats": {"type": "array", "items": {"type": "object", "required": ["name", "version"],
                        "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                       "inference_count": {"type": "integer"},
                                       "execution_count": {"type": "integer"},
                                       "inference_stats": {"type": "object"}}}}}},
    "RepositoryIndex": {"type": "array", "items": {
        "type": "object", "required": ["name", "version", "state"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "state": {"type": "string", "enum": ["READY", "UNAVAILABLE"]},
            "reason": {"type": "string"}}}},
    "Loaded": {"type": "object", "required": ["model", "loaded"], "properties": {
        "model": {"type": "string"}, "loaded": {"type": "array", "items": {"type": "string"}}}},
    "Unloaded": {"type": "object", "required": ["model", "unloaded"], "properties": {
        "model": {"type": "string"}, "unloaded": {"type": "array", "items": {"type": "string"}}}},
    "Traffic": {"type": "object", "required": ["model", "versions", "split", "default_version"],
                "properties": {"model": {"type": "string"},
                               "versions": {"type": "array", "items": {"type": "string"}},
                               "split": _ref("Split"), "default_version": {"type": "string"}}},
    "SplitChange": {"type": "object", "required": ["model", "old", "new"], "properties": {
        "model": {"type": "string"}, "old": _ref("Split"), "new": _ref("Split")}},
    "Split": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0},
              "description": "Version -> weight (empty: none; the default version answers)"},
    "RepositoryRequest": {"type": "object", "properties": {"parameters": {
        "type": "object", "properties": {"version": {"oneOf": [
            {"type": "string"}, {"type": "integer"}]}}}},
        "description": "No body, or no parameters.version: every version of the model"},
    "SplitRequest": {"type": "object", "required": ["split"], "properties": {"split": {
        "type": "object", "additionalProperties": {"type": "integer", "minimum": 0},
        "description": "Version -> weight, e.g. {\"1\": 90, \"2\": 10}"}}},
}


def _op(summary: str, params: list[dict[str, Any]], codes: tuple[int, ...], ok: Any = None,
        body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One operation: 200 with ``ok`` (a schema name, a content map, or None) and the
    statuses ``codes``; ``body``: its request body."""
    answer: dict[str, Any] = {"description": "OK"}
    if isinstance(ok, str):
        answer["content"] = _json(_ref(ok))
    elif ok is not None:
        answer["content"] = ok
    op: dict[str, Any] = {"summary": summary, "parameters": params,
                          "responses": {"200": answer, **_errors(*codes)}}
    if body is not None:
        op["requestBody"] = body
    return op


def _daemon(summary: str, params: list[dict[str, Any]], *codes: int, ok: Any = None,
            body: dict[str, Any] | None = None) -> dict[str, Any]:
    """An operation that calls the daemon (:data:`DAEMON`, and its deadline header)."""
    return _op(summary, params + [TIMEOUT], DAEMON + codes, ok, body)


def _ready(params: list[dict[str, Any]]) -> dict[str, Any]:
    op = _daemon("Model readiness: 200 when loaded, 400 {\"ready\": false} when in the "
                 "repository but not loaded, 404 when not in the repository",
                 params, 404, ok="ModelReady")
    op["responses"]["400"] = {"description": "Not ready (or a malformed X-Request-Timeout-Ms)",
                              "content": _json({"anyOf": [_ref("ModelReady"), _ref("Error")]})}
    return op


def _v1_ready() -> dict[str, Any]:
    op = _daemon("KServe V1 model readiness: 200 {\"ready\": true} when loaded, 503 when in "
                 "the repository but not loaded, 404 when not in the repository",
                 [MODEL], 404, ok="ModelReady")
    op["responses"]["503"] = {"description": "In the repository but not loaded; or " +
                              ERRORS[503][0].lower() + ERRORS[503][1:],
                              "content": _json(_ref("Error"))}
    return op


def _body(schema: str, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": _json(_ref(schema))}


def _infer(params: list[dict[str, Any]]) -> dict[str, Any]:
    return _daemon("Run inference (JSON, or the binary tensor data extension with the "
                   "Inference-Header-Content-Length header)",
                   params + [REQUEST_ID, HEADER_LENGTH], 404, 413, ok="InferResponse",
                   body={"required": True, "content": {
                       **_json(_ref("InferRequest")),
                       "application/octet-stream": {"schema": {"type": "string",
                                                               "format": "binary"}}}})


def _predict(params: list[dict[str, Any]]) -> dict[str, Any]:
    return _daemon("Classify rows: a label and class probabilities per row",
                   params + [REQUEST_ID], 404, 413, ok="PredictResponse",
                   body=_body("PredictRequest"))


def _load(what: str, answer: str) -> dict[str, Any]:
    return _daemon(f"{what} a model's versions (all, or the body's parameters.version)",
                   [MODEL], 404, 413, ok=answer, body=_body("RepositoryRequest", required=False))


def spec(routes: Sequence[tuple[str, Any]] = ()) -> dict[str, Any]:
    """The document for ``routes`` (the app's route table: path and resource class,
    whose ``scope`` says which API key it needs and whose ``on_<method>`` responders
    say its methods). Every route must be described here with exactly its methods,
    and nothing else is: ValueError names the difference. Without routes, every
    described path, as open routes."""
    described = _paths()
    if routes:
        missing = sorted({p for p, _ in routes} - described.keys())
        extra = sorted(described.keys() - {p for p, _ in routes})
        if missing or extra:
            raise ValueError(f"OpenAPI: routes not described: {missing}; "
                             f"described but not routed: {extra}")
        for path, cls in routes:
            methods = {m.lower() for m in map_http_methods(cls)}
            if methods != described[path].keys():
                raise ValueError(f"OpenAPI: {path} answers {sorted(methods)}, "
                                 f"described: {sorted(described[path])}")
        paths = {p: _complete(described[p], getattr(cls, "scope", None)) for p, cls in routes}
    else:
        paths = {p: _complete(item, None) for p, item in described.items()}
    return {"openapi": "3.0.3",
            "info": {"title": SERVER_NAME, "version": SERVER_VERSION,
                     "description": "Open Inference Protocol (KServe V2), KServe's V1 "
                                    "protocol and a simple JSON face."},
            "paths": paths,
            "components": {"schemas": SCHEMAS, "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}}}


def _paths() -> dict[str, Any]:
    mv = [MODEL, VERSION]
    return {
        "/v2/health/live": {"get": _op("Liveness", [], (), ok="Live")},
        "/v2/health/ready": {"get": _op("Readiness: 503 when the daemon is unavailable or "
                                        "serves no model, or this edge is stopping", [], (503,),
                                        ok="Ready")},
        "/v2": {"get": _op("Server metadata", [], (), ok="ServerMetadata")},
        "/v2/models/{model}": {"get": _daemon("Model metadata", [MODEL], 404, ok="ModelMetadata")},
        "/v2/models/{model}/versions/{version}": {
            "get": _daemon("Model version metadata", mv, 404, ok="ModelMetadata")},
        "/v2/models/{model}/ready": {"get": _ready([MODEL])},
        "/v2/models/{model}/versions/{version}/ready": {"get": _ready(mv)},
        "/v2/models/stats": {"get": _daemon("Inference statistics of every loaded version "
                                            "(Triton's statistics extension; 404: none)", [], 404,
                                            ok="Statistics")},
        "/v2/models/{model}/stats": {"get": _daemon("A model's inference statistics",
                                                    [MODEL], 404, ok="Statistics")},
        "/v2/models/{model}/versions/{version}/stats": {
            "get": _daemon("A version's inference statistics", mv, 404, ok="Statistics")},
        "/v2/models/{model}/config": {"get": _daemon(
            "Model configuration (Triton's model configuration extension) of the version "
            "metadata answers for", [MODEL], 404, ok="ModelConfig")},
        "/v2/models/{model}/versions/{version}/config": {
            "get": _daemon("Model version configuration", mv, 404, ok="ModelConfig")},
        "/v2/models/{model}/infer": {"post": _infer([MODEL])},
        "/v2/models/{model}/versions/{version}/infer": {"post": _infer(mv)},
        "/v2/repository/index": {"post": _daemon("Every version in the repository and its state",
                                                 [], ok="RepositoryIndex")},
        "/v2/repository/models/{model}/load": {"post": _load("Load", "Loaded")},
        "/v2/repository/models/{model}/unload": {"post": _load("Unload", "Unloaded")},
        "/v1/models/{model}/traffic": {
            "get": _daemon("Versions and traffic split", [MODEL], 404, ok="Traffic"),
            "put": _daemon("Set the split", [MODEL], 404, 413, ok="SplitChange",
                           body=_body("SplitRequest"))},
        "/v1/models/{model}/rollback": {"post": _daemon("Back to the previous split", [MODEL], 404,
                                                        ok="SplitChange")},
        "/v1/models/{model}/predict": {"post": _predict([MODEL])},
        # KServe's V1 protocol (edge/kservev1.py); :predict is the route above
        "/": {"get": _op("KServe's liveness (its V1 client's is_server_live)", [], (),
                         ok="Alive")},
        "/v1/models": {"get": _daemon("KServe V1: the models this API key may use",
                                      [], ok="ModelList")},
        "/v1/models/{model}": {"get": _v1_ready()},
        "/v1/models/{model}:predict": {"post": _predict([MODEL])},
        "/v1/models/{model}/versions/{version}/predict": {"post": _predict(mv)},
        "/openapi.json": {"get": _op("This document", [], (), ok=_json({"type": "object"}))},
        "/metrics": {"get": _metrics()},
    }


def _metrics() -> dict[str, Any]:
    op = _op("Prometheus metrics (on the edge itself: HAProxy answers 404)", [], (),
             ok={"text/plain": {"schema": {"type": "string"}}})
    op["responses"]["404"] = {"description": "Through HAProxy: Prometheus scrapes the edge",
                              "content": _json(_ref("Error"))}
    return op


class OpenAPI:
    """``GET /openapi.json`` for the app's ``routes`` (see :func:`spec`)."""

    def __init__(self, routes: Sequence[tuple[str, Any]] = ()) -> None:
        self._body = orjson.dumps(spec(routes))

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._body
