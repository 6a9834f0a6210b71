"""Models as the converters write them, built from datasets scikit-learn ships.

Each builder trains a small model deterministically, converts it with the
converter's documented call and *default* options (skl2onnx's ZipMap, string
labels, string inputs), writes it into a model repository as
``<repo>/<name>/1/model.onnx`` with a ``config.toml``, and returns a
:class:`Built`: the file, the rows to send (one array per input, in the V2
shape) and the same rows as ``/v1`` instances.

- :func:`random_forest_iris`: RandomForestClassifier on iris, int64 labels,
  ``output_probability`` a ZipMap of int64 class labels.
- :func:`logreg_string_labels`: LogisticRegression on iris class *names*:
  ``output_label`` is tensor(string), the ZipMap has string labels.
- :func:`column_transformer`: OneHotEncoder on a string column ``color`` and
  StandardScaler on ``x1``, ``x2`` -> LogisticRegression: three named inputs,
  one of them tensor(string) [N, 1].
- :func:`tfidf_text`: TfidfVectorizer -> LogisticRegression on short texts: a
  tensor(string) [N, 1] input. skl2onnx's ``StringNormalizer`` names a locale
  that ONNX Runtime must find on the host (``en_US.UTF-8`` by default, absent on
  Debian's minimal images): the conversion passes
  ``options={TfidfVectorizer: {"locale": "C.UTF-8"}}``, which every glibc has.
- :func:`lightgbm_classifier`, :func:`xgboost_regressor`: onnxmltools'
  ``convert_lightgbm`` / ``convert_xgboost`` (optional test dependencies).

Only tests import this module; it needs scikit-learn and skl2onnx (the ``test``
extra).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
IRIS_NAMES = ("setosa", "versicolor", "virginica")
TEXT_LOCALE = "C.UTF-8"


@dataclass
class Built:
    name: str
    path: Path
    feeds: dict[str, np.ndarray]          # V2 inputs, by name
    instances: list[Any]                  # the same rows as /v1 instances
    string_inputs: tuple[str, ...] = ()   # inputs that are tensor(string)
    extra: dict[str, Any] = field(default_factory=dict)


def _write(repo: Path, name: str, model: onnx.ModelProto, config: str = "") -> Path:
    model.graph.name = name  # NOTE: skl2onnx names graphs at random
    model.producer_version = model.producer_version or "test"
    path = Path(repo) / name / "1" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    (Path(repo) / name / "config.toml").write_text(
        f'description = "{name}: converter output built by tests/convertermodels.py"\n'
        f"max_request_rows = 64\n{config}", encoding="utf-8")
    return path


def _iris() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris
    X, y = load_iris(return_X_y=True)
    return X.astype(np.float32), y


def _rows(X: np.ndarray, n: int = 24) -> np.ndarray:
    """``n`` rows spread over the dataset (every class appears)."""
    return np.ascontiguousarray(X[np.linspace(0, len(X) - 1, n).astype(int)])


def random_forest_iris(repo: Path, name: str = "rf_iris") -> Built:
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier
    X, y = _iris()
    model = RandomForestClassifier(n_estimators=12, max_depth=5, random_state=0).fit(X, y)
    onx = to_onnx(model, X[:1], target_opset=TARGET_OPSET)
    rows = _rows(X)
    return Built(name, _write(repo, name, onx), {"X": rows}, rows.tolist())


def logreg_string_labels(repo: Path, name: str = "logreg_names") -> Built:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    X, y = _iris()
    labels = np.asarray(IRIS_NAMES)[y]
    model = LogisticRegression(max_iter=500).fit(X, labels)
    onx = to_onnx(model, X[:1], target_opset=TARGET_OPSET)
    rows = _rows(X)
    return Built(name, _write(repo, name, onx), {"X": rows}, rows.tolist())


COLORS = ("red", "green", "blue", "caf\u00e9 au lait")


def _tabular(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A color column and two numbers; the class depends on all three."""
    rng = np.random.default_rng(seed)
    color = rng.choice(np.asarray(COLORS, dtype=object), size=n)
    x1 = rng.normal(size=n).astype(np.float32)
    x2 = rng.normal(size=n).astype(np.float32)
    score = x1 - 0.5 * x2 + np.array([COLORS.index(c) for c in color]) * 0.7
    y = np.digitize(score, [0.3, 1.5])  # three classes
    return color, x1, x2, y


