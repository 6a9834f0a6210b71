"""Build the shipped demo model ``models/digits`` from scikit-learn's bundled digits data.

Usage::

    python models/build_digits.py           # (re)write the committed artefacts
    python models/build_digits.py --check   # rebuild in a temp dir; exit 1 if bytes differ

What it writes (all committed):

- ``models/digits/1/model.onnx``: StandardScaler + LogisticRegression, converted with
  skl2onnx. Input ``input`` float32 [N, 64]; outputs ``label`` int64 [N] and
  ``probabilities`` float32 [N, 10]. The converter is told to avoid the ``ai.onnx.ml``
  Scaler/LinearClassifier/Normalizer operators, so the weights are graph initializers
  (MatMul/Add/Sub/Div) like any other model the daemon puts in shared memory.
- ``models/digits/config.toml``: per-model configuration plus the held-out evaluation.
- ``tests/data/digits_test.npz``: the held-out split (``X`` float32 [360, 64], ``y`` int64).

Determinism: training is deterministic (lbfgs, fixed split seed), skl2onnx's random graph
name and the producer fields are overwritten, and the npz is written with fixed zip
timestamps, so two builds with the same library versions are byte-for-byte identical.
A different numpy/scikit-learn/skl2onnx version or BLAS may legitimately change the
bytes; ``--check`` then fails and the artefacts should be rebuilt and re-committed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import onnxruntime as ort
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "digits"
MODEL_VERSION = "1"
SPLIT_SEED = 0
TEST_FRACTION = 0.2
N_FEATURES = 64
N_CLASSES = 10
# Pinned converter target. skl2onnx stamps the lowest opset each domain actually needs
# (at most these), so the file's opset_import may show smaller numbers.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
# Force plain ONNX operators so the weights become initializers (see module docstring).
AVOID_OPS = {"LinearClassifier", "Scaler", "Normalizer"}
PROB_TOLERANCE = 1e-5
MIN_ACCURACY = 0.96
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

DESCRIPTION = (
    "Handwritten digits (8x8 grayscale, pixel values 0-16) -> digit 0-9. "
    "64 float32 features per row, row-major pixels. "
    "StandardScaler + LogisticRegression (scikit-learn), converted with skl2onnx."
)


@dataclass(frozen=True)
class Split:
    """The stratified train/held-out split of ``load_digits``."""

    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class Paths:
    """Where one build writes its three artefacts."""

    model: Path
    config: Path
    test_data: Path

    @classmethod
    def under(cls, root: Path) -> Paths:
        model_dir = root / "models" / MODEL_NAME
        return cls(
            model=model_dir / MODEL_VERSION / "model.onnx",
            config=model_dir / "config.toml",
            test_data=root / "tests" / "data" / "digits_test.npz",
        )

    def all(self) -> tuple[Path, Path, Path]:
        return (self.model, self.config, self.test_data)


def load_split() -> Split:
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x.astype(np.float32),
        y.astype(np.int64),
        test_size=TEST_FRACTION,
        stratify=y,
        random_state=SPLIT_SEED,
    )
    return Split(x_tr, x_te, y_tr, y_te)


def train(split: Split) -> Pipeline:
    pipe = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=2000))])
    pipe.fit(split.x_train, split.y_train)
    return pipe


def to_onnx_model(pipe: Pipeline) -> onnx.ModelProto:
    model: onnx.ModelProto = convert_sklearn(
        pipe,
        initial_types=[("input", FloatTensorType([None, N_FEATURES]))],
        final_types=[
            ("label", Int64TensorType([None])),
            ("probabilities", FloatTensorType([None, N_CLASSES])),
        ],
        target_opset=TARGET_OPSET,
        options={id(pipe): {"zipmap": False}},
        black_op=AVOID_OPS,
    )
    _pin_metadata(model)
    return model


def _pin_metadata(model: onnx.ModelProto) -> None:
    """Replace the converter's random graph name and version stamps with fixed values."""
    model.graph.name = MODEL_NAME
    model.graph.doc_string = "digits classifier: input -> label, probabilities"
    model.doc_string = DESCRIPTION
    model.producer_name = "falcon models/build_digits.py"
    model.producer_version = "1"
    model.domain = "falcon.models"
    model.model_version = int(MODEL_VERSION)
    del model.metadata_props[:]


