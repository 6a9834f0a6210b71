"""Models as the converters write them, served through the whole stack.

skl2onnx and onnxmltools output with default options (ZipMap probabilities, string
labels, string and several named inputs: tests/convertermodels.py) answers through
HAProxy with V2 JSON, V2 binary (the stock tritonclient) and /v1 exactly what ONNX
Runtime gives in-process on the same rows; string rows batched in the daemon get
the bits they get alone.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families

from tests import convertermodels as cm
from tests.convertermodels import reference, zipmap_labels
from tests.httpx_lite import post_json, request
from tests.modelfactory import write_unservable_model
from tests.rawdaemon import (
    coalesced,
    infer,
    one_by_one,
    outputs_of,
    pipelined,
    spread,
)
from tests.stacks import ROOT, make_repo

BUILDERS = {
    "rf_iris": cm.random_forest_iris,
    "logreg_names": cm.logreg_string_labels,
    "tabular": cm.column_transformer,
    "topics": cm.tfidf_text,
    "lgbm": cm.lightgbm_classifier,
    "xgb": cm.xgboost_regressor,
}
CLASSIFIERS = ["rf_iris", "logreg_names", "tabular", "topics", "lgbm"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, cm.Built]:
    repo = make_repo(tmp_path_factory.mktemp("converters") / "models")
    shutil.copytree(ROOT / "models" / "iris", repo / "iris",
                    ignore=shutil.ignore_patterns("*.py", "example.json"))
    write_unservable_model(repo, "seqout", "sequence")
    write_unservable_model(repo, "mapin", "map-input")
    write_unservable_model(repo, "threerows", "three-rows-only")
    cm.tfidf_text(repo, "topics_en", locale="en_US.UTF-8")
    return {name: build(repo) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def stack(module_stacks, built):
    repo = next(iter(built.values())).path.parents[2]
    return module_stacks(repo=repo)


@pytest.fixture(scope="module")
def addr(stack) -> str:
    return stack.settings.haproxy.bind


def triton_inputs(b: cm.Built, binary: bool) -> list[triton.InferInput]:
    inputs = []
    for name, arr in b.feeds.items():
        datatype = "BYTES" if arr.dtype == object else "FP32"
        inp = triton.InferInput(name, list(arr.shape), datatype)
        inputs.append(inp.set_data_from_numpy(arr, binary_data=binary))
    return inputs


def as_text(arr: np.ndarray) -> np.ndarray:
    """tritonclient gives BYTES as bytes objects: decode them for comparison."""
    if arr.dtype != object:
        return arr
    return np.vectorize(lambda e: e.decode() if isinstance(e, bytes) else e, otypes=[object])(arr)


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_v2_answers_equal_in_process_onnxruntime(addr, built, name, binary):
    b = built[name]
    client = triton.InferenceServerClient(addr)
    ref = reference(b)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ref]
    result = client.infer(name, triton_inputs(b, binary), outputs=outputs)
    for out, expected in ref.items():
        got = as_text(result.as_numpy(out))
        assert got.dtype == expected.dtype, (out, got.dtype)
        np.testing.assert_array_equal(got, expected, err_msg=out)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_v1_answers_labels_as_given_and_probabilities_by_class(addr, built, name):
    b = built[name]
    ref = reference(b)
    labels = zipmap_labels(b.path)
    [(probs_name, classes)] = labels.items()
    label_name = next(n for n in ref if n != probs_name)
    ans = post_json(addr, f"/v1/models/{name}/predict", {"instances": b.instances})
    assert ans.status == 200, ans.body
    rows = ans.json()["predictions"]
    assert [r["label"] for r in rows] == ref[label_name].reshape(-1).tolist()
    assert all(list(r["probabilities"]) == [str(c) for c in classes] for r in rows)
    got = np.array([[r["probabilities"][str(c)] for c in classes] for r in rows], np.float32)
    np.testing.assert_array_equal(got, ref[probs_name])


def test_v1_regressor_answers_its_output(addr, built):
    ans = post_json(addr, "/v1/models/xgb/predict", {"instances": built["xgb"].instances})
    assert ans.status == 200, ans.body
    got = np.array([r["output"] for r in ans.json()["predictions"]], np.float32)
    np.testing.assert_array_equal(got, reference(built["xgb"])["variable"])


def test_an_output_declared_1_that_answers_n_rows_is_served_as_n(addr):
    meta = triton.InferenceServerClient(addr).get_model_metadata("lgbm")
    assert meta["outputs"][0] == {"name": "label", "datatype": "INT64", "shape": [-1]}


def test_metadata_has_bytes_tensors_and_class_labels(addr, built):
    meta = triton.InferenceServerClient(addr).get_model_metadata("tabular")
    assert meta["inputs"][0] == {"name": "color", "datatype": "BYTES", "shape": [-1, 1]}
    assert meta["parameters"] == {"class_labels": [0, 1, 2],
                                  "probabilities_output": "output_probability"}
    meta = request(addr, "GET", "/v2/models/logreg_names").json()
    assert meta["outputs"] == [
        {"name": "output_label", "datatype": "BYTES", "shape": [-1]},
        {"name": "output_probability", "datatype": "FP32", "shape": [-1, 3],
         "parameters": {"class_labels": list(cm.IRIS_NAMES)}}]


@pytest.mark.parametrize(("doc", "field", "words"), [
    ({"instances": [{"color": 1, "x1": 0.5, "x2": 1.0}]}, "instances[0].color", ["strings"]),
    ({"instances": [{"color": "red", "x1": "0.5", "x2": 1.0}]}, "instances[0].x1", ["float32"]),
    ({"instances": [{"color": "red", "x1": 0.5}]}, "instances[0].x2", ["missing"]),
    ({"instances": [["red", 0.5, 1.0]]}, "instances[0]", ["keyed by input name"]),
], ids=["number-in-string", "string-in-number", "missing-input", "list-row"])
def test_v1_named_input_errors_are_400_naming_the_input(addr, doc, field, words):
    ans = post_json(addr, "/v1/models/tabular/predict", doc)
    assert ans.status == 400, ans.body
    error = ans.json()["error"]
    assert error.startswith(field + ":"), error
    for word in words:
        assert word in error


def test_v2_string_errors_are_400_naming_the_field(addr):
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": ["a", 3]}]}
    ans = post_json(addr, "/v2/models/topics/infer", body)
    assert ans.status == 400 and ans.json()["error"].startswith("inputs[0].data: element 1")
    body["inputs"][0].update(datatype="FP32", data=[1.0, 2.0])
    ans = post_json(addr, "/v2/models/topics/infer", body)
    assert ans.status == 400, ans.body
    assert ans.json()["error"] == "inputs[0].datatype: float32 given, input 'text' takes string"
    header = (b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], '
              b'"parameters": {"binary_data_size": 7}}]}')
    ans = request(addr, "POST", "/v2/models/topics/infer", header + b"\x09\0\0\0abc",
                  {"Inference-Header-Content-Length": str(len(header)),
                   "Content-Type": "application/octet-stream"})
    assert ans.status == 400, ans.body
    assert ans.json()["error"].startswith("inputs[0]: binary BYTES element 0: length 9")
    ans = request(addr, "POST", "/v1/models/topics/predict", b'{"instances": [["\xff"]]}',
                  {"Content-Type": "application/json"})
    assert ans.status == 400 and "invalid UTF-8 at byte 17" in ans.json()["error"]


@pytest.mark.parametrize("name", ["topics", "tabular", "lgbm", "rf_iris"])
def test_string_rows_batched_in_the_daemon_keep_their_bits(stack, built, name):
    """Many one- to three-row requests at once: each answer equals the rows' slice of
    one in-process run over every row, and some runs carried several requests (lgbm
    too, although onnxmltools declares its label output [1]: the warm-up saw it is not)."""
    b = built[name]
    rng = np.random.default_rng(5)
    rows = len(next(iter(b.feeds.values())))
    # 96 requests of 1-3 rows: runs of 50+ rows, where a multi-threaded tree ensemble
    # would sum in another order than for a lone row
    picks = {i: rng.integers(0, rows, size=int(rng.integers(1, 4))) for i in range(96)}
    sent = {i: {n: a[idx] for n, a in b.feeds.items()} for i, idx in picks.items()}
    answers = pipelined(stack.settings.daemon_socket,
                        spread([infer(i, name, feeds) for i, feeds in sent.items()]))
    every = {n: np.concatenate([sent[i][n] for i in sent]) for n in b.feeds}
    ref = reference(cm.Built(name, b.path, every, []))
    offsets = np.cumsum([0] + [len(idx) for idx in picks.values()])
    for i, start, stop in zip(sent, offsets[:-1], offsets[1:], strict=True):
        for out, got in outputs_of(answers[i]).items():
            np.testing.assert_array_equal(got, ref[out][start:stop], err_msg=f"{i} {out}")
    assert coalesced(answers, {i: len(idx) for i, idx in picks.items()}) > 0
    lone = one_by_one(stack.settings.daemon_socket,
                      [infer(100 + i, name, {n: a[i:i + 1] for n, a in b.feeds.items()})
                       for i in range(3)])
    alone = reference(cm.Built(name, b.path, {n: a[:3] for n, a in b.feeds.items()}, []))
    for i, answer in enumerate(lone):
        for out, got in outputs_of(answer).items():
            np.testing.assert_array_equal(got, alone[out][i:i + 1])


def test_shipped_iris_demo_answers_its_held_out_split(addr, stack):
    """models/iris: skl2onnx defaults (string label, ZipMap) as make up serves them."""
    split = np.load(ROOT / "tests" / "data" / "iris_test.npz")
    path = Path(stack.settings.daemon.model_repository) / "iris" / "1" / "model.onnx"
    ref = reference(cm.Built("iris", path, {"input": split["X"]}, []))
    ans = post_json(addr, "/v1/models/iris/predict", {"instances": split["X"].tolist()})
    assert ans.status == 200, ans.body
    rows = ans.json()["predictions"]
    assert [r["label"] for r in rows] == ref["output_label"].tolist()
    assert float(np.mean(ref["output_label"] == split["y"])) > 0.9
    got = np.array([[r["probabilities"][c] for c in cm.IRIS_NAMES] for r in rows], np.float32)
    np.testing.assert_array_equal(got, ref["output_probability"])
    inp = triton.InferInput("input", list(split["X"].shape), "FP32")
    result = triton.InferenceServerClient(addr).infer("iris", [inp.set_data_from_numpy(split["X"])])
    np.testing.assert_array_equal(as_text(result.as_numpy("output_label")), ref["output_label"])
    np.testing.assert_array_equal(result.as_numpy("output_probability"),
                                  ref["output_probability"])


def test_what_cannot_load_says_why_and_what_to_do(addr):
    index = {m["name"]: m for m in request(addr, "POST", "/v2/repository/index").json()}
    assert index["seqout"]["state"] == "UNAVAILABLE"
    reason = index["seqout"]["reason"]
    assert "output 'seq' has unsupported type seq(tensor(float))" in reason
    assert "options={'zipmap': False}" in reason
    reason = index["mapin"]["reason"]
    assert "input 'x' has unsupported type map(string,tensor(float))" in reason
    assert "export the model with a tensor here" in reason
    reason = index["topics_en"]["reason"]
    assert "en_US.UTF-8" in reason and "{TfidfVectorizer: {'locale': 'C.UTF-8'}}" in reason
    reason = index["threerows"]["reason"]
    assert "warm-up on synthetic inputs (1 row: zeros, empty strings) failed" in reason
    assert "reshape" in reason.lower()
    for name in BUILDERS:
        assert index[name]["state"] == "READY", index[name]


def test_versions_are_warmed_up_before_they_serve_and_the_time_is_exported(stack):
    log = stack.procs["daemon"].log.read_text()
    assert re.search(r"model topics/1 loaded in [0-9.]+s \(published, \d+ weight bytes\), "
                     r"warmed up in [0-9.]+s", log), log[-2000:]
    ans = request(stack.settings.edge.bind, "GET", "/metrics")  # Prometheus scrapes the edge
    samples = {(s.labels.get("model"), s.labels.get("version")): s.value
               for f in text_string_to_metric_families(ans.body.decode())
               if f.name == "falcon_warmup_seconds" for s in f.samples}
    assert samples[("topics", "1")] > 0 and samples[("iris", "1")] > 0
    assert ("threerows", "1") not in samples


def test_tree_ensembles_answer_a_row_alike_alone_and_in_a_big_run(addr, built):
    """One request of 64 rows (the models' max_request_rows), then some of them alone: the
    same bits (the daemon runs tree ensembles on one intra-op thread under [batching]
    exact; with two, a run of 64 rows changed 88 of 192 probabilities here)."""
    b = built["lgbm"]
    rows = np.repeat(b.feeds["input"], 3, axis=0)[:64]
    client = triton.InferenceServerClient(addr)
    inp = triton.InferInput("input", list(rows.shape), "FP32").set_data_from_numpy(rows)
    big = client.infer("lgbm", [inp]).as_numpy("probabilities")
    for i in range(0, 64, 9):
        one = triton.InferInput("input", [1, 4], "FP32").set_data_from_numpy(rows[i:i + 1])
        np.testing.assert_array_equal(client.infer("lgbm", [one]).as_numpy("probabilities"),
                                      big[i:i + 1])
