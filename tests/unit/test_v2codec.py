"""edge.v2codec against the bytes the stock tritonclient[http] writes and reads."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient

from edge.errors import InvalidInput, PayloadTooLarge
from edge.v2codec import (
    V2_TO_NUMPY,
    RequestedOutput,
    decode_infer_request,
    encode_infer_response,
    numpy_to_v2,
    parse_header_length,
)

LIMIT = 1_000_000
DATATYPES = sorted(V2_TO_NUMPY)


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """Values that exercise each type's range (extremes, negatives, fractions)."""
    dtype = V2_TO_NUMPY[datatype]
    n = int(np.prod(shape))
    if dtype.kind == "b":
        values = np.arange(n) % 3 == 0
    elif dtype.kind in "iu":
        lo, hi = int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)
        values = np.array([lo + (hi - lo) * k // (n - 1) for k in range(n)], dtype=dtype)
    else:
        values = (np.linspace(-3.0, 3.0, n) / 7).astype(dtype)
    return values.astype(dtype).reshape(shape)


def client_body(inputs, outputs=None, request_id=""):
    """What tritonclient would POST: (body, Inference-Header-Content-Length or None)."""
    return httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id=request_id
    )


def client_input(name: str, arr: np.ndarray, binary: bool) -> httpclient.InferInput:
    inp = httpclient.InferInput(name, list(arr.shape), numpy_to_v2(arr.dtype))
    return inp.set_data_from_numpy(arr, binary_data=binary)


def decode(body: bytes, header_length: int | None = None, limit: int = LIMIT):
    return decode_infer_request(body, header_length, max_body_elements=limit)


def decode_json(doc: dict):
    return decode(orjson.dumps(doc))


def client_result(body: bytes, headers: dict[str, str]) -> httpclient.InferResult:
    length = headers.get("Inference-Header-Content-Length")
    return httpclient.InferResult.from_response_body(
        body, verbose=False, header_length=None if length is None else int(length)
    )


def expect_invalid(field: str, fn, *args, error=InvalidInput, **kwargs) -> InvalidInput:
    with pytest.raises(error) as info:
        fn(*args, **kwargs)
    assert info.value.field == field, str(info.value)
    assert field in str(info.value)
    return info.value


# --- requests written by tritonclient --------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_decodes_tritonclient_request_for_every_datatype(datatype, binary):
    arr = sample(datatype)
    body, length = client_body([client_input("x", arr, binary)], request_id="r-1")
    assert (length is not None) == binary
    req = decode(body, length)
    (name, got), = req.inputs
    assert name == "x" and req.id == "r-1"
    assert got.dtype == V2_TO_NUMPY[datatype] and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)
    assert not got.flags.writeable and got.flags.aligned


def test_mixed_json_and_binary_inputs_keep_request_order():
    a, b, c = sample("FP32", (4, 5)), sample("INT64", (3,)), sample("UINT8", (2, 2))
    inputs = [client_input("a", a, True), client_input("b", b, False), client_input("c", c, True)]
    body, length = client_body(inputs)
    req = decode(body, length)
    assert [n for n, _ in req.inputs] == ["a", "b", "c"]
    for (_, got), want in zip(req.inputs, (a, b, c), strict=True):
        np.testing.assert_array_equal(got, want)


def test_tritonclient_default_asks_for_every_output_in_binary():
    body, length = client_body([client_input("x", sample("FP32"), True)])
    req = decode(body, length)
    assert req.outputs is None
    assert req.binary_output_default is True
    assert req.parameters == {"binary_data_output": True}
    assert req.wants_binary("anything")


def test_requested_outputs_follow_binary_data_parameter():
    outputs = [httpclient.InferRequestedOutput("label", binary_data=False),
               httpclient.InferRequestedOutput("probabilities")]
    body, length = client_body([client_input("x", sample("FP32"), False)], outputs)
    req = decode(body, length)
    assert req.outputs == [RequestedOutput("label", False), RequestedOutput("probabilities", True)]
    assert req.binary_output_default is False
    assert not req.wants_binary("label") and req.wants_binary("probabilities")


