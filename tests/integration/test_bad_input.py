"""Bad input gets a clear 4xx naming the field, through HAProxy, never a 500."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from tests.httpx_lite import post_json, request

ROW = [0.0] * 64


@pytest.fixture(scope="module")
def addr(stack) -> str:
    return stack.settings.haproxy.bind


def v2(addr: str, inputs: list[dict], path: str = "/v2/models/digits/infer", **extra):
    return post_json(addr, path, {"inputs": inputs, **extra})


def assert_error(ans, status: int, *words: str) -> None:
    assert ans.status == status, (ans.status, ans.body)
    message = ans.json()["error"]
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("doc, field", [
    ({"instances": [[1.0, 2.0]]}, "instances[0]"),
    ({"instances": [ROW, ROW[:63]]}, "instances[1]"),
    ({"instances": [ROW[:10] + ["x"] + ROW[11:]]}, "instances[0][10]"),
    ({"instances": [ROW[:3] + [True] + ROW[4:]]}, "instances[0][3]"),
    ({"instances": [ROW[:5] + [None] + ROW[6:]]}, "instances[0][5]"),
    ({"instances": [ROW[:5] + [1e39] + ROW[6:]]}, "instances"),
    ({"instances": []}, "instances"),
    ({"instances": "nope"}, "instances"),
    ({"rows": [ROW]}, "instances"),
    ({"instances": [ROW], "extra": 1}, "extra"),
    ([ROW], "body"),
])
def test_simple_face_rejections_name_the_field(addr, doc, field):
    assert_error(post_json(addr, "/v1/models/digits/predict", doc), 400, field)


def test_malformed_and_empty_json(addr):
    assert_error(request(addr, "POST", "/v1/models/digits/predict", b'{"instances": [[1,'),
                 400, "body", "malformed JSON")
    assert_error(request(addr, "POST", "/v1/models/digits/predict", b""), 400, "body")
    assert_error(request(addr, "POST", "/v2/models/digits/infer", b"{not json"), 400, "body")


def test_huge_batch_is_413_naming_the_limit(addr):
    assert_error(post_json(addr, "/v1/models/digits/predict", {"instances": [ROW] * 300}),
                 413, "instances", "256")
    ans = v2(addr, [{"name": "input", "shape": [300, 64], "datatype": "FP32",
                     "data": [0.0] * (300 * 64)}])
    assert_error(ans, 413, "inputs[0].shape", "300")


def test_body_over_haproxy_limit_is_refused_before_the_edge(make_stack):
    stack = make_stack(FALCON_HAPROXY_MAX_BODY_BYTES="2048", FALCON_EDGE_WORKERS="1")
    addr = stack.settings.haproxy.bind
    assert_error(post_json(addr, "/v1/models/digits/predict", {"instances": [ROW] * 20}),
                 413, "body")
    assert post_json(addr, "/v1/models/digits/predict", {"instances": [ROW]}).status == 200


def test_body_over_edge_limit(make_stack):
    stack = make_stack(FALCON_EDGE_MAX_BODY_BYTES="4096", FALCON_EDGE_WORKERS="1")
    ans = post_json(stack.settings.haproxy.bind, "/v1/models/digits/predict",
                    {"instances": [ROW] * 30})
    assert_error(ans, 413, "body", "4096")


@pytest.mark.parametrize("inp, field", [
    ({"name": "input", "shape": [1, 63], "datatype": "FP32", "data": [0.0] * 63}, "inputs[0].shape"),
    ({"name": "input", "shape": [64], "datatype": "FP32", "data": [0.0] * 64}, "inputs[0].shape"),
    ({"name": "input", "shape": [1, 64], "datatype": "INT64", "data": [0] * 64}, "inputs[0].datatype"),
    ({"name": "input", "shape": [1, 64], "datatype": "FP99", "data": [0] * 64}, "inputs[0].datatype"),
    ({"name": "input", "shape": [2, 64], "datatype": "FP32", "data": [0.0] * 64}, "inputs[0]"),
    ({"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}, "inputs[0].name"),
    ({"shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}, "inputs[0].name"),
])
def test_v2_rejections_name_the_field(addr, inp, field):
    assert_error(v2(addr, [inp]), 400, field)


def test_v2_unknown_output_and_missing_input(addr):
    inp = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}
    assert_error(v2(addr, [inp], outputs=[{"name": "logits"}]), 400, "outputs[0].name", "logits")
    assert_error(v2(addr, [], ), 400, "inputs")
    multi = [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4}]
    assert_error(v2(addr, multi, "/v2/models/multi/infer"), 400, "inputs", "missing")


def test_nan_in_binary_tensor_is_rejected_with_its_index(addr):
    arr = np.zeros((2, 64), dtype=np.float32)
    arr[1, 5] = np.nan
    header = json.dumps({"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": arr.nbytes}}]}).encode()
    ans = request(addr, "POST", "/v2/models/digits/infer", header + arr.tobytes(),
                  {"Inference-Header-Content-Length": str(len(header))})
    assert_error(ans, 400, "inputs[0].data", "[1, 5]")


def test_binary_size_mismatch(addr):
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 256}}]}).encode()
    ans = request(addr, "POST", "/v2/models/digits/infer", header + struct.pack("<10f", *range(10)),
                  {"Inference-Header-Content-Length": str(len(header))})
    assert ans.status == 400 and "binary" in ans.json()["error"]
    ans = request(addr, "POST", "/v2/models/digits/infer", header,
                  {"Inference-Header-Content-Length": "abc"})
    assert_error(ans, 400, "Inference-Header-Content-Length")


def test_unknown_model_and_version_are_404(addr):
    assert_error(post_json(addr, "/v1/models/nope/predict", {"instances": [ROW]}), 404, "nope")
    assert_error(request(addr, "GET", "/v2/models/nope"), 404, "nope")
    assert_error(post_json(addr, "/v1/models/digits/versions/7/predict", {"instances": [ROW]}),
                 404, "7")
    assert request(addr, "GET", "/v2/nowhere").status == 404


def test_bad_timeout_header_and_wrong_method(addr):
    ans = request(addr, "POST", "/v1/models/digits/predict", json.dumps({"instances": [ROW]}),
                  {"X-Request-Timeout-Ms": "soon"})
    assert_error(ans, 400, "X-Request-Timeout-Ms")
    assert request(addr, "GET", "/v1/models/digits/predict").status == 405
    assert "error" in request(addr, "GET", "/v1/models/digits/predict").json()
