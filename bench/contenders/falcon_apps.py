"""Falcon apps for gunicorn (gthread), as ``bench/compare.py`` runs them.

- ``floor``: the HTTP floor, parses the JSON body and answers a constant.
- ``dirty``: calls gunicorn 27's dirty arbiter (``gunicorn.dirty``), whose worker
  process holds the model (:class:`OnnxApp`, declared with ``--dirty-app``).
"""

from __future__ import annotations

import json
from typing import Any

import falcon
from gunicorn.dirty import DirtyApp, get_dirty_client

DIRTY_APP = "bench.contenders.falcon_apps:OnnxApp"
CONSTANT = json.dumps({"model": "floor", "predictions": [{"label": "0", "probabilities": [1.0]}]})


class OnnxApp(DirtyApp):
    """Loaded once per dirty worker; ``predict`` runs there."""

    def init(self) -> None:
        from bench.contenders.common import Model

        self.model = Model()

    def predict(self, rows: list[list[float]]) -> list[dict[str, Any]]:
        return self.model.predict(rows)


def read_instances(req: falcon.Request) -> list[list[float]]:
    doc = json.loads(req.bounded_stream.read())
    if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
        raise falcon.HTTPBadRequest(description="expected {'instances': [...]}")
    return doc["instances"]


class Ready:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.text = '{"ready": true}'


class Floor:
    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        read_instances(req)
        resp.text = CONSTANT


class Dirty:
    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        rows = read_instances(req)
        preds = get_dirty_client(timeout=10.0).execute(DIRTY_APP, "predict", rows)
        resp.text = json.dumps({"model": name, "predictions": preds})


def make(handler: object) -> falcon.App:
    app = falcon.App()
    app.add_route("/v2/health/ready", Ready())
    app.add_route("/v1/models/{name}/predict", handler)
    return app


floor = make(Floor())
dirty = make(Dirty())
