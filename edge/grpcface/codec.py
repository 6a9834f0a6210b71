"""Tensors between Triton's gRPC messages and numpy: the gRPC twin of ``edge.v2codec``.

Usage::

    inputs, outputs = decode_infer_request(request, max_elements)  # -> Core.infer
    classes = requested_classes(request)  # -> Core.infer's classes
    response = encode_infer_response(result, request_id)

A request carries its input data either typed, in each ``inputs[i].contents``
(``fp32_contents``, ``int64_contents``, ``bytes_contents``, ...: the field of the
input's datatype), or raw, as ``raw_input_contents[i]`` for every input, in order
(little-endian, C order; a BYTES element is a u32 little-endian length then its
bytes, the layout of :func:`wire.messages.pack_strings`). Never both. FP16 travels
raw only (the protocol has no typed field for it). Answers are always raw
(``raw_output_contents``), as Triton's own server answers, and ``tritonclient``'s
``as_numpy`` reads them.

Every refusal is :class:`~edge.errors.InvalidInput` naming the field in the
request's terms (``inputs[1].datatype``, ``raw_input_contents[0]``);
too many elements is :class:`~edge.errors.PayloadTooLarge`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edge import classification
from edge.errors import InvalidInput, PayloadTooLarge
from edge.grpcface.proto import grpc_service_pb2 as pb
from edge.v2codec import V2_TO_NUMPY, numpy_to_v2
from wire.messages import MessageError, pack_strings, unpack_strings

# The typed contents field of each datatype (FP16: none, raw only).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ALL_FIELDS = tuple(sorted(set(CONTENTS_FIELD.values())))
_DATATYPES = ", ".join(sorted([*V2_TO_NUMPY, "BYTES"]))


def decode_infer_request(req: pb.ModelInferRequest, max_elements: int,
                         ) -> tuple[list[tuple[str, np.ndarray]], list[str] | None]:
    """The request's inputs as (name, array) and the outputs it asks for (None: all)."""
    raw = list(req.raw_input_contents)
    if raw and len(raw) != len(req.inputs):
        raise InvalidInput("raw_input_contents", f"{len(raw)} entries for {len(req.inputs)} "
                                                 "inputs; expected one per input, in order")
    if not req.inputs:
        raise InvalidInput("inputs", "empty; expected at least one input tensor")
    seen: set[str] = set()
    inputs, total = [], 0
    for i, tensor in enumerate(req.inputs):
        where = f"inputs[{i}]"
        if not tensor.name:
            raise InvalidInput(f"{where}.name", "missing")
        if tensor.name in seen:
            raise InvalidInput(f"{where}.name", f"input {tensor.name!r} given twice")
        seen.add(tensor.name)
        shape = _shape(tensor, where)
        total += math.prod(shape)
        if total > max_elements:
            raise PayloadTooLarge(f"{where}.shape", f"more than {max_elements} elements in all")
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"{where}.contents", "given with raw_input_contents; "
                                                        "send one or the other")
            arr = _from_raw(tensor.datatype, shape, raw[i], where, f"raw_input_contents[{i}]")
        else:
            arr = _from_contents(tensor, shape, where)
        inputs.append((tensor.name, arr))
    names = [o.name for o in req.outputs]
    for j, name in enumerate(names):
        if not name:
            raise InvalidInput(f"outputs[{j}].name", "missing")
        if name in names[:j]:  # as the REST face (edge/v2codec.py) refuses it
            raise InvalidInput(f"outputs[{j}].name", f"duplicate output name {name!r}")
    return inputs, names or None


