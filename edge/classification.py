"""Triton's classification extension: an output returned as its top K classes.

Usage: a client asks for it per requested output, ``tritonclient.http.InferRequestedOutput(
"probabilities", class_count=3)`` (REST ``"outputs": [{"name": "probabilities", "parameters":
{"classification": 3}}]``, parsed by edge/v2codec.py) or the same in ``tritonclient.grpc``
(``parameters["classification"].int64_param``, edge/grpcface/codec.py). Both faces hand
``Core.infer`` ``classes={"probabilities": 3}``; the core calls :func:`check` with the other
validation (before the cache or the daemon) and :func:`render` on the outputs it serves::

    check(meta, ["probabilities"], {"probabilities": 3})
    served = render(meta, outputs, {"probabilities": 3})

As Triton (server's src/classification.cc and grpc/infer_handler.h) does it:

- the output comes back BYTES, shape ``[rows, K']`` for an output with a batch dimension,
  else ``[K']``, where ``K' = min(K, classes per row)``: a K above the number of classes is
  clamped, not refused;
- each element is ``"<value>:<index>"``, or ``"<value>:<index>:<label>"`` when the output
  has a label for that index; the K' highest values of the row, highest first, compared
  in the output's own datatype; ``<index>`` is the position in the row (flattened, C order);
- ``<value>`` as C++'s ``std::to_string`` writes it: ``%f`` (six decimals) for a float,
  the plain decimal for an integer.

The platform's choices where Triton leaves room:

- the batch dimension is the output's dynamic first dimension (its rows: how
  edge/validation.py counts a batch); an output without one is ranked whole, flattened.
  Triton goes by ``max_batch_size`` instead: for a version that does not batch but has a
  dynamic first dimension, ``/config`` says ``max_batch_size: 0`` while its rows are
  still ranked one by one here;
- ties keep the lower index first (Triton's ``std::sort`` leaves their order open); NaN
  ranks below every number;
- the labels are the output's own ``class_labels`` in the model metadata (a ZipMap
  output's columns, daemon/tensortypes.py), else, for the model's
  ``probabilities_output``, its config's ``labels`` (Triton's ``label_filename`` of that
  output; what ``/config`` lists as ``class_labels``); any other output has no label part;
- every numeric datatype is accepted, FP16 included (Triton refuses FP16 and BF16);
  BOOL and BYTES are refused, as is a row of more than ``MAX_ROW_ELEMENTS`` values
  (Triton's bound);
- K must be a positive integer on both faces (Triton's REST reads 0 as "not asked").

Errors are :class:`~edge.errors.InvalidInput` on ``outputs[i].parameters.classification``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.errors import InvalidInput
from edge.validation import ModelMeta, TensorMeta, dtype_name

PARAMETER = "classification"
MAX_ROW_ELEMENTS = 1_000_000  # Triton's kMaxClassificationElements


def field(index: int) -> str:
    """The request field of the ``index``-th requested output's classification."""
    return f"outputs[{index}].parameters.{PARAMETER}"


def count(value: Any, where: str) -> int:
    """The class count K of a REST request (a JSON integer >= 1)."""
    if type(value) is not int or value < 1:
        raise InvalidInput(where, f"must be a positive integer (the number of classes to "
                                  f"return), got {value!r}")
    return value


def check(meta: ModelMeta, outputs: list[str], classes: dict[str, int]) -> None:
    """Refuse what cannot be classified, before any inference: an output that is not
    numeric, a K below 1, an output that was not requested by name."""
    specs = {t.name: t for t in meta.outputs}
    for name, k in classes.items():
        if name not in outputs:
            raise InvalidInput("outputs", f"classification of {name!r}, which is not requested")
        where = field(outputs.index(name))
        count(k, where)
        spec = specs.get(name)
        if spec is not None and spec.dtype.kind not in "iuf":
            raise InvalidInput(where, f"output {name!r} is {dtype_name(spec.dtype)}; "
                                      "classification needs a numeric output")


