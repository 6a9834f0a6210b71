"""Open Inference Protocol (KServe V2) infer bodies: decode requests, encode responses.

Pure functions over bytes and numpy arrays; no HTTP. The transport hands in the body and
the ``Inference-Header-Content-Length`` header, and sends back what
:func:`encode_infer_response` returns.

Body layout (Triton's binary tensor data extension)::

    +-------------------------------+---------------+---------------+-----
    | JSON header                   | tensor 0 data | tensor 1 data | ...
    +-------------------------------+---------------+---------------+-----
    |<-- Inference-Header-Content-Length -->|

Without the header the whole body is JSON and every tensor carries ``data``. With it,
each tensor whose ``parameters.binary_data_size`` is set takes that many bytes from the
remainder, in tensor order; the sizes add up to the remainder exactly. Tensor bytes are
little-endian, row-major, unpadded; a BOOL is one byte, 0 or 1; a BYTES element is a
4-byte little-endian length followed by its bytes.

Which outputs come back binary: an output named in ``outputs`` is binary when its
``parameters.binary_data`` is true, or, when that is absent, when the request's
``parameters.binary_data_output`` is true. With no ``outputs`` (tritonclient's default,
which then sets ``binary_data_output: true``) every model output is returned, binary iff
``binary_data_output``. An output whose ``parameters.classification`` is K (Triton's
classification extension, edge/classification.py) comes back as its top K classes, a
BYTES tensor, binary or JSON by the same rule.

Decisions:

- Tensors are numeric, BOOL or BYTES, in and out. A BYTES tensor decodes to a numpy
  object array of ``str`` (ONNX's ``tensor(string)``): every element must be UTF-8, in
  JSON a string (a number is refused, as a string is in a numeric tensor), in binary
  data ``prod(shape)`` length-prefixed elements filling its ``binary_data_size``
  exactly (:func:`wire.messages.unpack_strings`, the same layout as the daemon
  protocol's). A BYTES output's element that is not UTF-8 cannot exist: the daemon
  protocol carries only UTF-8.
- ``max_body_elements`` bounds the numeric elements a request declares, before any is
  decoded; a BYTES tensor counts its bytes (4 per element plus its UTF-8 bytes), so a
  few long strings weigh what they cost.
- Decoded arrays are read-only. Binary inputs are views into the body (no copy) unless
  the view is misaligned for its dtype, in which case they are copied once so that every
  consumer gets an aligned array.
- JSON input elements must match the datatype exactly: booleans for BOOL, integers for
  INT*/UINT* (within range), numbers but not booleans for FP* (finite in the target type).
  NaN/Infinity literals are not JSON; the parser refuses them (binary inputs carry them).
- Non-finite floats in a JSON-rendered output are written as ``null`` (orjson's choice,
  valid JSON); tritonclient reads ``null`` back as NaN, so +-Inf reach it as NaN. Clients
  that need them exact ask for binary outputs, as tritonclient does by default.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import orjson

from edge import classification
from edge.errors import InvalidInput, PayloadTooLarge
from wire.messages import MessageError, pack_strings, unpack_strings

HEADER_LENGTH_HEADER = "Inference-Header-Content-Length"

V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_NUMPY_TO_V2 = {dtype: name for name, dtype in V2_TO_NUMPY.items()}
BYTES = np.dtype(object)  # a decoded BYTES tensor: an object array of str

# JSON element types accepted per dtype kind (exact types: a bool is not an int here).
_JSON_TYPES: dict[str, frozenset[type]] = {
    "b": frozenset({bool}),
    "i": frozenset({int}),
    "u": frozenset({int}),
    "f": frozenset({int, float}),
    "O": frozenset({str}),
}
_WANTED = {"b": "a boolean", "i": "an integer", "u": "an integer", "f": "a number",
           "O": "a string"}
_JSON_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string",
               type(None): "null", list: "array", dict: "object"}


def numpy_to_v2(dtype: np.dtype | type) -> str:
    """The V2 datatype name of a numpy dtype (any byte order). Strings and objects are
    BYTES. Raises ``ValueError`` for a dtype V2 cannot carry (a server-side fault)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OUS":
        return "BYTES"
    name = _NUMPY_TO_V2.get(dtype.newbyteorder("<"))
    if name is None:
        raise ValueError(f"numpy dtype {dtype} has no V2 datatype")
    return name


@dataclass(frozen=True)
class RequestedOutput:
    """One entry of the request's ``outputs``: its name, whether to return it binary, and
    its top K classes instead of its values when ``classes`` (the classification
    extension's K, edge/classification.py) is not 0."""

    name: str
    binary: bool
    classes: int = 0


