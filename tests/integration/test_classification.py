"""Triton's classification extension through HAProxy with the stock clients:
``InferRequestedOutput(name, class_count=K)`` of ``tritonclient.http`` (JSON and binary
outputs) and ``tritonclient.grpc`` gets the output's top K classes, "value:index:label"
for digits (its config's labels name its probabilities output's columns) and ZipMap
models, "value:index" for an output without labels, equal
to the argsort of in-process ONNX Runtime's probabilities. The cache keeps the model's
outputs (K is applied to a hit) and the audit record keeps them too, with K in
``extra``."""

from __future__ import annotations

import re
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import psycopg2
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from tests import convertermodels as cm
from tests.httpx_lite import post_json
from tests.modelfactory import _model, model_paths, reference, write_config
from tests.stacks import Memcached, make_repo, wait_grpc_ready, wal_records

ROOT = Path(__file__).resolve().parents[2]
DIGITS = np.load(ROOT / "tests" / "data" / "digits_test.npz")["X"][:120]
with open(ROOT / "models" / "digits" / "config.toml", "rb") as _f:
    DIGIT_LABELS = tomllib.load(_f)["labels"]  # index-aligned with "probabilities"
VALUE = re.compile(r"^-?\d+\.\d{6}$")  # std::to_string of a float: %f