def test_binary_data_output_is_the_default_for_outputs_without_binary_data():
    outputs = [{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}]
    req = decode_json({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                       "parameters": {"binary_data_output": True}, "outputs": outputs})
    assert req.outputs == [RequestedOutput("a", True), RequestedOutput("b", False)]


def test_binary_input_is_a_view_when_aligned_and_an_aligned_copy_otherwise():
    arr = sample("FP64", (3, 3))
    body, length = client_body([client_input("x", arr, True)])
    for pad in range(8):  # shift the JSON header so the tensor lands on every offset
        padded = body[:length - 1] + b" " * pad + body[length - 1:]
        (_, got), = decode(padded, length + pad).inputs
        np.testing.assert_array_equal(got, arr)
        assert got.flags.aligned and not got.flags.writeable
        raw = np.frombuffer(padded, np.uint8)
        aligned_in_body = raw[length + pad:].ctypes.data % arr.itemsize == 0
        assert np.shares_memory(got, raw) == aligned_in_body


def test_nested_json_data_is_flattened_row_major():
    doc = {"inputs": [{"name": "x", "shape": [2, 2, 2], "datatype": "FP32",
                       "data": [[[1, 2], [3, 4]], [[5.5, 6], [7, 8]]]}]}
    (_, got), = decode_json(doc).inputs
    np.testing.assert_array_equal(got, np.array([1, 2, 3, 4, 5.5, 6, 7, 8], "f4").reshape(2, 2, 2))


def test_zero_sized_tensors_decode_in_json_and_binary():
    arr = np.zeros((0, 4), np.float32)
    for binary in (False, True):
        body, length = client_body([client_input("x", arr, binary)])
        (_, got), = decode(body, length).inputs
        assert got.shape == (0, 4)


def test_header_length_string_parsing():
    assert parse_header_length(None) is None
    assert parse_header_length(" 42 ") == 42
    for bad in ("-1", "abc", "", "4.2"):
        expect_invalid("Inference-Header-Content-Length", parse_header_length, bad)


# --- responses read by tritonclient ----------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_tritonclient_reads_encoded_response_for_every_datatype(datatype, binary):
    arr = sample(datatype, (3, 2))
    body, headers = encode_infer_response(model_name="m", model_version="2", request_id="r-9",
                                          outputs=[("y", arr)], binary={"y"} if binary else set())
    assert ("Inference-Header-Content-Length" in headers) == binary
    result = client_result(body, headers)
    got = result.as_numpy("y")
    assert got.dtype == arr.dtype and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("m", "2", "r-9")


def test_binary_response_layout_is_header_then_blobs_in_output_order():
    a, b, c = sample("FP32", (2, 2)), sample("INT8", (3,)), sample("BOOL", (2,))
    body, headers = encode_infer_response(model_name="m", model_version="1", request_id=None,
                                          outputs=[("a", a), ("b", b), ("c", c)],
                                          binary=lambda name: name != "b")
    assert headers["Content-Type"] == "application/octet-stream"
    length = int(headers["Inference-Header-Content-Length"])
    assert body[length:] == a.tobytes() + c.tobytes()
    header = orjson.loads(body[:length])
    assert "id" not in header
    assert header["outputs"][0] == {"name": "a", "datatype": "FP32", "shape": [2, 2],
                                    "parameters": {"binary_data_size": 16}}
    assert header["outputs"][1]["data"] == b.tolist()
    result = client_result(body, headers)
    for name, arr in (("a", a), ("b", b), ("c", c)):
        np.testing.assert_array_equal(result.as_numpy(name), arr)


def test_json_only_response_has_json_content_type_and_parameters():
    body, headers = encode_infer_response(model_name="m", model_version="1", request_id="q",
                                          outputs=[("y", sample("FP64"))], binary=set(),
                                          parameters={"cached": True})
    assert headers == {"Content-Type": "application/json"}
    assert orjson.loads(body)["parameters"] == {"cached": True}