@dataclass
class InferRequest:
    """A decoded infer request. ``inputs`` keeps request order; each array has the
    request's shape and the datatype's dtype and is read-only. ``outputs`` is None when
    the client named no outputs (return them all)."""

    id: str | None
    inputs: list[tuple[str, np.ndarray]]
    outputs: list[RequestedOutput] | None
    binary_output_default: bool
    parameters: dict = field(default_factory=dict)

    @property
    def classes(self) -> dict[str, int]:
        """Output name -> K of the outputs asked for as classifications (``Core.infer``'s
        ``classes``)."""
        return {o.name: o.classes for o in self.outputs or () if o.classes}

    def wants_binary(self, name: str) -> bool:
        """Whether output ``name`` goes back binary; usable as ``encode_infer_response``'s
        ``binary`` argument."""
        for out in self.outputs or ():
            if out.name == name:
                return out.binary
        return self.binary_output_default


@dataclass
class _InputSpec:
    field: str
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    count: int
    binary_size: int | None
    data: Any


def parse_header_length(value: str | None) -> int | None:
    """The ``Inference-Header-Content-Length`` header as an int (None when absent)."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise InvalidInput(HEADER_LENGTH_HEADER, f"must be a non-negative integer, got {value!r}")
    return int(text)


def decode_infer_request(
    body: bytes, header_length: int | None, *, max_body_elements: int
) -> InferRequest:
    """Decode a V2 infer request body. Raises ``InvalidInput`` naming the offending field,
    ``PayloadTooLarge`` when the inputs hold more than ``max_body_elements`` elements."""
    view = memoryview(body)
    if header_length is None:
        header, blob = view, view[len(view):]
    elif not 0 <= header_length <= len(body):
        reason = f"{header_length} is outside the body's {len(body)} bytes"
        raise InvalidInput(HEADER_LENGTH_HEADER, reason)
    else:
        header, blob = view[:header_length], view[header_length:]
    doc = _load_object(header)
    params = _parameters(doc.get("parameters"), "parameters")
    binary_default = _optional_bool(params, "binary_data_output", "parameters")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("id", "must be a string")
    specs = _input_specs(doc.get("inputs"), header_length is not None, max_body_elements)
    return InferRequest(
        id=request_id,
        inputs=_arrays(specs, blob),
        outputs=_requested_outputs(doc.get("outputs"), binary_default),
        binary_output_default=binary_default,
        parameters=params,
    )


def _load_object(header: memoryview) -> dict:
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput("body", f"not valid JSON: {exc}{utf8_error(header)}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("body", "must be a JSON object")
    return doc


def _parameters(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(where, "must be an object")
    return value


def _optional_bool(params: dict, key: str, where: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}.{key}", "must be true or false")
    return value


def _input_specs(inputs: Any, has_binary: bool, max_elements: int) -> list[_InputSpec]:
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("inputs", "required: a non-empty list of input tensors")
    specs: list[_InputSpec] = []
    seen: set[str] = set()
    total = 0
    for i, item in enumerate(inputs):
        spec = _input_spec(f"inputs[{i}]", item, has_binary)
        if spec.name in seen:
            raise InvalidInput(f"{spec.field}.name", f"duplicate input name {spec.name!r}")
        seen.add(spec.name)
        total += spec.count if spec.dtype != BYTES else _bytes_size(spec)
        if total > max_elements:
            raise PayloadTooLarge(
                f"{spec.field}.shape",
                f"inputs up to this one hold {total} elements, over the limit of {max_elements}",
            )
        specs.append(spec)
    return specs


def _input_spec(where: str, item: Any, has_binary: bool) -> _InputSpec:
    if not isinstance(item, dict):
        raise InvalidInput(where, "must be an object")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{where}.name", "required: a non-empty string")
    dtype = _datatype(item.get("datatype"), f"{where}.datatype")
    shape = _shape(item.get("shape"), f"{where}.shape")
    params = _parameters(item.get("parameters"), f"{where}.parameters")
    size = _binary_size(params, where, has_binary)
    if (size is None) != ("data" in item):
        reason = "required" if size is None else "must be absent with parameters.binary_data_size"
        raise InvalidInput(f"{where}.data", reason)
    return _InputSpec(where, name, shape, dtype, math.prod(shape), size, item.get("data"))


def _datatype(value: Any, where: str) -> np.dtype:
    if value is None:
        raise InvalidInput(where, "required")
    if value == "BYTES":
        return BYTES
    dtype = V2_TO_NUMPY.get(value) if isinstance(value, str) else None
    if dtype is None:
        known = ", ".join([*V2_TO_NUMPY, "BYTES"])
        raise InvalidInput(where, f"unknown datatype {value!r}; use one of {known}")
    return dtype


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if value is None:
        raise InvalidInput(where, "required")
    if not isinstance(value, list):
        raise InvalidInput(where, "must be a list of non-negative integers")
    for k, dim in enumerate(value):
        if type(dim) is not int or dim < 0:
            raise InvalidInput(where, f"dimension {k} is {dim!r}; must be a non-negative integer")
    return tuple(value)


def _binary_size(params: dict, where: str, has_binary: bool) -> int | None:
    if "shared_memory_region" in params:
        raise InvalidInput(f"{where}.parameters.shared_memory_region", "is not supported")
    size = params.get("binary_data_size")
    if size is None:
        return None
    where = f"{where}.parameters.binary_data_size"
    if type(size) is not int or size < 0:
        raise InvalidInput(where, "must be a non-negative integer")
    if not has_binary:
        raise InvalidInput(where, f"binary data needs the {HEADER_LENGTH_HEADER} header")
    return size


def _arrays(specs: list[_InputSpec], blob: memoryview) -> list[tuple[str, np.ndarray]]:
    arrays = []
    offset = 0
    for spec in specs:
        if spec.binary_size is None:
            arr = _from_json(spec)
        else:
            arr = _from_binary(spec, blob, offset)
            offset += spec.binary_size
        arr.flags.writeable = False
        arrays.append((spec.name, arr))
    if offset != len(blob):
        raise InvalidInput("body", f"{len(blob) - offset} bytes follow the last binary input")
    return arrays


def _from_binary(spec: _InputSpec, blob: memoryview, offset: int) -> np.ndarray:
    where = f"{spec.field}.parameters.binary_data_size"
    size = spec.binary_size
    if spec.dtype == BYTES:
        return _strings_from_binary(spec, blob, offset)
    expected = spec.count * spec.dtype.itemsize
    if size != expected:
        raise InvalidInput(where, f"is {size} bytes; shape {list(spec.shape)} needs {expected}")
    if offset + expected > len(blob):
        raise InvalidInput(where, f"needs {expected} bytes; only {len(blob) - offset} remain")
    arr = np.frombuffer(blob, dtype=spec.dtype, count=spec.count, offset=offset)
    if not arr.flags.aligned:
        arr = arr.copy()  # NOTE: one copy so consumers always get aligned data.
    if spec.dtype.kind == "b" and arr.size and arr.view(np.uint8).max() > 1:
        raise InvalidInput(spec.field, "binary BOOL data must hold only bytes 0 and 1")
    return arr.reshape(spec.shape)


def _strings_from_binary(spec: _InputSpec, blob: memoryview, offset: int) -> np.ndarray:
    size = spec.binary_size or 0
    if offset + size > len(blob):
        raise InvalidInput(f"{spec.field}.parameters.binary_data_size",
                           f"is {size} bytes; only {len(blob) - offset} remain")
    try:
        arr = unpack_strings(blob[offset:offset + size], spec.count, "data")
    except MessageError as exc:  # "data: element 3: ..." -> the input's own field
        raise InvalidInput(spec.field, f"binary BYTES {str(exc).removeprefix('data: ')} "
                                       f"(shape {list(spec.shape)})") from None
    return arr.reshape(spec.shape)


def _bytes_size(spec: _InputSpec) -> int:
    """What a BYTES input weighs against the limit: its binary size, or for JSON data
    4 bytes per element plus the UTF-8 bytes of its strings (the same measure)."""
    if spec.binary_size is not None:
        return max(spec.binary_size, 4 * spec.count)
    data = spec.data if isinstance(spec.data, list) else []
    try:
        flat = _flatten(data, "data")
    except InvalidInput:
        return 4 * spec.count  # reported with its field when decoded
    return 4 * max(spec.count, len(flat)) + sum(
        len(x.encode("utf-8", "surrogatepass")) for x in flat if type(x) is str)


def utf8_error(data: bytes | memoryview) -> str:
    """"; invalid UTF-8 at byte N" when ``data`` is not UTF-8 (JSON must be), else ""."""
    try:
        str(data, "utf-8")
    except UnicodeDecodeError as exc:
        return f"; invalid UTF-8 at byte {exc.start} (JSON text must be UTF-8)"
    return ""


def _from_json(spec: _InputSpec) -> np.ndarray:
    where = f"{spec.field}.data"
    flat = _flatten(spec.data, where)
    if len(flat) != spec.count:
        shape = list(spec.shape)
        raise InvalidInput(where, f"has {len(flat)} elements; shape {shape} needs {spec.count}")
    kind = spec.dtype.kind
    _check_types(flat, kind, where)
    if kind == "O":
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
        return arr.reshape(spec.shape)
    if kind in "iu":
        _check_int_range(flat, spec.dtype, where)
    with np.errstate(over="ignore"):
        arr = np.array(flat, dtype=spec.dtype)
    if kind == "f" and not np.isfinite(arr).all():
        i = int(np.flatnonzero(~np.isfinite(arr))[0])
        datatype = numpy_to_v2(spec.dtype)
        raise InvalidInput(where, f"element {i}: {flat[i]!r} is out of range for {datatype}")
    return arr.reshape(spec.shape)


def _check_types(flat: list, kind: str, where: str) -> None:
    allowed = _JSON_TYPES[kind]
    # PERF: one C-level pass over the element types; the slow scan runs only on error.
    if set(map(type, flat)) <= allowed:
        return
    i, bad = next((i, x) for i, x in enumerate(flat) if type(x) not in allowed)
    raise InvalidInput(where, f"element {i}: expected {_WANTED[kind]}, got {_describe(bad)}")


def _describe(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return f"{value!r} (a float, or an integer beyond 64 bits)"
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _flatten(data: Any, where: str) -> list:
    """Row-major elements of flat or nested ``data`` (nesting need not follow the shape)."""
    if not isinstance(data, list):
        raise InvalidInput(where, "must be a list")
    flat = data
    try:
        while flat and type(flat[0]) is list:
            flat = list(chain.from_iterable(flat))
    except TypeError:
        raise InvalidInput(where, "mixes nested lists and scalars") from None
    return flat


def _check_int_range(flat: list[int], dtype: np.dtype, where: str) -> None:
    if not flat:
        return
    info = np.iinfo(dtype)
    if info.min <= min(flat) and max(flat) <= info.max:
        return
    i = next(i for i, x in enumerate(flat) if not info.min <= x <= info.max)
    raise InvalidInput(
        where,
        f"element {i}: {flat[i]} is out of range for {numpy_to_v2(dtype)} [{info.min}, {info.max}]",
    )


def _requested_outputs(value: Any, binary_default: bool) -> list[RequestedOutput] | None:
    """Parsed ``outputs``; None when absent or empty (both mean: every output)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidInput("outputs", "must be a list")
    outputs: list[RequestedOutput] = []
    for i, item in enumerate(value):
        out = _requested_output(f"outputs[{i}]", item, binary_default)
        if any(o.name == out.name for o in outputs):
            raise InvalidInput(f"outputs[{i}].name", f"duplicate output name {out.name!r}")
        outputs.append(out)
    return outputs or None