def write_fixed_model(repo: Path) -> None:
    """``fixed``: y = Identity(x), FP32 [2, 3], no batch dimension."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model_path, config_path = model_paths(repo, "fixed", "1")
    model = _model(graph, "fixed shape identity")
    onnx.checker.check_model(model, full_check=True)
    model_path.write_bytes(model.SerializeToString())
    write_config(config_path, description="fixed [2, 3] identity", max_batch_size=2)


@pytest.fixture(scope="module")
def served(module_stacks, tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("classify") / "models")
    names = cm.logreg_string_labels(repo)
    forest = cm.random_forest_iris(repo)
    cached = cm.logreg_string_labels(repo, "names_cached")
    with (repo / "names_cached" / "config.toml").open("a", encoding="utf-8") as f:
        f.write("\n[cache]\nenabled = true\n")
    write_fixed_model(repo)
    memcached = Memcached().start()
    try:
        stack = module_stacks(repo=repo, FALCON_CACHE_SERVERS=memcached.addr,
                              FALCON_HOST_ID="classhost")
        stack.start_grpc()
        wait_grpc_ready(stack.settings.grpc.public_bind)
        yield stack, {"logreg_names": names, "rf_iris": forest, "names_cached": cached}
    finally:
        memcached.stop()


@pytest.fixture(scope="module")
def http(served) -> th.InferenceServerClient:
    return th.InferenceServerClient(served[0].settings.haproxy.bind)


@pytest.fixture(scope="module")
def grpc_client(served) -> tg.InferenceServerClient:
    return tg.InferenceServerClient(served[0].settings.grpc.public_bind)


@pytest.fixture(scope="module")
def digits_ref(served) -> np.ndarray:
    model = Path(served[0].settings.daemon.model_repository) / "digits" / "1" / "model.onnx"
    return reference(model, {"input": DIGITS})["probabilities"]


def texts(arr: np.ndarray) -> list[str]:
    """tritonclient gives BYTES as bytes (binary) or str (JSON)."""
    return [e.decode() if isinstance(e, bytes) else e for e in arr.reshape(-1).tolist()]


def parse(served: np.ndarray) -> list[list[tuple[float, int, str | None]]]:
    rows = []
    for row in served:
        parsed = []
        for text in texts(row):
            value, index, *label = text.split(":", 2)
            assert VALUE.match(value), text
            parsed.append((float(value), int(index), label[0] if label else None))
        rows.append(parsed)
    return rows


def assert_top_k(served: np.ndarray, probs: np.ndarray, k: int,
                 labels: list[Any] | None = None) -> None:
    """``served`` is the argsort of ``probs`` (highest first), K of them, with values and
    labels; positions whose reference values are within float noise may swap."""
    assert served.shape == (len(probs), min(k, probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")
    for row, got in zip(range(len(probs)), parse(served), strict=True):
        for j, (value, index, label) in enumerate(got):
            want = int(order[row, j])
            assert index == want or abs(probs[row, index] - probs[row, want]) < 1e-6, (row, got)
            assert abs(value - probs[row, index]) <= 1e-6
            assert label == (None if labels is None else str(labels[index]))


def digits_http_inputs(binary: bool) -> list[th.InferInput]:
    inp = th.InferInput("input", list(DIGITS.shape), "FP32")
    return [inp.set_data_from_numpy(DIGITS, binary_data=binary)]


@pytest.mark.parametrize("binary", [False, True])
def test_http_digits_top_k_labelled_by_its_config(http, digits_ref, binary):
    outputs = [th.InferRequestedOutput("probabilities", binary_data=binary, class_count=3),
               th.InferRequestedOutput("label", binary_data=binary)]
    result = http.infer("digits", digits_http_inputs(binary), outputs=outputs)
    out = next(o for o in result.get_response()["outputs"] if o["name"] == "probabilities")
    assert out["datatype"] == "BYTES" and out["shape"] == [len(DIGITS), 3]
    assert ("data" in out) != binary
    assert_top_k(result.as_numpy("probabilities"), digits_ref, 3, DIGIT_LABELS)
    assert result.as_numpy("label").dtype == np.int64  # the other output as it is
    assert "classification" in http.get_server_metadata()["extensions"]


def test_grpc_digits_top_k_and_k_above_the_classes_is_clamped(grpc_client, digits_ref):
    inp = tg.InferInput("input", list(DIGITS.shape), "FP32")
    inp.set_data_from_numpy(DIGITS)
    for k in (1, 4, 25):
        result = grpc_client.infer("digits", [inp], outputs=[
            tg.InferRequestedOutput("probabilities", class_count=k)])
        [out] = result.get_response().outputs
        assert out.datatype == "BYTES" and list(out.shape) == [len(DIGITS), min(k, 10)]
        assert_top_k(result.as_numpy("probabilities"), digits_ref, k, DIGIT_LABELS)
    assert "classification" in grpc_client.get_server_metadata().extensions


@pytest.mark.parametrize("model", ["logreg_names", "rf_iris"])
def test_zipmap_models_label_each_class_on_both_faces(http, grpc_client, served, model):
    built = served[1][model]
    [(probs_name, labels)] = cm.zipmap_labels(built.path).items()
    probs = cm.reference(built)[probs_name]
    X = built.feeds["X"]
    http_inp = th.InferInput("X", list(X.shape), "FP32").set_data_from_numpy(X)
    for binary in (False, True):
        answer = http.infer(model, [http_inp], outputs=[
            th.InferRequestedOutput(probs_name, binary_data=binary, class_count=2)])
        assert_top_k(answer.as_numpy(probs_name), probs, 2, labels)
    grpc_inp = tg.InferInput("X", list(X.shape), "FP32")
    grpc_inp.set_data_from_numpy(X)
    answer = grpc_client.infer(model, [grpc_inp], outputs=[
        tg.InferRequestedOutput(probs_name, class_count=7)])
    assert_top_k(answer.as_numpy(probs_name), probs, 7, labels)  # clamped to 3


def test_an_output_without_a_batch_dimension_is_ranked_whole(http, grpc_client):
    x = np.array([[1, 9, 2], [8, 3, 7]], dtype=np.float32)
    inp = th.InferInput("x", [2, 3], "FP32").set_data_from_numpy(x, binary_data=False)
    result = http.infer("fixed", [inp], outputs=[
        th.InferRequestedOutput("y", binary_data=False, class_count=4)])
    assert result.get_response()["outputs"][0]["shape"] == [4]
    assert texts(result.as_numpy("y")) == ["9.000000:1", "8.000000:3", "7.000000:5",
                                           "3.000000:4"]
    ginp = tg.InferInput("x", [2, 3], "FP32")
    ginp.set_data_from_numpy(x)
    answer = grpc_client.infer("fixed", [ginp], outputs=[tg.InferRequestedOutput("y", class_count=2)])
    assert texts(answer.as_numpy("y")) == ["9.000000:1", "8.000000:3"]


def post(addr: str, model: str, outputs: list[dict[str, Any]]) -> tuple[int, dict]:
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 4],
                        "data": [5.1, 3.5, 1.4, 0.2]}], "outputs": outputs}
    answer = post_json(addr, f"/v2/models/{model}/infer", body)
    return answer.status, answer.json()


@pytest.mark.parametrize("k", [0, -1, "3", 2.5, True, None])
def test_bad_k_is_400_naming_the_field(served, k):
    addr = served[0].settings.haproxy.bind
    status, doc = post(addr, "rf_iris", [{"name": "output_probability",
                                          "parameters": {"classification": k}}])
    assert status == 400 and "outputs[0].parameters.classification" in doc["error"], doc


def test_a_string_output_is_400_and_grpc_invalid_argument_naming_the_field(served, grpc_client):
    addr = served[0].settings.haproxy.bind
    status, doc = post(addr, "logreg_names", [
        {"name": "output_probability"},
        {"name": "output_label", "parameters": {"classification": 1}}])
    assert status == 400 and "outputs[1].parameters.classification" in doc["error"], doc
    assert "numeric" in doc["error"]
    inp = tg.InferInput("X", [1, 4], "FP32")
    inp.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32))
    for model, name, k in (("logreg_names", "output_label", 2),
                           ("rf_iris", "output_probability", -3)):  # (0: the client sends none)
        with pytest.raises(InferenceServerException) as err:
            grpc_client.infer(model, [inp], outputs=[tg.InferRequestedOutput(name, class_count=k)])
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "outputs[0].parameters.classification" in err.value.message()


def test_cache_hit_is_ranked_with_its_own_k_and_the_audit_keeps_the_outputs(http, served):
    stack, built = served[0], served[1]["names_cached"]
    [(probs_name, labels)] = cm.zipmap_labels(built.path).items()
    probs = cm.reference(built)[probs_name]
    X = built.feeds["X"]
    inp = th.InferInput("X", list(X.shape), "FP32").set_data_from_numpy(X)
    for k, rid in ((1, "cls-miss"), (3, "cls-hit")):
        answer = http.infer("names_cached", [inp], request_id=rid, headers={"X-Request-Id": rid},
                            outputs=[th.InferRequestedOutput(probs_name, class_count=k)])
        assert_top_k(answer.as_numpy(probs_name), probs, k, labels)
    records = {r.request_id: r for r in wal_records(stack) if r.request_id.startswith("cls-")}
    assert (records["cls-miss"].cached, records["cls-hit"].cached) == (False, True)
    for rid, k in (("cls-miss", 1), ("cls-hit", 3)):
        rec = records[rid]
        assert rec.extra == {"classification": {probs_name: k}}
        assert rec.labels is None
        [(name, out)] = rec.outputs.items()  # the one requested output, as the model gave it
        assert name == probs_name and out["dtype"] == "<f4" and out["shape"] == list(probs.shape)
        np.testing.assert_allclose(out["data"], probs, rtol=0, atol=1e-6)


def test_classified_answers_land_once_in_postgresql_with_k_and_the_outputs(make_stack, pg_dsn):
    stack = make_stack(audit=True, FALCON_AUDIT_DSN=pg_dsn)
    stack.start_grpc()
    wait_grpc_ready(stack.settings.grpc.public_bind)
    X = DIGITS[:2]
    http = th.InferenceServerClient(stack.settings.haproxy.bind)
    http.infer("digits", digits_http_inputs(True)[:1], headers={"X-Request-Id": "pgcls-http"},
               outputs=[th.InferRequestedOutput("probabilities", class_count=2)])
    grpc_inp = tg.InferInput("input", list(X.shape), "FP32")
    grpc_inp.set_data_from_numpy(X)
    tg.InferenceServerClient(stack.settings.grpc.public_bind).infer(
        "digits", [grpc_inp], headers={"x-request-id": "pgcls-grpc"},
        outputs=[tg.InferRequestedOutput("probabilities", class_count=4)])
    deadline, rows = time.monotonic() + 60, []
    while time.monotonic() < deadline and len(rows) < 2:
        with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT request_id, face, extra, outputs FROM audit.predictions "
                        "WHERE request_id LIKE 'pgcls-%' ORDER BY request_id")
            rows = cur.fetchall()
        conn.close()
        time.sleep(0.25)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("pgcls-grpc", "grpc", {"classification": {"probabilities": 4}}),
        ("pgcls-http", "v2", {"classification": {"probabilities": 2}})]
    for _, _, _, outputs in rows:
        assert list(outputs) == ["probabilities"]
        assert outputs["probabilities"]["dtype"] == "<f4"
        assert len(outputs["probabilities"]["data"][0]) == 10  # every class, not the top K
