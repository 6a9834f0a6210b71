"""Input validation against a model's metadata, before anything reaches the daemon.

Every rejection is an :class:`~edge.errors.InvalidInput` (or
:class:`~edge.errors.PayloadTooLarge`) whose ``field`` is in the client's
terms: ``inputs[1].shape`` for the V2 face, ``instances[3][7]`` or
``instances[3].color`` for the simple face.

String tensors (ONNX ``tensor(string)``) have dtype ``object`` here: numpy
object arrays of ``str``, as the V2 codec decodes BYTES and the wire carries them.

The simple face's rows (:func:`instances_to_inputs`): for a one-input model a
row is that input's row (a list, nested as the input's shape after the batch
dimension; a bare scalar where that shape is ``[1]``); for any model a row may
be an object keyed by input name (TensorFlow Serving's row format), each value
that input's row in the same way: ``{"color": "red", "x1": 0.3, "x2": -1.2}``
for inputs ``color`` string [N, 1], ``x1`` and ``x2`` float [N, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.errors import InvalidInput, PayloadTooLarge
from wire import ops


@dataclass(frozen=True)
class TensorMeta:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]  # -1: dynamic
    class_labels: tuple[int | str, ...] = ()  # a ZipMap output's columns (daemon.loader)


@dataclass(frozen=True)
class ModelMeta:
    """What the edge knows of one model version (from the daemon's metadata op)."""

    name: str
    version: str
    versions: tuple[str, ...]
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]
    max_batch_size: int
    labels: tuple[str, ...] = ()
    label_output: str = ""
    probabilities_output: str = ""
    platform: str = "onnxruntime_onnx"
    cache_enabled: bool = False
    cache_ttl_s: int = 300
    content_digest: str = ""  # the version's weights and graph (SHA-256): the cache key's
    description: str = ""  # the config's free text
    # How the daemon runs it (its batching policy, daemon/batchpolicy.py): whether it
    # coalesces requests, up to how many rows a run, how long a batch waits for more,
    # and how many runs of the version happen at once.
    batching: bool = False
    batch_rows: int = 0
    queue_delay_us: int = 0
    instances: int = 1

    def probabilities_spec(self) -> TensorMeta | None:
        """The probabilities output: the config's ``probabilities_output``, else a
        ZipMap's (the output with ``class_labels``), else None."""
        wanted = self.probabilities_output
        return next((t for t in self.outputs if (t.name == wanted if wanted else t.class_labels)),
                    None)

    def column_labels(self, spec: TensorMeta) -> tuple[int | str, ...]:
        """The class labels of ``spec``'s columns, as the model gives them (int or str):
        its own (a ZipMap's), else the config's ``labels`` when it is the probabilities
        output, else none. The one rule /config and classification share."""
        if spec.class_labels:
            return spec.class_labels
        probs = self.probabilities_spec()
        return self.labels if probs is not None and probs.name == spec.name else ()

    @classmethod
    def from_answer(cls, data: ops.MetadataAnswer, versions: tuple[str, ...]) -> ModelMeta:
        """From the daemon's answer to the metadata op; ``versions``: the model's loaded
        versions (from the models op)."""
        def tensors(items: list[dict[str, Any]]) -> tuple[TensorMeta, ...]:
            return tuple(TensorMeta(t["name"], np.dtype(t["dtype"]), tuple(t["shape"]),
                                    tuple(t.get("class_labels", ()))) for t in items)
        cfg, policy = data.config, data.batching
        return cls(name=data.name, version=data.version, versions=versions,
                   inputs=tensors(data.inputs), outputs=tensors(data.outputs),
                   max_batch_size=int(cfg.get("max_batch_size", 1)),
                   labels=tuple(cfg.get("labels", ())),
                   label_output=cfg.get("label_output", ""),
                   probabilities_output=cfg.get("probabilities_output", ""),
                   platform=data.platform,
                   cache_enabled=bool(cfg.get("cache", {}).get("enabled", False)),
                   cache_ttl_s=int(cfg.get("cache", {}).get("ttl_s", 300)),
                   content_digest=data.content_digest,
                   description=str(cfg.get("description", "")),
                   batching=bool(policy.get("enabled", False)),
                   batch_rows=int(policy.get("max_batch_size", 0)),
                   queue_delay_us=int(policy.get("max_queue_delay_us", 0)),
                   instances=int(policy.get("instances", 1)))


def dtype_name(dtype: np.dtype) -> str:
    """What a client calls a dtype: ``string`` for the object dtype of string tensors."""
    return "string" if dtype.kind == "O" else dtype.name


