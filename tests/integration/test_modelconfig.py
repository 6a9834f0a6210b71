"""Triton's model configuration extension (edge/modelconfig.py) with the stock clients:
``tritonclient.http`` (``GET /v2/models/{m}[/versions/{v}]/config``) and
``tritonclient.grpc`` (the ``ModelConfig`` RPC), both through HAProxy.

Each config is checked against the same model's metadata (names, datatypes, shapes) and
against how the server really batches: a request of ``max_batch_size`` rows is served, one
row more is refused when that is the request limit; a version that does not batch says 0
and its full shape. The two faces answer the same message.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from tests import convertermodels as cm
from tests.httpx_lite import request
from tests.stacks import create_key, make_repo, wait_grpc_ready

ROOT = Path(__file__).resolve().parents[2]
DIGITS = np.load(ROOT / "tests" / "data" / "digits_test.npz")


def copy_digits(repo: Path, name: str, versions: tuple[str, ...], config: str) -> None:
    for v in versions:
        (repo / name / v).mkdir(parents=True)
        shutil.copy(repo / "digits" / "1" / "model.onnx", repo / name / v / "model.onnx")
    (repo / name / "config.toml").write_text(config)


@pytest.fixture(scope="module")
def served(module_stacks, tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("configrepo") / "models")
    built = {b.name: b for b in (cm.tfidf_text(repo), cm.random_forest_iris(repo),
                                 cm.logreg_string_labels(repo))}
    copy_digits(repo, "digits_ab", ("1", "2"), "max_request_rows = 64\n[batching]\n"
                "max_run_rows = 16\nmax_queue_delay_us = 2000\nmax_concurrent_batches = 2\n")
    copy_digits(repo, "digits_solo", ("1",), "[batching]\nenabled = false\n")
    stack = module_stacks(repo=repo)
    stack.start_grpc()
    wait_grpc_ready(stack.settings.grpc.public_bind)
    return stack, built


@pytest.fixture(scope="module")
def addr(served) -> str:
    return served[0].settings.haproxy.bind


@pytest.fixture(scope="module")
def http(addr):
    return th.InferenceServerClient(addr)


@pytest.fixture(scope="module")
def grpc_client(served):
    return tg.InferenceServerClient(served[0].settings.grpc.public_bind)


def refused(call) -> tuple[str | None, str]:
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value.status(), err.value.message()


def consistent_with_metadata(config: dict, meta: dict) -> None:
    """The config says what the metadata says, in model_config.proto's terms."""
    batched = config["max_batch_size"] > 0
    for key, tensors in (("input", meta["inputs"]), ("output", meta["outputs"])):
        assert [t["name"] for t in config[key]] == [t["name"] for t in tensors]
        for cfg, t in zip(config[key], tensors, strict=True):
            want = "TYPE_STRING" if t["datatype"] == "BYTES" else f"TYPE_{t['datatype']}"
            assert cfg["data_type"] == want, (cfg, t)
            dims = t["shape"][1:] if batched else t["shape"]
            if batched:
                assert t["shape"][0] == -1
            assert cfg["dims"] == (dims or [1]), (cfg, t)
            assert ("reshape" in cfg) == (not dims)
    assert config["name"] == meta["name"] and config["platform"] == meta["platform"]
    assert config["version_policy"] == {"specific": {"versions": [int(v) for v in meta["versions"]]}}
    assert ("dynamic_batching" in config) == batched


def digits_rows(addr: str, model: str, rows: int) -> int:
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 64],
                                   "data": np.resize(DIGITS["X"], (rows, 64)).ravel().tolist()}]})
    return request(addr, "POST", f"/v2/models/{model}/infer", body,
                   {"Content-Type": "application/json"}).status


def test_digits_config_over_http_matches_its_metadata_and_how_it_batches(http, addr):
    config = http.get_model_config("digits")
    assert config["platform"] == "onnxruntime_onnx" and config["backend"] == "onnxruntime"
    consistent_with_metadata(config, http.get_model_metadata("digits"))
    assert config["max_batch_size"] == 256  # its max_request_rows, also its run's rows
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}]
    assert {o["name"]: o["data_type"] for o in config["output"]} == {
        "label": "TYPE_INT64", "probabilities": "TYPE_FP32"}
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 0}
    assert config["instance_group"] == [{"name": "digits_0", "kind": "KIND_CPU", "count": 1}]
    params = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert json.loads(params["class_labels"]) == [str(i) for i in range(10)]
    assert params["probabilities_output"] == "probabilities" and params["version"] == "1"
    assert params["label_output"] == "label" and "digits" in params["description"].lower()
    assert config["response_cache"] == {"enable": False}
    assert http.get_model_config("digits", "1") == config
    assert digits_rows(addr, "digits", 256) == 200
    assert digits_rows(addr, "digits", 257) == 413
    assert "model_configuration" in http.get_server_metadata()["extensions"]


