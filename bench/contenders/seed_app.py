"""The seed design: FastAPI + uvicorn, every worker embeds its own copy of the model.

``uvicorn bench.contenders.seed_app:app --workers 2`` (``bench/compare.py`` runs it).
The predict handler is a plain ``def``, so FastAPI runs it in its thread pool and
ONNX Runtime (which releases the GIL) does not block the event loop.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from bench.contenders.common import Model

app = FastAPI()
model = Model()


class Body(BaseModel):
    instances: list[list[float]]


@app.get("/v2/health/ready")
def ready() -> dict[str, bool]:
    return {"ready": True}


@app.post("/v1/models/{name}/predict")
def predict(name: str, body: Body) -> dict[str, Any]:
    return {"model": name, "predictions": model.predict(body.instances)}

