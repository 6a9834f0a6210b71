"""The ONNX types the daemon serves, and what it says about the others.

Usage: :func:`tensor_spec` turns an ONNX Runtime input or output (``session.get_inputs()``)
into a :class:`TensorSpec`, or raises :class:`UnsupportedType` saying what to do;
:func:`zipmap_labels` reads the class labels of a graph's ZipMap outputs, and
:func:`zipmap_to_array` turns ZipMap's answer into its tensor.

- Every numeric tensor type and ``tensor(bool)`` (:data:`ORT_TO_NUMPY`).
- ``tensor(string)``: numpy object arrays of ``str``, dtype :data:`STRING` (``"|O"``)
  here, on the wire (:mod:`wire.messages`) and in the edge's metadata; V2 ``BYTES``.
- A ``seq(map(int64|string, tensor(float)))`` output made by a ``ZipMap`` node
  (skl2onnx's default for classifiers; Triton cannot serve it) is served as a float32
  ``[N, C]`` tensor under the output's own name: column ``j`` is the probability of
  the ZipMap's ``classlabels_int64s[j]`` / ``classlabels_strings[j]``, and those labels
  are the output's ``class_labels`` in the metadata.
- Anything else (another sequence, a map, an optional, complex numbers) is refused at
  load time by a message naming the input or output, its type, and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from wire.messages import STRING

ORT_TO_NUMPY = {
    "tensor(bool)": "|b1", "tensor(int8)": "|i1", "tensor(uint8)": "|u1",
    "tensor(int16)": "<i2", "tensor(uint16)": "<u2", "tensor(int32)": "<i4",
    "tensor(uint32)": "<u4", "tensor(int64)": "<i8", "tensor(uint64)": "<u8",
    "tensor(float16)": "<f2", "tensor(float)": "<f4", "tensor(double)": "<f8",
    "tensor(string)": STRING,
}
ZIPMAP_TYPES = ("seq(map(int64,tensor(float)))", "seq(map(string,tensor(float)))")
SERVED = "numeric, bool and string tensors and ZipMap outputs are served"
NO_ZIPMAP = "convert with options={'zipmap': False} (skl2onnx) or zipmap=False (onnxmltools)"
LOCALE_ADVICE = (" (a StringNormalizer names a locale this host lacks; for a TF-IDF pipeline "
                 "convert with skl2onnx's options={TfidfVectorizer: {'locale': 'C.UTF-8'}}, "
                 "or install the locale)")
# Operators whose sums ONNX Runtime orders differently with several threads once a run
# holds enough rows (a TreeEnsemble over ~50 rows): a row's last bits then depend on the
# batch it shared. daemon.loader runs them on one thread under [batching] exact.
ROW_ORDER_DEPENDENT_OPS = frozenset({"TreeEnsembleClassifier", "TreeEnsembleRegressor",
                                     "TreeEnsemble"})


class UnsupportedType(ValueError):
    """An input or output of a type the daemon cannot serve; the message names it, its
    type and what to do (the loader refuses the version with it)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str            # numpy type string, e.g. "<f4"; "|O" for strings
    shape: tuple[int, ...]  # -1 for a dynamic dimension
    # A ZipMap output's class labels (ints or strs), in column order; () otherwise.
    class_labels: tuple[int | str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.class_labels:
            wire["class_labels"] = list(self.class_labels)
        return wire


def tensor_spec(arg: Any, what: str,
                zipmaps: dict[str, tuple[int | str, ...]] | None = None) -> TensorSpec:
    """The spec of ONNX Runtime's ``NodeArg`` ``arg`` (``what``: "input" or "output");
    ``zipmaps``: :func:`zipmap_labels` of the graph. Raises :class:`UnsupportedType`."""
    labels = (zipmaps or {}).get(arg.name)
    if labels is not None:
        return TensorSpec(arg.name, "<f4", (-1, len(labels)), labels)
    dtype = ORT_TO_NUMPY.get(arg.type)
    if dtype is None:
        raise UnsupportedType(f"{what} {arg.name!r} has unsupported type {arg.type}: "
                              f"{advice(arg.type)}")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, dtype, shape)


def advice(type_: str) -> str:
    """What to do about a type the daemon cannot serve."""
    if type_.startswith("seq(map("):
        return ("only a ZipMap node's seq(map(int64|string, tensor(float))) output is served "
                f"(as a [N, C] tensor); for class probabilities as a float tensor, {NO_ZIPMAP}")
    if type_.startswith("seq("):
        return f"{SERVED}; export this sequence as a tensor (a classifier's probabilities: {NO_ZIPMAP})"
    if type_.startswith(("map(", "optional(")):
        return (f"{SERVED}; export the model with a tensor here (a map input: one tensor "
                "column per key, e.g. without DictVectorizer)")
    return f"{SERVED}; cast it in the graph (e.g. a Cast node to float or int64) before export"


def zipmap_labels(graph_bytes: bytes) -> dict[str, tuple[int | str, ...]]:
    """Class labels of every graph output a ZipMap node makes, by output name."""
    graph = onnx.load_from_string(graph_bytes).graph
    outputs = {o.name for o in graph.output}
    labels: dict[str, tuple[int | str, ...]] = {}
    for node in graph.node:
        if node.op_type != "ZipMap" or node.output[0] not in outputs:
            continue
        attrs = {a.name: a for a in node.attribute}
        if "classlabels_int64s" in attrs:
            labels[node.output[0]] = tuple(int(v) for v in attrs["classlabels_int64s"].ints)
        elif "classlabels_strings" in attrs:
            labels[node.output[0]] = tuple(v.decode("utf-8")
                                           for v in attrs["classlabels_strings"].strings)
    return labels


def zipmap_to_array(rows: Any, labels: tuple[int | str, ...]) -> np.ndarray:
    """ZipMap's output (one ``{label: probability}`` dict per row) as float32 ``[N, C]``,
    columns in ``labels`` order. The values are ZipMap's float32 inputs, unchanged."""
    table = [[row[label] for label in labels] for row in rows]
    return np.array(table, dtype=np.float32).reshape(len(rows), len(labels))


def row_order_dependent(graph_bytes: bytes) -> bool:
    """Whether the graph has an operator of :data:`ROW_ORDER_DEPENDENT_OPS`.
    PERF: only a graph whose bytes name one is parsed."""
    if b"TreeEnsemble" not in graph_bytes:
        return False
    ops = {node.op_type for node in onnx.load_from_string(graph_bytes).graph.node}
    return bool(ops & ROW_ORDER_DEPENDENT_OPS)