def batch_limit(meta: ModelMeta, max_rows: int) -> int:
    return min(meta.max_batch_size, max_rows)


def check_tensors(meta: ModelMeta, inputs: list[tuple[str, np.ndarray]],
                  max_rows: int) -> list[tuple[str, np.ndarray]]:
    """Check names, dtypes, shapes, batch bound and finiteness; return the inputs."""
    specs = {t.name: t for t in meta.inputs}
    seen: set[str] = set()
    batch: int | None = None
    for i, (name, arr) in enumerate(inputs):
        field = f"inputs[{i}]"
        spec = specs.get(name)
        if spec is None:
            raise InvalidInput(f"{field}.name", f"model {meta.name!r} has no input {name!r} "
                                                f"(inputs: {', '.join(specs)})")
        if name in seen:
            raise InvalidInput(f"{field}.name", f"input {name!r} given twice")
        seen.add(name)
        _check_one(spec, arr, field)
        batch = _check_batch(spec, arr, field, batch, batch_limit(meta, max_rows))
        check_finite(arr, f"{field}.data")
    missing = [n for n in specs if n not in seen]
    if missing:
        raise InvalidInput("inputs", f"missing input {missing[0]!r} "
                                     f"(model {meta.name!r} needs {', '.join(specs)})")
    return inputs


