"""Messages of the edge <-> daemon protocol (the payloads of :mod:`wire.frames`).

Request (kind ``REQUEST``)::

    {"id": int,              # chosen by the client, unique among its in-flight requests
     "op": str,              # one of wire.ops.OPS
     "deadline_ms": int,     # time budget left when sent; the daemon drops the
                             # request (DeadlineExceeded) if it cannot start in time
     ...op arguments}

Each op's arguments and answer are a class in :mod:`wire.ops` (the table of them is
its docstring), encoded and decoded there; this module holds the pieces they are
made of: tensors, the string layout and error data.

Tensor::

    {"name": str, "dtype": "<f4" (numpy little-endian type string),
     "shape": [int, ...], "data": bin (raw little-endian bytes, C order)}

A numeric or bool tensor's ``data`` is its elements' raw bytes, ``prod(shape) *
itemsize`` of them. A string tensor (ONNX ``tensor(string)``, V2 ``BYTES``) has
dtype :data:`STRING` (``"|O"``, numpy's object type string) and its ``data`` is
every element in C order, each as a 4-byte little-endian byte length followed by
that many bytes of UTF-8 (the layout of V2's binary BYTES data)::

    +-----------------+------------------+-----------------+------------------+--
    | len 0 (u32, LE) | element 0, UTF-8 | len 1 (u32, LE) | element 1, UTF-8 | ...
    +-----------------+------------------+-----------------+------------------+--

Exactly ``prod(shape)`` elements, nothing after the last; invalid UTF-8, a length
past the end of ``data`` or trailing bytes are a :class:`MessageError`. Decoded,
a string tensor is a numpy object array of ``str`` (what ONNX Runtime takes and
gives). :func:`pack_strings` and :func:`unpack_strings` are the layout's one
implementation (the edge's V2 codec and audit digest use them too).

Response (kind ``RESPONSE``), one per request, in any order::

    {"id": int, "ok": true,  "result": {...}}
    {"id": int, "ok": false, "error": {"type": str, "message": str, "retryable": bool,
                                       "field"?: str}}

Errors are plain data, never pickled (MLServer issue #881). ``type`` is one of
:data:`ERROR_TYPES`; ``retryable`` says whether the *same* request may succeed
if sent again later (overloaded, draining) as opposed to never (bad input).
``field``, when present, names the part of the request at fault (``input 'x'``,
``split``, ``model``) and ``message`` says what is wrong with it, so the edge
answers 400 naming the field without parsing the message.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

# dtypes a tensor may carry on the wire (ONNX's numeric + bool types).
DTYPES = frozenset(
    np.dtype(t).newbyteorder("<").str
    for t in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
              "uint32", "uint64", "float16", "float32", "float64")
)

STRING = "|O"  # dtype of a string tensor on the wire (see the module docstring)
_LENGTH = struct.Struct("<I")  # a string element's byte length

NOT_FOUND = "NotFound"
INVALID_INPUT = "InvalidInput"
OVERLOADED = "Overloaded"
DRAINING = "Draining"
DEADLINE_EXCEEDED = "DeadlineExceeded"
INFERENCE_FAILED = "InferenceFailed"
PROTOCOL_ERROR = "ProtocolError"
INTERNAL = "Internal"
RESULT_TOO_LARGE = "ResultTooLarge"  # the answer would exceed the frame limit
ERROR_TYPES = (NOT_FOUND, INVALID_INPUT, OVERLOADED, DRAINING, DEADLINE_EXCEEDED,
               INFERENCE_FAILED, PROTOCOL_ERROR, INTERNAL, RESULT_TOO_LARGE)
RETRYABLE = frozenset({OVERLOADED, DRAINING})


class MessageError(ValueError):
    """A message is well-framed but its content is malformed (missing field,
    wrong type, a tensor whose bytes do not match its dtype and shape).
    ``field``, when given, names the part at fault (``model``, ``result.models[0].name``)
    and ``reason`` says what is wrong with it; ``str()`` is both."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.reason, self.field = reason, field


@dataclass
class RemoteError(Exception):
    """An error the daemon answered with, as data; ``field`` names the part of the
    request at fault (an input, ``split``, ``model``) when there is one."""

    type: str
    message: str
    retryable: bool
    field: str | None = None

    def __str__(self) -> str:
        return f"{self.type}: {self.field + ': ' if self.field else ''}{self.message}"

    def to_wire(self) -> dict[str, Any]:
        """The error data (see the module docstring); :meth:`from_wire` of it is equal."""
        data: dict[str, Any] = {"type": self.type, "message": self.message,
                                "retryable": self.retryable}
        if self.field:
            data["field"] = self.field
        return data

    @classmethod
    def from_wire(cls, err: Any) -> RemoteError:
        """From a response's ``error`` data (see the module docstring); never raises."""
        err = err if isinstance(err, dict) else {}
        field = err.get("field")
        return cls(str(err.get("type", INTERNAL)), str(err.get("message", "")),
                   bool(err.get("retryable", False)),
                   field if isinstance(field, str) and field else None)


def error(type_: str, message: str, field: str | None = None) -> dict[str, Any]:
    """A response's ``error`` data; ``field``, if any, names the part of the request
    at fault, and ``message`` then says what is wrong with it."""
    data: dict[str, Any] = {"type": type_, "message": message, "retryable": type_ in RETRYABLE}
    if field:
        data["field"] = field
    return data


# PERF: the dtype of each wire string, and the wire string of each dtype met so far,
# built once (np.dtype() and newbyteorder() cost microseconds on every tensor).
_WIRE_DTYPES: dict[str, np.dtype] = {text: np.dtype(text) for text in DTYPES}
_LE: dict[np.dtype, str] = {}


