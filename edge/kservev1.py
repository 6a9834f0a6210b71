"""KServe's V1 protocol (its "V1 data plane", TensorFlow Serving's REST shape) over the core.

    GET  /                           {"status": "alive"}: KServe's server liveness (what its V1
                                     client's ``is_server_live`` reads), open like /v2/health/live
    GET  /v1/models                  {"models": ["digits", ...]}: the models this API key may use
    GET  /v1/models/{model}          200 {"name": ..., "ready": true}; 503 when the repository
                                     has the model but it is not loaded; 404 when it has not
    POST /v1/models/{model}:predict  {"instances": [...]}: the simple JSON face's predict

``:predict`` is :class:`edge.resources.Predict` itself on a second path, so it is that
route in every respect: validation and the errors naming the field, auth (scope
``predict``, the key's model allow list), cache, the audit record (face ``v1``), metrics,
HAProxy's rate limits and its retries (``ops/haproxy/haproxy.cfg`` retries a path ending
in ``:predict`` as it does one ending in ``/predict``). KServe's V1 has no versioned paths
and no ``:predict`` beside a version, so neither is here (``/v1/models/{model}/versions/
{version}/predict`` is the simple face's). ``:explain`` is KServe's too, for explainers;
there is none here, so it is not routed either.

The statuses are those of KServe's own V1 server: a known model that is not ready is 503
(:class:`~edge.errors.ModelNotReady`; ours also says ``Retry-After``), an unknown one 404. A model name cannot hold a colon
(``daemon/repository.py``'s ``NAME_RE``), so ``{model}:predict`` never reads as a model
named ``x:predict``: ``/v1/models/x:predict`` is always the predict of ``x``.
"""

from __future__ import annotations

import falcon

from apikeys import PREDICT
from edge.auth import may_use
from edge.errors import ModelNotReady
from edge.resources import Predict, Resource, send_json


class ServerLive(Resource):
    scope = None
    traced = False  # a health check: no span (edge.tracing)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_json(resp, {"status": "alive"})


class ModelList(Resource):
    """The models in the repository or loaded, sorted; with auth on, only those the
    caller's key may use (its allow list)."""

    scope = PREDICT

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        names = self.core.model_names(self.deadline(req))
        send_json(resp, {"models": [n for n in names if may_use(req, n)]})


class ModelStatus(Resource):
    """KServe's model ready: 200 ``{"name", "ready": true}`` when loaded, else
    ModelNotReady (503) or ModelNotFound (404)."""

    scope = PREDICT

    def on_get(self, req: falcon.Request, resp: falcon.Response, model: str) -> None:
        if not self.core.model_state(model, None, self.deadline(req)):
            raise ModelNotReady(f"model {model!r} is not ready: it is in the repository "
                                f"but not loaded")
        send_json(resp, {"name": model, "ready": True})


ROUTES: list[tuple[str, type[Resource]]] = [
    ("/", ServerLive),
    ("/v1/models", ModelList),
    ("/v1/models/{model}", ModelStatus),
    ("/v1/models/{model}:predict", Predict),
]