def run_onnx(model_bytes: bytes, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    label, probs = sess.run(["label", "probabilities"], {"input": x})
    return np.asarray(label), np.asarray(probs)


def check_matches_sklearn(model_bytes: bytes, pipe: Pipeline, x: np.ndarray) -> np.ndarray:
    """Return the ONNX labels for ``x``; raise if they differ from scikit-learn's."""
    label, probs = run_onnx(model_bytes, x)
    if label.dtype != np.int64 or label.shape != (len(x),):
        raise RuntimeError(f"label output is {label.dtype}{label.shape}, want int64[{len(x)}]")
    if probs.dtype != np.float32 or probs.shape != (len(x), N_CLASSES):
        raise RuntimeError(f"probabilities output is {probs.dtype}{probs.shape}")
    if not np.array_equal(label, pipe.predict(x)):
        raise RuntimeError("ONNX labels differ from scikit-learn predict()")
    worst = float(np.max(np.abs(probs - pipe.predict_proba(x))))
    if worst > PROB_TOLERANCE:
        raise RuntimeError(f"ONNX probabilities differ from predict_proba() by {worst:.2e}")
    return label


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``np.load``-compatible .npz with fixed member timestamps (np.savez uses 'now')."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
            with zf.open(info, "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def config_text(accuracy: float, rows: int, sha256: str) -> str:
    labels = ", ".join(f'"{i}"' for i in range(N_CLASSES))
    return f"""\
# Per-model configuration. Read by the inference daemon at load time.
# Generated by models/build_digits.py; do not edit by hand.
description = "{DESCRIPTION}"
max_request_rows = 256        # rows one request may carry (413 beyond)
prepack = false               # ONNX Runtime weight prepacking (private packed copy of weights)
labels = [{labels}]    # class names, index-aligned with the probabilities output columns
label_output = "label"
probabilities_output = "probabilities"

[cache]
enabled = false               # inference (~0.1 ms in the daemon) is cheaper than a Memcached round trip: see README

[evaluation]
heldout_accuracy = {accuracy:.4f}      # measured by build_digits.py on the held-out split
heldout_rows = {rows}
split = "sklearn load_digits, stratified {100 - int(TEST_FRACTION * 100)}/{int(TEST_FRACTION * 100)}, random_state={SPLIT_SEED}"
onnx_sha256 = "{sha256}"
"""


def build(paths: Paths) -> float:
    """Train, convert, verify and write the artefacts; return the held-out accuracy."""
    split = load_split()
    pipe = train(split)
    model_bytes = to_onnx_model(pipe).SerializeToString()
    label = check_matches_sklearn(model_bytes, pipe, split.x_test)
    accuracy = float(np.mean(label == split.y_test))
    if accuracy < MIN_ACCURACY:
        raise RuntimeError(f"held-out accuracy {accuracy:.4f} is below {MIN_ACCURACY}")
    sha = hashlib.sha256(model_bytes).hexdigest()
    for path in paths.all():
        path.parent.mkdir(parents=True, exist_ok=True)
    paths.model.write_bytes(model_bytes)
    paths.config.write_text(config_text(accuracy, len(split.y_test), sha), encoding="utf-8")
    paths.test_data.write_bytes(npz_bytes({"X": split.x_test, "y": split.y_test}))
    return accuracy


class Artefacts(Protocol):
    """A build's output paths (each model script's ``Paths``)."""

    model: Path

    def all(self) -> tuple[Path, ...]: ...


def differing(a: Artefacts, b: Artefacts) -> list[str]:
    return [str(p) for p, q in zip(a.all(), b.all(), strict=True) if _digest(p) != _digest(q)]


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def check(name: str, build: Callable[[Any], float], under: Callable[[Path], Artefacts]) -> int:
    """Rebuild into a temp dir and compare every artefact with the committed one."""
    committed = under(REPO_ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = under(Path(tmp))
        build(fresh)
        bad = differing(committed, fresh)
    for path in bad:
        print(f"DIFFERS from a fresh build: {path}", file=sys.stderr)
    if not bad:
        print(f"ok: committed {name} artefacts match a fresh build byte for byte")
    return 1 if bad else 0


def cli(name: str, build: Callable[[Any], float], under: Callable[[Path], Artefacts],
        argv: list[str] | None, description: str) -> int:
    """A demo model script's command line: build into the repository, or ``--check``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--check", action="store_true", help="rebuild in a temp dir and compare bytes"
    )
    args = parser.parse_args(argv)
    if args.check:
        return check(name, build, under)
    paths = under(REPO_ROOT)
    accuracy = build(paths)
    print(f"held-out accuracy {accuracy:.4f}; sha256 {_digest(paths.model)}")
    for path in paths.all():
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli("digits", build, Paths.under, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