def test_big_endian_and_non_contiguous_outputs_encode_little_endian_row_major():
    arr = np.arange(12, dtype=">i4").reshape(3, 4).T
    for binary in (set(), {"y"}):
        body, headers = encode_infer_response(model_name="m", model_version="1", request_id=None,
                                              outputs=[("y", arr)], binary=binary)
        np.testing.assert_array_equal(client_result(body, headers).as_numpy("y"), arr)


@pytest.mark.parametrize("binary", [set(), {"label"}], ids=["json", "binary"])
def test_bytes_outputs_reach_tritonclient(binary):
    labels = np.array([["cat", "dog"], ["émeu", ""]], dtype=object)
    body, headers = encode_infer_response(model_name="m", model_version="1", request_id=None,
                                          outputs=[("label", labels)], binary=binary)
    got = client_result(body, headers).as_numpy("label")
    as_text = [v.decode() if isinstance(v, bytes) else v for v in got.reshape(-1)]
    assert as_text == labels.reshape(-1).tolist() and got.shape == (2, 2)


def test_non_finite_json_output_is_null_and_reads_back_as_nan():
    arr = np.array([1.5, np.nan, np.inf, -np.inf], np.float32)
    body, headers = encode_infer_response(model_name="m", model_version="1", request_id=None,
                                          outputs=[("y", arr)], binary=set())
    assert orjson.loads(body)["outputs"][0]["data"] == [1.5, None, None, None]
    got = client_result(body, headers).as_numpy("y")
    assert got[0] == 1.5 and np.isnan(got[1:]).all()
    body, headers = encode_infer_response(model_name="m", model_version="1", request_id=None,
                                          outputs=[("y", arr)], binary={"y"})
    np.testing.assert_array_equal(client_result(body, headers).as_numpy("y"), arr)


def test_numpy_to_v2():
    assert numpy_to_v2(np.dtype(">f4")) == "FP32"
    assert numpy_to_v2(np.dtype(bool)) == "BOOL"
    assert numpy_to_v2(np.dtype("U3")) == "BYTES"
    with pytest.raises(ValueError):
        numpy_to_v2(np.dtype("complex64"))


# --- errors name the field --------------------------------------------------------------


def one_input(**overrides) -> dict:
    tensor = {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}
    tensor.update(overrides)
    return {"inputs": [tensor]}


@pytest.mark.parametrize(("overrides", "field"), [
    ({"data": [1, 2, 3]}, "inputs[0].data"),
    ({"datatype": "FP8"}, "inputs[0].datatype"),
    ({"datatype": "BYTES"}, "inputs[0].data"),
    ({"datatype": "BYTES", "data": ["a", "b", 3, "d"]}, "inputs[0].data"),
    ({"datatype": "BYTES", "data": ["a", "b", "c"]}, "inputs[0].data"),
    ({"shape": [2, -2]}, "inputs[0].shape"),
    ({"shape": [2, 2.0]}, "inputs[0].shape"),
    ({"shape": "2x2"}, "inputs[0].shape"),
    ({"data": [1, "2", 3, 4]}, "inputs[0].data"),
    ({"data": [1, None, 3, 4]}, "inputs[0].data"),
    ({"data": [1, True, 3, 4]}, "inputs[0].data"),
    ({"data": [[1, 2], 3, 4]}, "inputs[0].data"),
    ({"data": [1, 2, 3, 1e39]}, "inputs[0].data"),
    ({"datatype": "INT8", "data": [1, 2, 300, 4]}, "inputs[0].data"),
    ({"datatype": "UINT8", "data": [1, -1, 3, 4]}, "inputs[0].data"),
    ({"datatype": "INT32", "data": [1, 2.5, 3, 4]}, "inputs[0].data"),
    ({"datatype": "BOOL", "data": [True, 1, False, True]}, "inputs[0].data"),
    ({"name": ""}, "inputs[0].name"),
    ({"parameters": {"binary_data_size": 16}}, "inputs[0].parameters.binary_data_size"),
    ({"parameters": {"shared_memory_region": "r"}}, "inputs[0].parameters.shared_memory_region"),
])
def test_bad_json_input_names_the_field(overrides, field):
    expect_invalid(field, decode_json, one_input(**overrides))