def render(meta: ModelMeta, outputs: list[tuple[str, np.ndarray]],
           classes: dict[str, int], requested: list[str] | None = None,
           ) -> list[tuple[str, np.ndarray]]:
    """``outputs`` with each output named in ``classes`` replaced by its top K (see the
    module docstring); the others as they are. ``requested``: the request's output names
    in its order, so an error names the right ``outputs[i]`` (default: ``classes``' order)."""
    specs = {t.name: t for t in meta.outputs}
    order = list(requested) if requested else list(classes)
    served = []
    for name, arr in outputs:
        k = classes.get(name)
        if k is not None:
            spec = specs.get(name, TensorMeta(name, arr.dtype, ()))
            labels = tuple("" if c is None else str(c) for c in meta.column_labels(spec))
            arr = _render_one(spec, arr, k, field(order.index(name)), labels)
        served.append((name, arr))
    return served


def _render_one(spec: TensorMeta, arr: np.ndarray, k: int, where: str,
                labels: tuple[str, ...]) -> np.ndarray:
    if arr.dtype.kind not in "iuf":
        raise InvalidInput(where, f"output {spec.name!r} is {dtype_name(arr.dtype)}; "
                                  "classification needs a numeric output")
    batched = bool(spec.shape) and spec.shape[0] < 0 and arr.ndim > 0
    per_row = int(np.prod(arr.shape[1:] if batched else arr.shape, dtype=np.int64))
    if per_row > MAX_ROW_ELEMENTS:
        raise InvalidInput(where, f"output {spec.name!r} has {per_row} values per row; "
                                  f"classification ranks at most {MAX_ROW_ELEMENTS}")
    top = top_k(arr.reshape(arr.shape[0] if batched else 1, per_row), k, labels)
    return top if batched else top.reshape(-1)


def top_k(rows: np.ndarray, k: int, labels: tuple[str, ...] = ()) -> np.ndarray:
    """The ``[len(rows), min(k, columns)]`` object array of ``"value:index[:label]"``
    strings of a 2-D numeric array, each row's highest values first (ties: lower index
    first). ``labels[j]``, when present and not empty, labels column ``j``."""
    n, columns = rows.shape
    take = min(k, columns)
    # keys whose ascending order is the values' descending one: a float negated (NaN stays
    # last), an integer's bitwise complement (~x = -x - 1: exact, never wraps)
    keys = -rows if rows.dtype.kind == "f" else ~rows
    order = _smallest(keys, take)
    values = np.take_along_axis(rows, order, axis=1).reshape(-1).tolist()
    indices = order.reshape(-1).tolist()
    # PERF: %-formatting; f"{value:f}" takes over twice as long per element
    pattern = "%f:%d" if rows.dtype.kind == "f" else "%d:%d"
    pairs = [pattern % pair for pair in zip(values, indices, strict=True)]
    if any(labels):
        named = [labels[index] if index < len(labels) else "" for index in indices]
        pairs = [f"{pair}:{label}" if label else pair
                 for pair, label in zip(pairs, named, strict=True)]
    out = np.empty(n * take, dtype=object)
    out[:] = pairs
    return out.reshape(n, take)


def _smallest(keys: np.ndarray, take: int) -> np.ndarray:
    """Per row, the indices of the ``take`` smallest keys in ascending order, equal keys
    by index, NaN last: a stable sort's first ``take``. Wide rows (Triton's image_client:
    3 of 1000 classes) sort only the candidates a partition leaves: every key up to the
    take-th smallest, ties included, so the result is the stable sort's."""
    n, columns = keys.shape
    if take == 0 or take * 8 > columns:
        return np.argsort(keys, axis=1, kind="stable")[:, :take]
    part = np.argpartition(keys, take - 1, axis=1)[:, take - 1:take]
    kth = np.take_along_axis(keys, part, axis=1)
    if keys.dtype.kind == "f" and np.isnan(kth).any():  # fewer than take numbers in a row
        return np.argsort(keys, axis=1, kind="stable")[:, :take]
    order = np.empty((n, take), dtype=np.intp)
    for i, (row, mask) in enumerate(zip(keys, keys <= kth, strict=True)):
        candidates = np.flatnonzero(mask)  # ascending: the stable sort keeps ties by index
        order[i] = candidates[np.argsort(row[candidates], kind="stable")[:take]]
    return order
