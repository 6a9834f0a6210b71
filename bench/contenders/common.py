"""The model as every contender embeds it: one ONNX Runtime session, rows in,
label + probabilities out.

``threads = 0`` keeps ONNX Runtime's default thread settings (as the daemon's
``intra_op_threads = 0``: a pool as wide as the cores); ``threads = 1`` is one
intra-op and one inter-op thread (the async seed: one core per worker, no pool).

Configured by the environment ``bench/compare.py`` sets: ``BENCH_MODEL_NAME`` and
``BENCH_MODEL_PATH`` (a ``model.onnx``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnxruntime as ort

MODEL_NAME = os.environ.get("BENCH_MODEL_NAME", "digits")
MODEL_PATH = os.environ.get("BENCH_MODEL_PATH", "")


class Model:
    def __init__(self, path: str = "", threads: int = 0) -> None:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = threads
        self.session = ort.InferenceSession(path or MODEL_PATH, options,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input: x})

    def predict(self, rows: list[list[float]]) -> list[dict[str, Any]]:
        outs = dict(zip(self.outputs, self.run(np.asarray(rows, dtype=np.float32)), strict=True))
        labels, probs = outs["label"], outs["probabilities"]
        return [{"label": str(int(lab)), "probabilities": p.tolist()}
                for lab, p in zip(labels, probs, strict=True)]
