"""The model-management HTTP API (scope ``admin``): the Open Inference
Protocol's repository extension plus traffic splits and rollback.

    POST /v2/repository/index                        every version in the repository, with state
    POST /v2/repository/models/{model}/load          body optional: {"parameters": {"version": "2"}}
    POST /v2/repository/models/{model}/unload        same
    GET  /v1/models/{model}/traffic                  versions, split, default version
    PUT  /v1/models/{model}/traffic                  {"split": {"1": 90, "2": 10}}
    POST /v1/models/{model}/rollback                 the previous split, at once

Loads, unloads, split changes and rollbacks are recorded in the audit trail
(who, when, what) as records with ``face = "admin"``, twice: the intent *before*
the change is applied (``{"phase": "intent", "requested": ...}``; if the WAL
refuses it, the change is not made: 503) and the outcome after (``{"phase":
"done", "old", "new"}`` for a split or rollback, ``"loaded"``/``"unloaded"`` for
a load or unload; ``{"phase": "failed", "error"}``; or ``{"phase": "unknown"}``
when the daemon connection broke after the change was sent: it may have been
applied). An outcome the WAL refuses
is logged, and the change still answered: it was made, and a client that retried
a rollback would go back two steps.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import falcon

from apikeys import ADMIN
from edge.errors import EdgeError, InvalidInput, Unavailable
from edge.resources import Resource, context, parse_json, read_body, send_json
from wire import ops

log = logging.getLogger(__name__)

# the ops that change what the daemon serves: each is audited (intent, then outcome)
Change = ops.Load | ops.Unload | ops.Split | ops.Rollback


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
        index = self.core.manage(ops.Index(), self.deadline(req))
        send_json(resp, [e.to_wire() for e in index.models])


class RepositoryLoad(Resource):
    scope = ADMIN
    op: type[ops.Load | ops.Unload] = ops.Load

    def on_post(self, req: falcon.Request, resp: falcon.Response, model: str) -> None:
        version = _version_param(req, self.max_body)
        # loading parses and publishes a model: allow it more than a prediction's deadline
        send_json(resp, audited(self, req, resp, self.op(model=model, version=version),
                                self.core.clock() + 120.0))


class RepositoryUnload(RepositoryLoad):
    op = ops.Unload


class Traffic(Resource):
    scope = ADMIN

    def on_get(self, req: falcon.Request, resp: falcon.Response, model: str) -> None:
        entry = {m.name: m for m in self.core.models(self.deadline(req))}.get(model)
        if entry is None:
            raise falcon.HTTPNotFound(description=f"model {model!r} is not loaded")
        send_json(resp, {"model": model, "versions": entry.versions, "split": entry.split,
                         "default_version": entry.default_version})

    def on_put(self, req: falcon.Request, resp: falcon.Response, model: str) -> None:
        doc = parse_json(read_body(req, self.max_body))
        if not isinstance(doc, dict) or "split" not in doc:
            raise InvalidInput("split", "missing; expected {\"split\": {\"1\": 90, \"2\": 10}}")
        send_json(resp, audited(self, req, resp, ops.Split(model=model, split=doc["split"]),
                                self.deadline(req)))


class Rollback(Resource):
    scope = ADMIN

    def on_post(self, req: falcon.Request, resp: falcon.Response, model: str) -> None:
        send_json(resp, audited(self, req, resp, ops.Rollback(model=model), self.deadline(req)))


def audited(resource: Resource, req: falcon.Request, resp: falcon.Response, change: Change,
            deadline: float) -> dict[str, Any]:
    """``change`` applied by the daemon, its intent in the audit trail before (who: the
    API key id; what was asked) and its outcome after (old -> new, or the error); the
    answer's wire form. Raises ``Unavailable`` (nothing applied) if the WAL refuses
    the intent."""
    auditor = resource.core.auditor
    if auditor is None:
        return resource.core.manage(change, deadline).to_wire()
    ctx = context(req, resp, "admin", resource.host_id)
    op, model = change.OP, change.model
    # the two records need their own keys: (request id, time, request key) is the row's
    intent = dataclasses.replace(ctx, request_key=f"{ctx.request_key}.intent")
    requested = {k: v for k, v in change.to_wire().items() if k != "model"}
    auditor.event(intent, op, model, {"phase": "intent", "requested": requested})
    try:
        result = resource.core.manage(change, deadline).to_wire()
    except Unavailable as exc:  # the daemon may or may not have applied it
        _outcome(auditor, ctx, op, model, {"phase": "unknown", "error": str(exc)})
        raise
    except EdgeError as exc:
        _outcome(auditor, ctx, op, model, {"phase": "failed", "error": str(exc)})
        raise
    done = {k: v for k, v in result.items() if k != "model"}  # old/new, loaded, unloaded
    _outcome(auditor, ctx, op, model, {"phase": "done", **done})
    return result


def _outcome(auditor: Any, ctx: Any, op: str, model: str, detail: dict[str, Any]) -> None:
    try:
        auditor.event(ctx, op, model, detail)
    except EdgeError as exc:  # applied (or not) all the same: say so, do not invite a retry
        log.critical("%s of %s: outcome %s not in the audit trail (its intent is): %s",
                     op, model, detail, exc)


ROUTES: list[tuple[str, type[Resource]]] = [
    ("/v2/repository/index", RepositoryIndex),
    ("/v2/repository/models/{model}/load", RepositoryLoad),
    ("/v2/repository/models/{model}/unload", RepositoryUnload),
    ("/v1/models/{model}/traffic", Traffic),
    ("/v1/models/{model}/rollback", Rollback),
]
