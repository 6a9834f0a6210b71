"""The seed design: FastAPI + uvicorn, every worker embeds its own copy of the model.

Two variants, each an app factory (``uvicorn --factory``, so a worker loads only its
own model; ``bench/compare.py`` runs them with ``--workers 2``):

- ``async_seed`` (contender ``seed``), the design as its document describes it: an
  ``async def`` handler that runs ONNX Runtime inline on the event loop, with one
  intra-op and one inter-op thread per worker. FastAPI parses and validates the
  pydantic body and the response on the loop too for an ``async def`` endpoint
  (``fastapi.routing``: ``run_in_threadpool`` only for plain ``def`` endpoints and
  dependencies), so a request makes no thread hop.
- ``sync_seed`` (contender ``seed-sync``), the seed as the bench ran it before issue 13:
  a plain ``def`` handler, which FastAPI runs in its thread pool (one hop per request),
  and ONNX Runtime's default threads (a pool as wide as the cores, per worker).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from bench.contenders.common import Model

PREDICT = "/v1/models/{name}/predict"


class Body(BaseModel):
    instances: list[list[float]]


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    return app


def async_seed() -> FastAPI:
    app, model = _app(), Model(threads=1)

    @app.post(PREDICT)
    async def predict(name: str, body: Body) -> dict[str, Any]:
        return {"model": name, "predictions": model.predict(body.instances)}

    return app


def sync_seed() -> FastAPI:
    app, model = _app(), Model()

    @app.post(PREDICT)
    def predict(name: str, body: Body) -> dict[str, Any]:
        return {"model": name, "predictions": model.predict(body.instances)}

    return app
