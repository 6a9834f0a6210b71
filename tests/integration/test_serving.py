"""Predictions through the whole stack: HAProxy -> gunicorn/Falcon -> daemon.

Answers are compared with ONNX Runtime run in-process on the same model file
and the same rows: the platform must not change an answer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

from tests.httpx_lite import post_json, request
from tests.modelfactory import multi_io_expected, reference

ROOT = Path(__file__).resolve().parents[2]
DIGITS = np.load(ROOT / "tests" / "data" / "digits_test.npz")


@pytest.fixture(scope="module")
def addr(stack) -> str:
    return stack.settings.haproxy.bind


@pytest.fixture(scope="module")
def digits_ref(stack) -> dict[str, np.ndarray]:
    model = Path(stack.settings.daemon.model_repository) / "digits" / "1" / "model.onnx"
    return reference(model, {"input": DIGITS["X"]})


def test_simple_face_matches_in_process_onnxruntime_on_the_test_split(addr, digits_ref):
    X = DIGITS["X"]
    labels, probs = [], []
    for start in range(0, len(X), 100):
        ans = post_json(addr, "/v1/models/digits/predict",
                        {"instances": X[start:start + 100].tolist()})
        assert ans.status == 200, ans.body
        doc = ans.json()
        assert doc["model"] == "digits" and doc["version"] == "1" and doc["cached"] is False
        assert doc["request_id"] == ans.headers["x-request-id"]
        for row in doc["predictions"]:
            labels.append(row["label"])
            probs.append([row["probabilities"][str(c)] for c in range(10)])
    np.testing.assert_array_equal(labels, digits_ref["label"])
    np.testing.assert_allclose(probs, digits_ref["probabilities"], rtol=0, atol=1e-7)
    accuracy = float(np.mean(np.asarray(labels) == DIGITS["y"]))
    assert accuracy > 0.9


def test_tritonclient_binary_and_json_match_reference(addr, digits_ref):
    client = triton.InferenceServerClient(addr)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits")
    meta = client.get_model_metadata("digits")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    for binary in (True, False):
        inp = triton.InferInput("input", [50, 64], "FP32")
        inp.set_data_from_numpy(DIGITS["X"][:50], binary_data=binary)
        outs = [triton.InferRequestedOutput("probabilities", binary_data=binary)]
        result = client.infer("digits", [inp], outputs=outs, request_id="abc-1")
        assert result.get_response()["id"] == "abc-1"
        np.testing.assert_allclose(result.as_numpy("probabilities"),
                                   digits_ref["probabilities"][:50], atol=1e-7)
        assert result.as_numpy("label") is None  # only what was asked for
    result = client.infer("digits", [inp])  # default: every output, binary
    np.testing.assert_array_equal(result.as_numpy("label"), digits_ref["label"][:50])


def test_multi_input_model_with_int_and_bool_tensors(addr):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 4)).astype(np.float32)
    k = rng.integers(-5, 5, size=(7, 2)).astype(np.int64)
    mask = rng.random((7, 4)) > 0.5
    client = triton.InferenceServerClient(addr)
    inputs = []
    for name, arr, dt in (("x", x, "FP32"), ("k", k, "INT64"), ("mask", mask, "BOOL")):
        inputs.append(triton.InferInput(name, list(arr.shape), dt))
        inputs[-1].set_data_from_numpy(arr)
    result = client.infer("multi", inputs)
    y, n = multi_io_expected(x, k, mask)
    np.testing.assert_allclose(result.as_numpy("y"), y, rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("n"), n)
    assert client.get_model_metadata("multi", "1")["versions"] == ["1"]


def test_metadata_openapi_and_health(addr):
    assert request(addr, "GET", "/v2/health/live").status == 200
    assert request(addr, "GET", "/v2/health/ready").status == 200
    assert request(addr, "GET", "/v2/models/digits/versions/1/ready").status == 200
    assert request(addr, "GET", "/v2/models/digits/versions/9/ready").status == 404
    spec = request(addr, "GET", "/openapi.json").json()
    assert "/v1/models/{model}/predict" in spec["paths"]
    assert "/v2/models/{model}/infer" in spec["paths"]
    index = request(addr, "POST", "/v2/repository/index").json()
    assert {"name": "digits", "version": "1", "state": "READY", "reason": ""} in index


def test_model_ready_is_404_for_unknown_and_400_for_known_but_not_loaded(make_stack):
    """DESIGN: an unknown model or version is 404 on every route; the Open Inference
    Protocol's ready answer for a known one that is not loaded is a 4xx with
    {"ready": false} (400, as Triton), and tritonclient reads both as not ready."""
    addr = make_stack().settings.haproxy.bind
    client = triton.InferenceServerClient(addr)
    assert request(addr, "GET", "/v2/models/multi/ready").json() == {"name": "multi", "ready": True}
    assert client.is_model_ready("multi") and client.is_model_ready("multi", "1")
    for path in ("/v2/models/nope/ready", "/v2/models/nope/versions/1/ready",
                 "/v2/models/multi/versions/9/ready"):
        ans = request(addr, "GET", path)
        assert ans.status == 404 and "not in the repository" in ans.json()["error"], path
    assert not client.is_model_ready("nope") and not client.is_model_ready("multi", "9")
    assert request(addr, "POST", "/v2/repository/models/multi/unload").status == 200
    time.sleep(1.0)  # every edge worker's cached metadata expires (edge.metadata_ttl_s: 0.5 here)
    for path in ("/v2/models/multi/ready", "/v2/models/multi/versions/1/ready"):
        ans = request(addr, "GET", path)
        assert ans.status == 400 and ans.json() == {"name": "multi", "ready": False}, path
    assert not client.is_model_ready("multi") and not client.is_model_ready("multi", "1")
    assert request(addr, "POST", "/v2/repository/models/multi/load").status == 200
    time.sleep(1.0)
    assert client.is_model_ready("multi") and client.is_model_ready("multi", "1")


def test_request_id_is_taken_from_the_client_when_well_formed(addr):
    body = json.dumps({"instances": DIGITS["X"][:1].tolist()})
    ans = request(addr, "POST", "/v1/models/digits/predict", body, {"X-Request-Id": "trace-42"})
    assert ans.json()["request_id"] == "trace-42"
    ans = request(addr, "POST", "/v1/models/digits/predict", body, {"X-Request-Id": "bad id;<x>"})
    assert ans.status == 200 and ans.json()["request_id"] != "bad id;<x>"
