"""Build the second demo model ``models/iris`` from scikit-learn's bundled iris data.

Usage::

    python models/build_iris.py           # (re)write the committed artefacts
    python models/build_iris.py --check   # rebuild in a temp dir; exit 1 if bytes differ

It is a model as skl2onnx writes it by default, unlike ``digits``: class *names* and a
ZipMap. What it writes (all committed):

- ``models/iris/1/model.onnx``: StandardScaler + LogisticRegression trained on the class
  names (``setosa``, ``versicolor``, ``virginica``), converted with skl2onnx's default
  options. Input ``input`` float32 [N, 4] (sepal length, sepal width, petal length,
  petal width, cm); outputs ``output_label`` tensor(string) [N] and
  ``output_probability`` seq(map(string, tensor(float))) (ZipMap), which the platform
  serves as float32 [N, 3] with the class labels in the model metadata.
- ``models/iris/config.toml``: per-model configuration plus the held-out evaluation.
- ``models/iris/example.json``: rows for the ``make up`` banner's curl line, with the
  labels the model gives them.
- ``tests/data/iris_test.npz``: the held-out split (``X`` float32 [30, 4], ``y`` str).

Determinism as for ``build_digits.py``: deterministic training, skl2onnx's random graph
name and the producer fields overwritten, fixed zip timestamps.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from build_digits import TARGET_OPSET, cli, npz_bytes
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "iris"
MODEL_VERSION = "1"
SPLIT_SEED = 0
TEST_FRACTION = 0.2
N_FEATURES = 4
PROB_TOLERANCE = 1e-5
MIN_ACCURACY = 0.9
EXAMPLE_ROWS = 3  # one held-out row of each class

DESCRIPTION = (
    "Iris flowers: sepal length, sepal width, petal length, petal width (cm, float32) -> "
    "species name (setosa, versicolor, virginica). StandardScaler + LogisticRegression "
    "(scikit-learn) trained on the names, converted with skl2onnx's default options "
    "(string label, ZipMap probabilities)."
)


@dataclass(frozen=True)
class Paths:
    """Where one build writes its artefacts."""

    model: Path
    config: Path
    example: Path
    test_data: Path

    @classmethod
    def under(cls, root: Path) -> Paths:
        model_dir = root / "models" / MODEL_NAME
        return cls(model=model_dir / MODEL_VERSION / "model.onnx",
                   config=model_dir / "config.toml", example=model_dir / "example.json",
                   test_data=root / "tests" / "data" / "iris_test.npz")

    def all(self) -> tuple[Path, Path, Path, Path]:
        return (self.model, self.config, self.example, self.test_data)


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    data = load_iris()
    names = np.asarray(data.target_names)[data.target]
    x_tr, x_te, y_tr, y_te = train_test_split(data.data.astype(np.float32), names,
                                              test_size=TEST_FRACTION, stratify=names,
                                              random_state=SPLIT_SEED)
    return x_tr, x_te, y_tr, y_te


def to_onnx_model(pipe: Pipeline) -> onnx.ModelProto:
    """skl2onnx's defaults (ZipMap, string label), only the input named."""
    model: onnx.ModelProto = convert_sklearn(
        pipe, initial_types=[("input", FloatTensorType([None, N_FEATURES]))],
        target_opset=TARGET_OPSET)
    model.graph.name = MODEL_NAME  # NOTE: skl2onnx names graphs at random
    model.graph.doc_string = "iris classifier: input -> output_label, output_probability"
    model.doc_string = DESCRIPTION
    model.producer_name = "falcon models/build_iris.py"
    model.producer_version = "1"
    model.domain = "falcon.models"
    model.model_version = int(MODEL_VERSION)
    del model.metadata_props[:]
    return model


def check_matches_sklearn(model_bytes: bytes, pipe: Pipeline, x: np.ndarray) -> np.ndarray:
    """The ONNX labels for ``x``; raises if labels or probabilities differ from sklearn's."""
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    label, zipmap = sess.run(["output_label", "output_probability"], {"input": x})
    classes = list(pipe.classes_)
    if label.dtype != object or label.tolist() != pipe.predict(x).tolist():
        raise RuntimeError("ONNX labels differ from scikit-learn predict()")
    probs = np.array([[row[c] for c in classes] for row in zipmap])
    worst = float(np.max(np.abs(probs - pipe.predict_proba(x))))
    if worst > PROB_TOLERANCE:
        raise RuntimeError(f"ONNX probabilities differ from predict_proba() by {worst:.2e}")
    return np.asarray(label)


def config_text(accuracy: float, rows: int, sha256: str) -> str:
    return f"""\
# Per-model configuration. Read by the inference daemon at load time.
# Generated by models/build_iris.py; do not edit by hand.
# No labels / label_output / probabilities_output: the class labels are the ZipMap's,
# and /v1 finds the label and probability outputs itself.
description = "{DESCRIPTION}"
max_request_rows = 256        # rows one request may carry (413 beyond)
prepack = false               # ONNX Runtime weight prepacking (private packed copy of weights)

[cache]
enabled = false               # inference is cheaper than a Memcached round trip: see README

[evaluation]
heldout_accuracy = {accuracy:.4f}      # measured by build_iris.py on the held-out split
heldout_rows = {rows}
split = "sklearn load_iris, stratified {100 - int(TEST_FRACTION * 100)}/{int(TEST_FRACTION * 100)}, random_state={SPLIT_SEED}"
onnx_sha256 = "{sha256}"
"""


def example(x: np.ndarray, y: np.ndarray, label: np.ndarray) -> bytes:
    """The first held-out row of each class that the model gets right; values as the
    shortest decimals that are the same float32."""
    picks = [int(np.flatnonzero((y == c) & (label == y))[0]) for c in sorted(set(y.tolist()))]
    doc = {"instances": [[float(np.format_float_positional(v)) for v in x[i]]
                         for i in picks[:EXAMPLE_ROWS]],
           "expected_labels": [str(label[i]) for i in picks[:EXAMPLE_ROWS]]}
    return (json.dumps(doc) + "\n").encode()


def build(paths: Paths) -> float:
    """Train, convert, verify and write the artefacts; return the held-out accuracy."""
    x_tr, x_te, y_tr, y_te = load_split()
    pipe = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))])
    pipe.fit(x_tr, y_tr)
    model_bytes = to_onnx_model(pipe).SerializeToString()
    label = check_matches_sklearn(model_bytes, pipe, x_te)
    accuracy = float(np.mean(label == y_te))
    if accuracy < MIN_ACCURACY:
        raise RuntimeError(f"held-out accuracy {accuracy:.4f} is below {MIN_ACCURACY}")
    sha = hashlib.sha256(model_bytes).hexdigest()
    for path in paths.all():
        path.parent.mkdir(parents=True, exist_ok=True)
    paths.model.write_bytes(model_bytes)
    paths.config.write_text(config_text(accuracy, len(y_te), sha), encoding="utf-8")
    paths.example.write_bytes(example(x_te, y_te, label))
    paths.test_data.write_bytes(npz_bytes({"X": x_te, "y": y_te.astype(str)}))
    return accuracy


def main(argv: list[str] | None = None) -> int:
    return cli("iris", build, Paths.under, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