def encode_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    """The wire map of a tensor. Raises :class:`MessageError` for a dtype that cannot
    travel or a string tensor holding something other than ``str``/UTF-8 bytes."""
    arr = np.asarray(array)  # NOTE: not ascontiguousarray, which turns 0-d into 1-d
    if arr.dtype.kind in "OUST":
        return {"name": name, "dtype": STRING, "shape": list(arr.shape),
                "data": pack_strings(arr)}
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")
    dtype = _le(arr.dtype)
    if arr.dtype.str != dtype:
        arr = arr.astype(dtype)
    return {"name": name, "dtype": dtype, "shape": list(arr.shape), "data": arr.tobytes()}


def _le(dtype: np.dtype) -> str:
    text = _LE.get(dtype)
    if text is None:
        text = dtype.newbyteorder("<").str
        if text not in DTYPES:
            raise MessageError(f"dtype {dtype} cannot travel on the wire")
        _LE[dtype] = text
    return text


def decode_tensor(obj: Any, where: str = "tensor") -> tuple[str, np.ndarray]:
    """Return ``(name, array)``; the array is a read-only view over the message bytes."""
    if not isinstance(obj, dict):
        raise MessageError(f"{where}: expected a map")
    name, dtype, shape, data = obj.get("name"), obj.get("dtype"), obj.get("shape"), obj.get("data")
    if not isinstance(name, str):
        raise MessageError(f"{where}.name: expected a string")
    dt = _WIRE_DTYPES.get(dtype) if isinstance(dtype, str) else None
    if dt is None and dtype != STRING:
        raise MessageError(f"{where}.dtype: unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not _dims(shape):
        raise MessageError(f"{where}.shape: expected a list of non-negative integers")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MessageError(f"{where}.data: expected raw bytes")
    if dt is None:
        arr = unpack_strings(data, math.prod(shape), f"{where}.data").reshape(shape)
        arr.flags.writeable = False
        return name, arr
    expected = math.prod(shape) * dt.itemsize  # Python ints: no overflow
    if len(data) != expected:
        raise MessageError(f"{where}.data: {len(data)} bytes, shape {shape} of {dtype} "
                           f"needs {expected}")
    return name, np.frombuffer(data, dtype=dt).reshape(shape)


def _dims(shape: list[Any]) -> bool:
    for d in shape:
        if type(d) is not int or d < 0:
            return False
    return True


def decode_tensors(objs: Any, where: str) -> list[tuple[str, np.ndarray]]:
    if not isinstance(objs, list):
        raise MessageError(f"{where}: expected a list of tensors")
    return [decode_tensor(o, f"{where}[{i}]") for i, o in enumerate(objs)]


def pack_strings(arr: np.ndarray) -> bytes:
    """The string layout of ``arr``'s elements in C order (see the module docstring).
    Elements may be ``str`` or bytes (sent as they are: the receiver checks UTF-8).
    Raises :class:`MessageError` for any other element or a str UTF-8 cannot encode."""
    parts: list[bytes] = []
    pack = _LENGTH.pack
    for i, element in enumerate(np.asarray(arr).reshape(-1).tolist()):
        if isinstance(element, str):
            try:
                raw = element.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise MessageError(f"string element {i} cannot be UTF-8: {exc.reason}") from None
        elif isinstance(element, bytes):
            raw = element
        else:
            raise MessageError(f"dtype {arr.dtype} cannot travel on the wire: element {i} "
                               f"is a {type(element).__name__}, not a string")
        parts += (pack(len(raw)), raw)
    return b"".join(parts)


def unpack_strings(data: bytes | bytearray | memoryview, count: int,
                   where: str = "data") -> np.ndarray:
    """``count`` length-prefixed UTF-8 elements of ``data`` as a 1-d object array of
    ``str``. Raises :class:`MessageError` naming ``where`` and the element for a
    length past the end, invalid UTF-8, too few elements or bytes left over."""
    out, end = unpack_strings_from(data, 0, count, where)
    if end != len(memoryview(data).cast("B")):
        raise MessageError(f"{where}: {len(memoryview(data).cast('B')) - end} bytes follow "
                           f"the last of the {count} elements")
    return out


def unpack_strings_from(data: bytes | bytearray | memoryview, offset: int, count: int,
                        where: str = "data") -> tuple[np.ndarray, int]:
    """``count`` elements starting at ``offset`` (more bytes may follow): the array and
    the offset after the last element. Raises as :func:`unpack_strings`."""
    view = memoryview(data).cast("B")
    size = len(view)
    if 4 * count > size - offset:  # NOTE: before allocating: a hostile shape must not make us
        raise MessageError(f"{where}: {size - offset} bytes cannot hold the {count} elements "
                           f"of the shape (each needs at least its 4-byte length prefix)")
    out = np.empty(count, dtype=object)
    for i in range(count):
        if offset + 4 > size:
            raise MessageError(f"{where}: element {i}: its 4-byte length prefix is past the "
                               f"end of the {size} bytes (shape needs {count} elements)")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > size:
            raise MessageError(f"{where}: element {i}: length {length} runs past the end of "
                               f"the {size} bytes by {offset + length - size}")
        try:
            out[i] = str(view[offset:offset + length], "utf-8")
        except UnicodeDecodeError as exc:
            raise MessageError(f"{where}: element {i} is not valid UTF-8 ({exc.reason} at "
                               f"byte {exc.start})") from None
        offset += length
    return out, offset