def _check_one(spec: TensorMeta, arr: np.ndarray, field: str) -> None:
    if arr.dtype != spec.dtype:
        raise InvalidInput(f"{field}.datatype", f"{dtype_name(arr.dtype)} given, input "
                                                f"{spec.name!r} takes {dtype_name(spec.dtype)}")
    if arr.ndim != len(spec.shape):
        raise InvalidInput(f"{field}.shape", f"{list(arr.shape)} has rank {arr.ndim}, input "
                                             f"{spec.name!r} takes shape {_fmt(spec.shape)}")
    for d, (got, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
        if want >= 0 and got != want:
            raise InvalidInput(f"{field}.shape", f"dimension {d} is {got}, input "
                                                 f"{spec.name!r} takes shape {_fmt(spec.shape)}")


def _check_batch(spec: TensorMeta, arr: np.ndarray, field: str, batch: int | None,
                 limit: int) -> int | None:
    if not spec.shape or spec.shape[0] >= 0:
        return batch
    rows = arr.shape[0]
    if rows == 0:
        raise InvalidInput(f"{field}.shape", "batch of 0 rows")
    if rows > limit:
        raise PayloadTooLarge(f"{field}.shape", f"batch of {rows} rows exceeds the limit of "
                                                f"{limit} for this model")
    if batch is not None and rows != batch:
        raise InvalidInput(f"{field}.shape", f"batch of {rows} rows, other inputs have {batch}")
    return rows


def check_finite(arr: np.ndarray, field: str) -> None:
    if arr.dtype.kind != "f" or arr.size == 0:
        return
    finite = np.isfinite(arr)
    if not finite.all():
        index = np.unravel_index(int(np.argmin(finite)), arr.shape)
        raise InvalidInput(field, f"non-finite value {arr[index]} at index {list(map(int, index))}")


def _fmt(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join("N" if d < 0 else str(d) for d in shape) + "]"


def instances_to_inputs(meta: ModelMeta, instances: Any,
                        max_rows: int) -> list[tuple[str, np.ndarray]]:
    """Turn the simple face's ``instances`` into the model's input tensors (see the
    module docstring for the row formats)."""
    if not isinstance(instances, list):
        raise InvalidInput("instances", "expected a list of rows")
    if not instances:
        raise InvalidInput("instances", "no rows given")
    limit = batch_limit(meta, max_rows)
    if len(instances) > limit:
        raise PayloadTooLarge("instances", f"{len(instances)} rows exceed the limit of {limit} "
                                           "for this model")
    for spec in meta.inputs:
        if spec.shape and spec.shape[0] >= 0 and len(instances) != spec.shape[0]:
            raise InvalidInput("instances", f"{len(instances)} rows given, input {spec.name!r} "
                                            f"takes exactly {spec.shape[0]}")
    columns = _columns(meta, instances)
    return [(spec.name, _stack(spec, columns[spec.name], "instances")) for spec in meta.inputs]


def instances_to_array(meta: ModelMeta, instances: Any, max_rows: int) -> tuple[str, np.ndarray]:
    """The single input tensor of a one-input model (:func:`instances_to_inputs`)."""
    if len(meta.inputs) != 1:
        raise InvalidInput("instances", f"model {meta.name!r} has {len(meta.inputs)} inputs; "
                                        "send rows as objects keyed by input name")
    return instances_to_inputs(meta, instances, max_rows)[0]


def _columns(meta: ModelMeta, instances: list[Any]) -> dict[str, list[Any]]:
    """The rows, checked, as one list per input: objects keyed by input name, or for a
    one-input model also plain rows."""
    alone = meta.inputs[0] if len(meta.inputs) == 1 else None
    if alone is not None and alone.shape[1:] != (1,) and dict not in set(map(type, instances)):
        # PERF: the common case (a one-input model, plain rows) as before named inputs
        row_shape, dtype = alone.shape[1:], alone.dtype
        for i, row in enumerate(instances):
            _check_row(row, row_shape, f"instances[{i}]", dtype)
        return {alone.name: instances}
    names = [spec.name for spec in meta.inputs]
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for i, row in enumerate(instances):
        field = f"instances[{i}]"
        if alone is not None and type(row) is not dict:  # a one-input model's plain row
            columns[alone.name].append(_row(alone, row, field))
            continue
        if type(row) is not dict:
            raise InvalidInput(field, f"expected an object keyed by input name: model "
                                      f"{meta.name!r} has {len(names)} inputs ({', '.join(names)})")
        unknown = [k for k in row if k not in columns]
        if unknown:
            raise InvalidInput(f"{field}.{unknown[0]}", f"model {meta.name!r} has no such input "
                                                        f"(inputs: {', '.join(names)})")
        for spec in meta.inputs:
            if spec.name not in row:
                raise InvalidInput(f"{field}.{spec.name}", "missing")
            columns[spec.name].append(_row(spec, row[spec.name], f"{field}.{spec.name}"))
    return columns


def _row(spec: TensorMeta, row: Any, field: str) -> Any:
    """One row of ``spec``'s input, type-checked; a bare scalar where the row shape
    is ``[1]`` becomes ``[scalar]``."""
    row_shape = spec.shape[1:]
    if row_shape == (1,) and type(row) is not list:
        _check_scalar(row, field, spec.dtype)
        return [row]
    _check_row(row, row_shape, field, spec.dtype)
    return row


def _stack(spec: TensorMeta, rows: list[Any], field: str) -> np.ndarray:
    """The rows as one array of ``spec``'s dtype and rank."""
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow -> inf, caught below
            arr = np.array(rows, dtype=spec.dtype)
    except (ValueError, OverflowError):
        arr = None
    if arr is None or arr.ndim != len(spec.shape):  # object arrays of ragged lists
        raise InvalidInput(field, f"rows of input {spec.name!r} have different lengths, or a "
                                  "value is out of range")
    check_finite(arr, field)
    return arr


def _check_row(row: Any, shape: tuple[int, ...], field: str, dtype: np.dtype) -> None:
    """Type-check one row without converting it (numpy would silently turn
    ``"1.5"`` or ``true`` into numbers)."""
    if not shape:
        _check_scalar(row, field, dtype)
        return
    if not isinstance(row, list):
        raise InvalidInput(field, f"expected a list of {shape[0] if shape[0] >= 0 else 'N'} values")
    if shape[0] >= 0 and len(row) != shape[0]:
        raise InvalidInput(field, f"{len(row)} values, the model takes {shape[0]}")
    if len(shape) == 1:
        if dtype.kind == "f" and set(map(type, row)) <= _FLOATS:
            return  # PERF: the common case, checked at C speed; the loop below names the field
        for j, x in enumerate(row):
            if dtype.kind != "f" or type(x) not in _SCALARS["f"]:
                _check_scalar(x, f"{field}[{j}]", dtype)
        return
    for j, sub in enumerate(row):
        _check_row(sub, shape[1:], f"{field}[{j}]", dtype)


_SCALARS = {"f": (float, int), "i": (int,), "u": (int,), "b": (bool,), "O": (str,)}
_FLOATS = frozenset(_SCALARS["f"])


def _check_scalar(x: Any, field: str, dtype: np.dtype) -> None:
    if type(x) not in _SCALARS.get(dtype.kind, ()):
        takes = "strings" if dtype.kind == "O" else f"{dtype.name} numbers"
        raise InvalidInput(field, f"{_json_type(x)} given, the model takes {takes}")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if not info.min <= x <= info.max:
            raise InvalidInput(field, f"{x} is out of range for {dtype.name}")


def _json_type(x: Any) -> str:
    return {bool: "a boolean", str: "a string", type(None): "null", list: "a list",
            dict: "an object", float: "a float", int: "an integer"}.get(type(x), type(x).__name__)