def test_string_input_and_zipmap_models(http, served):
    built = served[1]
    for name in ("topics", "rf_iris", "logreg_names"):
        config, meta = http.get_model_config(name), http.get_model_metadata(name)
        consistent_with_metadata(config, meta)
        assert config["max_batch_size"] == 64  # tests/convertermodels.py's max_request_rows
    topics = http.get_model_config("topics")
    assert topics["input"] == [{"name": "text", "data_type": "TYPE_STRING", "dims": [1]}]
    for name in ("rf_iris", "logreg_names"):
        config, meta = http.get_model_config(name), http.get_model_metadata(name)
        [(zipmap, labels)] = cm.zipmap_labels(built[name].path).items()
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        assert json.loads(params["class_labels"]) == labels == meta["parameters"]["class_labels"]
        assert params["probabilities_output"] == zipmap
        assert next(o for o in config["output"] if o["name"] == zipmap) == {
            "name": zipmap, "data_type": "TYPE_FP32", "dims": [len(labels)]}
    names = http.get_model_config("logreg_names")
    assert next(o for o in names["output"] if o["name"] == "output_label")["data_type"] == "TYPE_STRING"
    rows = built["topics"].feeds["text"]
    inp = th.InferInput("text", [65, 1], "BYTES")
    inp.set_data_from_numpy(np.resize(rows, (65, 1)))
    status, _ = refused(lambda: http.infer("topics", [inp]))
    assert status == "413"


def test_batching_settings_and_the_split_version(http, addr):
    config = http.get_model_config("digits_ab", "2")
    assert config["max_batch_size"] == 16  # batching.max_run_rows, under max_request_rows 64
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 2000}
    assert config["instance_group"][0]["count"] == 2  # max_concurrent_batches
    assert config["version_policy"] == {"specific": {"versions": [1, 2]}}
    assert digits_rows(addr, "digits_ab", 16) == 200
    assert http.get_model_config("digits_ab")["parameters"]["version"]["string_value"] == "2"
    split = request(addr, "PUT", "/v1/models/digits_ab/traffic", '{"split": {"1": 100}}',
                    {"Content-Type": "application/json"})
    assert split.status == 200, split.body
    # the version the split routes to (within the listing's half-second cache)
    for _ in range(40):
        got = http.get_model_config("digits_ab")["parameters"]["version"]["string_value"]
        if got == "1":
            break
        time.sleep(0.1)
    assert got == "1"
    solo = http.get_model_config("digits_solo")
    consistent_with_metadata(solo, http.get_model_metadata("digits_solo"))
    assert solo["max_batch_size"] == 0 and "dynamic_batching" not in solo
    assert solo["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [-1, 64]}]


def test_grpc_answers_the_same_config(http, grpc_client):
    for name in ("digits", "topics", "rf_iris", "digits_solo"):
        answer = grpc_client.get_model_config(name)
        rest = json_format.ParseDict(http.get_model_config(name), mc.ModelConfig())
        assert answer.config == rest, name
    digits = grpc_client.get_model_config("digits", "1", as_json=True)["config"]
    assert digits["max_batch_size"] == 256 and digits["platform"] == "onnxruntime_onnx"
    assert digits["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": ["64"]}]
    assert digits["instance_group"][0]["kind"] == "KIND_CPU"


def test_unknown_model_or_version_is_404_and_not_found(http, grpc_client, addr):
    status, message = refused(lambda: http.get_model_config("nope"))
    assert status == "404" and "nope" in message
    status, message = refused(lambda: http.get_model_config("digits", "9"))
    assert status == "404" and "9" in message
    ans = request(addr, "GET", "/v2/models/nope/config")
    assert ans.status == 404 and "nope" in json.loads(ans.body)["error"]
    status, message = refused(lambda: grpc_client.get_model_config("nope"))
    assert status == "StatusCode.NOT_FOUND" and "nope" in message
    status, _ = refused(lambda: grpc_client.get_model_config("digits", "9"))
    assert status == "StatusCode.NOT_FOUND"


def test_a_key_limited_to_one_model_sees_only_its_config(make_stack):
    stack = make_stack(start=False, FALCON_AUTH_ENABLED="true")
    tenant = create_key(stack, "tenant", "--scope", "predict", "--model", "digits")
    stack.start()
    stack.start_grpc()
    wait_grpc_ready(stack.settings.grpc.public_bind)
    auth = {"authorization": f"Bearer {tenant}"}
    http = th.InferenceServerClient(stack.settings.haproxy.bind)
    assert http.get_model_config("digits", headers=auth)["name"] == "digits"
    status, message = refused(lambda: http.get_model_config("multi", headers=auth))
    assert status == "403" and "multi" in message
    assert refused(lambda: http.get_model_config("digits"))[0] == "401"
    grpc_client = tg.InferenceServerClient(stack.settings.grpc.public_bind)
    assert grpc_client.get_model_config("digits", headers=auth).config.name == "digits"
    status, _ = refused(lambda: grpc_client.get_model_config("multi", headers=auth))
    assert status == "StatusCode.PERMISSION_DENIED"
    assert refused(lambda: grpc_client.get_model_config("digits"))[0] == "StatusCode.UNAUTHENTICATED"