def column_transformer(repo: Path, name: str = "tabular") -> Built:
    import pandas as pd
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    color, x1, x2, y = _tabular(400, 0)
    frame = pd.DataFrame({"color": color, "x1": x1, "x2": x2})
    pipe = Pipeline([
        ("prep", ColumnTransformer([("onehot", OneHotEncoder(handle_unknown="ignore"), ["color"]),
                                    ("scale", StandardScaler(), ["x1", "x2"])])),
        ("clf", LogisticRegression(max_iter=500)),
    ]).fit(frame, y)
    onx = convert_sklearn(pipe, initial_types=[("color", StringTensorType([None, 1])),
                                               ("x1", FloatTensorType([None, 1])),
                                               ("x2", FloatTensorType([None, 1]))],
                          target_opset=TARGET_OPSET)
    color, x1, x2, _ = _tabular(20, 1)
    feeds = {"color": color.reshape(-1, 1), "x1": x1.reshape(-1, 1), "x2": x2.reshape(-1, 1)}
    instances = [{"color": c, "x1": float(a), "x2": float(b)}
                 for c, a, b in zip(color.tolist(), x1.tolist(), x2.tolist(), strict=True)]
    return Built(name, _write(repo, name, onx), feeds, instances, ("color",))


TEXTS = (
    "the striker scored a late goal", "a fine save by the keeper", "the match ended in a draw",
    "the team won the cup final", "penalty kick in the last minute", "fans sang in the stadium",
    "the new phone has a faster chip", "software update fixes the battery bug",
    "the laptop screen is bright", "a router keeps the network fast", "the app crashed again",
    "cloud servers store the data", "bake the bread for forty minutes", "add salt to the soup",
    "a recipe with fresh basil", "slow cooked beans and rice", "the cake needs more sugar",
    "grill the fish with lemon",
)
TOPICS = ("sport",) * 6 + ("tech",) * 6 + ("food",) * 6


def tfidf_text(repo: Path, name: str = "topics", locale: str = TEXT_LOCALE) -> Built:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    pipe = Pipeline([("tfidf", TfidfVectorizer()),
                     ("clf", LogisticRegression(max_iter=500))]).fit(list(TEXTS), list(TOPICS))
    onx = convert_sklearn(pipe, initial_types=[("text", StringTensorType([None, 1]))],
                          target_opset=TARGET_OPSET,
                          options={TfidfVectorizer: {"locale": locale}})
    texts = [*TEXTS[::2], "the keeper and the chip", "", "Caf\u00e9 soup!", "unknown words only"]
    feeds = {"text": np.asarray(texts, dtype=object).reshape(-1, 1)}
    return Built(name, _write(repo, name, onx), feeds, [[t] for t in texts], ("text",))


def lightgbm_classifier(repo: Path, name: str = "lgbm") -> Built:
    import lightgbm
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType
    X, y = _iris()
    model = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=7, random_state=0,
                                    verbose=-1).fit(X, y)
    onx = convert_lightgbm(model, initial_types=[("input", FloatTensorType([None, 4]))],
                           target_opset=15)  # onnxmltools supports up to 15
    rows = _rows(X)
    return Built(name, _write(repo, name, onx), {"input": rows}, rows.tolist())


def xgboost_regressor(repo: Path, name: str = "xgb") -> Built:
    import xgboost
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType
    from sklearn.datasets import load_diabetes
    X, y = load_diabetes(return_X_y=True)
    X = X.astype(np.float32)
    model = xgboost.XGBRegressor(n_estimators=20, max_depth=3, random_state=0).fit(X, y)
    onx = convert_xgboost(model, initial_types=[("input", FloatTensorType([None, X.shape[1]]))],
                          target_opset=15)
    rows = _rows(X)
    return Built(name, _write(repo, name, onx), {"input": rows}, rows.tolist())


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def zipmap_labels(path: Path) -> dict[str, list[Any]]:
    """Class labels of each graph output made by a ZipMap node, read from the file."""
    graph = onnx.load(str(path)).graph
    found = {}
    for node in graph.node:
        if node.op_type == "ZipMap":
            attrs = {a.name: a for a in node.attribute}
            found[node.output[0]] = (list(attrs["classlabels_int64s"].ints)
                                     if "classlabels_int64s" in attrs else
                                     [s.decode() for s in attrs["classlabels_strings"].strings])
    return found


def reference(b: Built) -> dict[str, np.ndarray]:
    """In-process ONNX Runtime on the same rows; a ZipMap's dicts as [N, C] columns. One
    intra-op thread: what every row gets alone (a tree ensemble's multi-threaded run of
    ~50 rows or more sums in another order; see test_tree_ensembles_...)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(b.path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(names, b.feeds), strict=True))
    for name, labels in zipmap_labels(b.path).items():
        out[name] = np.array([[row[c] for c in labels] for row in out[name]], dtype=np.float32)
    return out