def _requested_output(where: str, item: Any, binary_default: bool) -> RequestedOutput:
    if not isinstance(item, dict):
        raise InvalidInput(where, "must be an object")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{where}.name", "required: a non-empty string")
    params = _parameters(item.get("parameters"), f"{where}.parameters")
    if "shared_memory_region" in params:
        raise InvalidInput(f"{where}.parameters.shared_memory_region", "is not supported")
    binary = params.get("binary_data", binary_default)
    if not isinstance(binary, bool):
        raise InvalidInput(f"{where}.parameters.binary_data", "must be true or false")
    classes = 0
    if classification.PARAMETER in params:
        classes = classification.count(params[classification.PARAMETER],
                                       f"{where}.parameters.{classification.PARAMETER}")
    return RequestedOutput(name, binary, classes)


def encode_infer_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[tuple[str, np.ndarray]],
    binary: Callable[[str], bool] | set[str],
    parameters: dict | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Encode a V2 infer response: the body and the headers to add to it.

    ``binary`` says which outputs go as binary tensor data (a set of names, or a
    predicate such as ``InferRequest.wants_binary``). Raises ``ValueError`` for an array
    whose dtype V2 cannot carry or a BYTES element that is not UTF-8 in a JSON output.
    """
    wants = binary.__contains__ if isinstance(binary, set | frozenset) else binary
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    if parameters is not None:
        doc["parameters"] = parameters
    entries: list[dict[str, Any]] = []
    blobs: list[Any] = []
    for name, arr in outputs:
        datatype = numpy_to_v2(arr.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if wants(name):
            blob = _binary_blob(arr, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(arr, datatype)
        entries.append(entry)
    doc["outputs"] = entries
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, {"Content-Type": "application/json"}
    headers = {HEADER_LENGTH_HEADER: str(len(header)), "Content-Type": "application/octet-stream"}
    return b"".join([header, *blobs]), headers


def _binary_blob(arr: np.ndarray, datatype: str) -> bytes | np.ndarray:
    """Little-endian row-major bytes of ``arr`` (a uint8 view when no copy is needed)."""
    if datatype == "BYTES":
        return pack_strings(arr)
    little = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return little.reshape(-1).view(np.uint8)


def _json_data(arr: np.ndarray, datatype: str) -> list | np.ndarray:
    """Flat row-major data for JSON; numeric arrays go to orjson as numpy (native order)."""
    if datatype == "BYTES":
        return [e.decode() if isinstance(e, bytes) else str(e) for e in arr.reshape(-1).tolist()]
    return np.ascontiguousarray(arr.reshape(-1), dtype=arr.dtype.newbyteorder("="))