def requested_classes(req: pb.ModelInferRequest) -> dict[str, int]:
    """Output name -> K of the outputs the request asks for as their top K classes
    (``parameters["classification"].int64_param``, what ``tritonclient.grpc``'s
    ``InferRequestedOutput(name, class_count=K)`` sends; edge/classification.py)."""
    classes: dict[str, int] = {}
    for j, output in enumerate(req.outputs):
        if classification.PARAMETER not in output.parameters:
            continue
        param = output.parameters[classification.PARAMETER]
        where = classification.field(j)
        if param.WhichOneof("parameter_choice") != "int64_param":
            raise InvalidInput(where, "expected int64_param (the number of classes)")
        classes[output.name] = classification.count(int(param.int64_param), where)
    return classes


def _shape(tensor: Any, where: str) -> tuple[int, ...]:
    shape = tuple(int(d) for d in tensor.shape)
    for j, d in enumerate(shape):
        if d < 0:
            raise InvalidInput(f"{where}.shape[{j}]", f"{d}: dimensions must not be negative")
    return shape


def _dtype(datatype: str, where: str) -> np.dtype:
    if datatype == "BYTES":
        return np.dtype(object)
    dtype = V2_TO_NUMPY.get(datatype)
    if dtype is None:
        raise InvalidInput(f"{where}.datatype", f"{datatype!r} is not one of {_DATATYPES}")
    return dtype


def _from_raw(datatype: str, shape: tuple[int, ...], data: bytes, where: str,
              field: str) -> np.ndarray:
    dtype = _dtype(datatype, where)
    count = math.prod(shape)
    if dtype.kind == "O":
        try:
            return unpack_strings(data, count, field).reshape(shape)
        except MessageError as exc:
            raise InvalidInput(field, str(exc).removeprefix(f"{field}: ")) from None
    if len(data) != count * dtype.itemsize:
        raise InvalidInput(field, f"{len(data)} bytes; shape {list(shape)} of {datatype} "
                                  f"needs {count * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _from_contents(tensor: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    dtype = _dtype(tensor.datatype, where)
    wanted = CONTENTS_FIELD.get(tensor.datatype)
    given = [f for f in _ALL_FIELDS if len(getattr(tensor.contents, f))]
    if wanted is None:
        raise InvalidInput(f"{where}.contents", f"{tensor.datatype} travels in "
                                                "raw_input_contents only")
    if given and given != [wanted]:
        other = next(f for f in given if f != wanted)
        raise InvalidInput(f"{where}.contents.{other}", f"{tensor.datatype} data goes in "
                                                        f"contents.{wanted}")
    values = getattr(tensor.contents, wanted)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(f"{where}.contents.{wanted}",
                           f"{len(values)} values; shape {list(shape)} needs {count}")
    if dtype.kind == "O":
        return _strings(values, f"{where}.contents.{wanted}").reshape(shape)
    if dtype.kind in "iu" and dtype.itemsize < 8:  # int_contents / uint_contents narrowed
        wide = np.asarray(values, dtype=np.int64)
        info = np.iinfo(dtype)
        bad = np.flatnonzero((wide < info.min) | (wide > info.max))
        if bad.size:
            k = int(bad[0])
            raise InvalidInput(f"{where}.contents.{wanted}[{k}]",
                               f"{values[k]} is out of range for {tensor.datatype}")
    return np.asarray(values, dtype=dtype).reshape(shape)


def _strings(values: Any, field: str) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for k, v in enumerate(values):
        try:
            out[k] = v.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{field}[{k}]", f"not UTF-8: {exc.reason}") from None
    return out


def encode_infer_response(model: str, version: str, request_id: str,
                          outputs: list[tuple[str, np.ndarray]]) -> pb.ModelInferResponse:
    """The answer, every output raw (see the module docstring)."""
    resp = pb.ModelInferResponse(model_name=model, model_version=version, id=request_id)
    for name, arr in outputs:
        datatype = numpy_to_v2(arr.dtype)
        resp.outputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        if datatype == "BYTES":
            resp.raw_output_contents.append(pack_strings(arr))
        else:
            little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
            resp.raw_output_contents.append(np.ascontiguousarray(little).tobytes())
    return resp
