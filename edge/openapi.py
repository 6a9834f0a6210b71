"""``GET /openapi.json``: the OpenAPI 3.0 description of both HTTP faces."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import falcon
import orjson

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


ERRORS = {400: "Bad input; the message names the field",
          401: "No API key, or not a valid one (Authorization: Bearer <key>, or X-API-Key)",
          403: "The API key lacks the route's scope, or a proxy header came from elsewhere "
               "than HAProxy",
          404: "Unknown model or version", 413: "Body, batch or tensor too large",
          429: "Rate limited (per API key and per client address, by HAProxy; Retry-After set)",
          503: "Daemon unavailable or overloaded (Retry-After set)", 504: "Deadline exceeded"}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": ERRORS[c], "content": _json(_ref("Error"))} for c in codes}


def _secured(item: dict[str, Any], scope: str | None) -> dict[str, Any]:
    """A path item's operations with what a route that needs an API key ``scope``
    answers too (401, 403, 429) and its security requirement; unchanged when open."""
    if scope is None:
        return item
    return {method: {**op, "security": [{"apiKey": []}, {"bearer": []}],
                     "description": f"API key scope: {scope}.",
                     "responses": {**op["responses"], **_errors(401, 403, 429)}}
            for method, op in item.items()}


MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
TIMEOUT = {"name": "X-Request-Timeout-Ms", "in": "header", "required": False,
           "schema": {"type": "integer", "minimum": 1},
           "description": "Lower the request deadline (never above the server default)."}
REQUEST_ID = {"name": "X-Request-Id", "in": "header", "required": False,
              "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Tensor": {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string", "enum": DATATYPES},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "parameters": {"type": "object"}, "data": {"type": "array", "items": {}}}},
    "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": _ref("Tensor")},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                    "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}}}}}},
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
}


def _get(summary: str, schema: str | None, params: list[dict[str, Any]], *codes: int) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "OK"}
    if schema:
        ok["content"] = _json(_ref(schema))
    return {"get": {"summary": summary, "parameters": params, "responses": {"200": ok, **_errors(*codes)}}}


def _admin(method: str, summary: str, params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {method: {"summary": f"{summary} (API key scope: admin)", "parameters": params or [],
                     "responses": {"200": {"description": "OK"}, **_errors(400, 404, 503)}}}


def _infer(params: list[dict[str, Any]]) -> dict[str, Any]:
    return {"post": {
        "summary": "Run inference (JSON, or the binary tensor data extension with the "
                   "Inference-Header-Content-Length header)",
        "parameters": params + [TIMEOUT, REQUEST_ID],
        "requestBody": {"required": True, "content": {
            **_json(_ref("InferRequest")),
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        "responses": {"200": {"description": "Outputs", "content": _json(_ref("InferResponse"))},
                      **_errors(400, 404, 413, 503, 504)}}}


def _predict(params: list[dict[str, Any]]) -> dict[str, Any]:
    return {"post": {
        "summary": "Classify rows: a label and class probabilities per row",
        "parameters": params + [TIMEOUT, REQUEST_ID],
        "requestBody": {"required": True, "content": _json(_ref("PredictRequest"))},
        "responses": {"200": {"description": "Predictions", "content": _json(_ref("PredictResponse"))},
                      **_errors(400, 404, 413, 503, 504)}}}


def spec(routes: Sequence[tuple[str, Any]] = ()) -> dict[str, Any]:
    """The document for ``routes`` (the app's route table: path and resource class,
    whose ``scope`` says which API key it needs). Every route must be described here,
    and nothing else is: ValueError names the difference. Without routes, every
    described path, as open routes."""
    described = _paths()
    if routes:
        missing = sorted({p for p, _ in routes} - described.keys())
        extra = sorted(described.keys() - {p for p, _ in routes})
        if missing or extra:
            raise ValueError(f"OpenAPI: routes not described: {missing}; "
                             f"described but not routed: {extra}")
        paths = {p: _secured(described[p], getattr(cls, "scope", None)) for p, cls in routes}
    else:
        paths = described
    return {"openapi": "3.0.3",
            "info": {"title": SERVER_NAME, "version": SERVER_VERSION,
                     "description": "Open Inference Protocol (KServe V2) and a simple JSON face."},
            "paths": paths,
            "components": {"schemas": SCHEMAS, "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}}}


def _paths() -> dict[str, Any]:
    return {
        "/v2/health/live": _get("Liveness", None, []),
        "/v2/health/ready": _get("Readiness (503 when the daemon is unavailable)", None, [], 503),
        "/v2": _get("Server metadata", None, []),
        "/v2/models/{model}": _get("Model metadata", "ModelMetadata", [MODEL], 404, 503),
        "/v2/models/{model}/versions/{version}": _get("Model version metadata", "ModelMetadata",
                                                      [MODEL, VERSION], 404, 503),
        "/v2/models/{model}/ready": _get("Model readiness (400 when not ready)", None, [MODEL], 400),
        "/v2/models/{model}/versions/{version}/ready": _get("Model version readiness", None,
                                                            [MODEL, VERSION], 400),
        "/v2/models/stats": _get("Inference statistics of every loaded version (Triton's "
                                 "statistics extension)", None, []),
        "/v2/models/{model}/stats": _get("A model's inference statistics", None, [MODEL], 404),
        "/v2/models/{model}/versions/{version}/stats": _get("A version's inference statistics",
                                                            None, [MODEL, VERSION], 404),
        "/v2/models/{model}/infer": _infer([MODEL]),
        "/v2/models/{model}/versions/{version}/infer": _infer([MODEL, VERSION]),
        "/v2/repository/index": _admin("post", "Every version in the repository and its state"),
        "/v2/repository/models/{model}/load": _admin("post", "Load a model's versions (body: "
                                                     "{\"parameters\": {\"version\": \"2\"}})", [MODEL]),
        "/v2/repository/models/{model}/unload": _admin("post", "Unload a model's versions "
                                                       "(or one, as for load)", [MODEL]),
        "/v1/models/{model}/traffic": {**_admin("get", "Versions and traffic split", [MODEL]),
                                       **_admin("put", "Set the split: {\"split\": "
                                                "{\"1\": 90, \"2\": 10}}", [MODEL])},
        "/v1/models/{model}/rollback": _admin("post", "Back to the previous split", [MODEL]),
        "/v1/models/{model}/predict": _predict([MODEL]),
        "/v1/models/{model}/versions/{version}/predict": _predict([MODEL, VERSION]),
    }


class OpenAPI:
    """``GET /openapi.json`` for the app's ``routes`` (see :func:`spec`)."""

    def __init__(self, routes: Sequence[tuple[str, Any]] = ()) -> None:
        self._body = orjson.dumps(spec(routes))

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._body
