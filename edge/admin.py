"""The model-management HTTP API (scope ``admin``): the Open Inference
Protocol's repository extension plus traffic splits and rollback.

    POST /v2/repository/index                        every version in the repository, with state
    POST /v2/repository/models/{model}/load          body optional: {"parameters": {"version": "2"}}
    POST /v2/repository/models/{model}/unload        same
    GET  /v1/models/{model}/traffic                  versions, split, default version
    PUT  /v1/models/{model}/traffic                  {"split": {"1": 90, "2": 10}}
    POST /v1/models/{model}/rollback                 the previous split, at once

Split changes and rollbacks are recorded in the audit trail (who, when,
old -> new) as records with ``face = "admin"``.
"""

from __future__ import annotations

from typing import Any

import falcon

from edge.auth import ADMIN
from edge.errors import InvalidInput
from edge.resources import Resource, context, parse_json, read_body, send_json


def _version_param(req: falcon.Request, max_body: int) -> str | None:
    body = read_body(req, max_body)
    if not body.strip():
        return None
    doc = parse_json(body)
    params = doc.get("parameters", {}) if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        raise InvalidInput("parameters", "expected an object")
    version = params.get("version")
    if version is not None and not isinstance(version, str | int):
        raise InvalidInput("parameters.version", "expected a version number")
    return None if version is None else str(version)


class RepositoryIndex(Resource):
    scope = ADMIN

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_json(resp, self.core.manage("index", {}, self.deadline(req))["models"])


class RepositoryLoad(Resource):
    scope = ADMIN
    op = "load"

    def on_post(self, req: falcon.Request, resp: falcon.Response, model: str) -> None:
        version = _version_param(req, self.max_body)
        # loading parses and publishes a model: allow it more than a prediction's deadline
        result = self.core.manage(self.op, {"model": model, "version": version},
                                  self.core.clock() + 120.0)
        send_json(resp, result)


class RepositoryUnload(RepositoryLoad):
    op = "unload"


class Traffic(Resource):
    scope = ADMIN

    def on_get(self, req: falcon.Request, resp: falcon.Response, model: str) -> None:
        entry = {m["name"]: m for m in self.core.models(self.deadline(req))}.get(model)
        if entry is None:
            raise falcon.HTTPNotFound(description=f"model {model!r} is not loaded")
        send_json(resp, {"model": model, "versions": entry["versions"],
                         "split": entry.get("split") or {},
                         "default_version": entry["default_version"]})

    def on_put(self, req: falcon.Request, resp: falcon.Response, model: str) -> None:
        doc = parse_json(read_body(req, self.max_body))
        if not isinstance(doc, dict) or "split" not in doc:
            raise InvalidInput("split", "missing; expected {\"split\": {\"1\": 90, \"2\": 10}}")
        result = self.core.manage("split", {"model": model, "split": doc["split"]},
                                  self.deadline(req))
        record(self, req, resp, "split", result)
        send_json(resp, result)


class Rollback(Resource):
    scope = ADMIN

    def on_post(self, req: falcon.Request, resp: falcon.Response, model: str) -> None:
        result = self.core.manage("rollback", {"model": model}, self.deadline(req))
        record(self, req, resp, "rollback", result)
        send_json(resp, result)


def record(resource: Resource, req: falcon.Request, resp: falcon.Response, event: str,
           result: dict[str, Any]) -> None:
    """The change in the audit trail: who (API key id), when, old -> new."""
    if resource.core.auditor is not None:
        ctx = context(req, resp, "admin", resource.host_id)
        resource.core.auditor.event(ctx, event, result["model"],
                                    {"old": result["old"], "new": result["new"]})


ROUTES: list[tuple[str, type[Resource]]] = [
    ("/v2/repository/index", RepositoryIndex),
    ("/v2/repository/models/{model}/load", RepositoryLoad),
    ("/v2/repository/models/{model}/unload", RepositoryUnload),
    ("/v1/models/{model}/traffic", Traffic),
    ("/v1/models/{model}/rollback", Rollback),
]