@pytest.mark.parametrize("missing", ["name", "shape", "datatype", "data"])
def test_missing_input_field_is_named(missing):
    doc = one_input()
    del doc["inputs"][0][missing]
    expect_invalid(f"inputs[0].{missing}", decode_json, doc)


def test_element_errors_give_the_row_major_index():
    err = expect_invalid("inputs[0].data", decode_json, one_input(data=[[1, 2], [3, "x"]]))
    assert "element 3" in err.reason and "string" in err.reason
    err = expect_invalid("inputs[0].data", decode_json,
                         one_input(datatype="INT8", data=[[1, 2], [-129, 4]]))
    assert "element 2" in err.reason and "-129" in err.reason


def test_duplicate_input_and_output_names():
    doc = one_input()
    doc["inputs"].append(dict(doc["inputs"][0]))
    expect_invalid("inputs[1].name", decode_json, doc)
    doc = one_input()
    doc["outputs"] = [{"name": "y"}, {"name": "y"}]
    expect_invalid("outputs[1].name", decode_json, doc)


@pytest.mark.parametrize(("doc", "field"), [
    ({}, "inputs"),
    ({"inputs": []}, "inputs"),
    ({"inputs": {"x": 1}}, "inputs"),
    ({"inputs": [1]}, "inputs[0]"),
    ({**one_input(), "id": 7}, "id"),
    ({**one_input(), "parameters": []}, "parameters"),
    ({**one_input(), "parameters": {"binary_data_output": "yes"}}, "parameters.binary_data_output"),
    ({**one_input(), "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]},
     "outputs[0].parameters.binary_data"),
    ({**one_input(), "outputs": [{"parameters": {}}]}, "outputs[0].name"),
    *[({**one_input(), "outputs": [{"name": "x"}, {"name": "y", "parameters": {
        "classification": k}}]}, "outputs[1].parameters.classification")
      for k in (0, -2, 2.5, 3.0, "3", True, None, [3], {"k": 3})],
])
def test_bad_request_structure_names_the_field(doc, field):
    expect_invalid(field, decode_json, doc)


@pytest.mark.parametrize("body", [b"[1, 2]", b"not json", b'{"inputs": [NaN]}', b""])
def test_non_object_or_invalid_json_is_the_body(body):
    expect_invalid("body", decode, body)


def test_element_limit_is_payload_too_large():
    doc = one_input()
    doc["inputs"].append({"name": "z", "shape": [10**12], "datatype": "FP32", "data": []})
    expect_invalid("inputs[1].shape", decode, orjson.dumps(doc), limit=100, error=PayloadTooLarge)
    decode(orjson.dumps(one_input()), limit=4)
    expect_invalid("inputs[0].shape", decode, orjson.dumps(one_input()), limit=3,
                   error=PayloadTooLarge)


def binary_request(arr: np.ndarray) -> tuple[bytes, int]:
    return client_body([client_input("x", arr, True)])


@pytest.mark.parametrize("length", [-1, 10**6])
def test_header_length_out_of_range(length):
    body, _ = binary_request(sample("FP32"))
    expect_invalid("Inference-Header-Content-Length", decode, body, length)


def test_binary_size_mismatch_with_shape():
    arr = sample("FP32", (2, 3))
    inp = httpclient.InferInput("x", [2, 2], "FP32")
    inp._raw_data = arr.tobytes()  # a client that lies about the size of its tensor
    inp._parameters["binary_data_size"] = arr.nbytes
    body, length = client_body([inp])
    err = expect_invalid("inputs[0].parameters.binary_data_size", decode, body, length)
    assert "24" in err.reason and "16" in err.reason


def test_binary_data_shorter_than_announced():
    body, length = binary_request(sample("FP32"))
    expect_invalid("inputs[0].parameters.binary_data_size", decode, body[:-1], length)


def test_trailing_bytes_after_binary_data():
    body, length = binary_request(sample("FP32"))
    err = expect_invalid("body", decode, body + b"\0\0", length)
    assert "2 bytes" in err.reason


def test_binary_input_without_header_length():
    body, length = binary_request(sample("FP32"))
    header = body[:length]
    expect_invalid("inputs[0].parameters.binary_data_size", decode, header, None)


def test_binary_bool_must_be_zero_or_one():
    body, length = binary_request(np.array([True, False]))
    expect_invalid("inputs[0]", decode, body[:-1] + b"\x02", length)


def test_both_data_and_binary_data_size_is_ambiguous():
    body, length = binary_request(sample("FP32"))
    doc = orjson.loads(body[:length])
    doc["inputs"][0]["data"] = sample("FP32").ravel().tolist()
    header = orjson.dumps(doc)
    expect_invalid("inputs[0].data", decode, header + body[length:], len(header))


# --- BYTES (string) tensors ---------------------------------------------------------------

WORDS = np.array([["red", ""], ["caf\u00e9", "\u2615 tea"]], dtype=object)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_bytes_input_from_tritonclient_decodes_to_str_objects(binary):
    body, length = client_body([client_input("text", WORDS, binary)])
    [(name, arr)] = decode(body, length).inputs
    assert name == "text" and arr.dtype == object and arr.shape == (2, 2)
    assert arr.tolist() == WORDS.tolist() and all(type(e) is str for e in arr.flat)
    assert not arr.flags.writeable


def test_bytes_input_from_encoded_bytes_objects_in_binary():
    """tritonclient also takes numpy bytes (np.object_ of bytes): UTF-8 ones decode to str."""
    raw = np.array([b"abc", "\u00e9".encode()], dtype=np.object_)
    body, length = client_body([client_input("t", raw, True)])
    assert decode(body, length).inputs[0][1].tolist() == ["abc", "\u00e9"]


def bytes_request(blob: bytes, shape: list[int]) -> tuple[bytes, int]:
    header = orjson.dumps({"inputs": [{"name": "t", "datatype": "BYTES", "shape": shape,
                                       "parameters": {"binary_data_size": len(blob)}}]})
    return header + blob, len(header)


@pytest.mark.parametrize(("blob", "shape", "words"), [
    (b"\x09\0\0\0abc", [1], ["element 0", "length 9", "past the end"]),
    (b"\x01\0\0\0a\x01\0\0", [2], ["element 1", "length prefix"]),
    (b"\x01\0\0\0a", [2], ["cannot hold the 2 elements"]),
    (b"\x01\0\0\0a\x00\0\0\0", [1], ["4 bytes follow"]),
    (b"\x02\0\0\0\xc3\x28", [1], ["element 0", "not valid UTF-8"]),
], ids=["length-past-end", "prefix-past-end", "too-few", "too-many", "not-utf8"])
def test_malformed_binary_bytes_name_the_input(blob, shape, words):
    err = expect_invalid("inputs[0]", decode, *bytes_request(blob, shape))
    for word in words:
        assert word in err.reason, err.reason


def test_non_utf8_json_body_says_where():
    body = b'{"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "data": ["\xff"]}]}'
    err = expect_invalid("body", decode, body)
    assert f"invalid UTF-8 at byte {body.index(0xFF)}" in err.reason


def test_bytes_count_their_bytes_against_the_limit():
    """Two 600-byte strings weigh 1208, not 2 elements."""
    doc = {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [2], "data": ["x" * 600] * 2}]}
    expect_invalid("inputs[0].shape", decode, orjson.dumps(doc), limit=1000, error=PayloadTooLarge)
    assert decode(orjson.dumps(doc), limit=1208).inputs[0][1].shape == (2,)
    body, length = bytes_request(b"\x02\0\0\0ab" * 300, [300])
    expect_invalid("inputs[0].shape", decode, body, length, limit=1799, error=PayloadTooLarge)
    assert decode(body, length, limit=1800).inputs[0][1].shape == (300,)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_string_outputs_read_back_by_tritonclient(binary):
    body, headers = encode_infer_response(model_name="m", model_version="1", request_id=None,
                                          outputs=[("label", WORDS)],
                                          binary={"label"} if binary else set())
    got = client_result(body, headers).as_numpy("label")
    assert [e.decode() if isinstance(e, bytes) else e for e in got.flat] == list(WORDS.flat)
