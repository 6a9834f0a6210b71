"""The V2 statistics extension: ``GET /v2/models[/{model}[/versions/{version}]]/stats``.

Triton's shape and field names (``model_stats[].inference_count``, ``execution_count``,
``inference_stats.{success, fail, queue, compute_infer}.{count, ns}``), so tools and
clients written for Triton read it (``tritonclient``'s ``get_inference_statistics``).
The counters are the daemon's (:mod:`daemon.stats` says what each counts); an unknown
or unloaded model is 404.
"""

from __future__ import annotations

import falcon

from apikeys import PREDICT
from edge.auth import may_use
from edge.resources import Resource, send_json


class ModelStats(Resource):
    scope = PREDICT

    def on_get(self, req: falcon.Request, resp: falcon.Response, model: str | None = None,
               version: str | None = None) -> None:
        doc = self.core.stats(model, version, self.deadline(req)).to_wire()
        doc["model_stats"] = [s for s in doc.get("model_stats", [])
                              if may_use(req, str(s.get("name")))]
        send_json(resp, doc)


ROUTES: list[tuple[str, type[Resource]]] = [
    ("/v2/models/stats", ModelStats),
    ("/v2/models/{model}/stats", ModelStats),
    ("/v2/models/{model}/versions/{version}/stats", ModelStats),
]
