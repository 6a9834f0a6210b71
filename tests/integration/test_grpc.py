"""The gRPC face with the stock ``tritonclient.grpc`` client through HAProxy (its own h2c
port) -> ``falconctl grpc`` -> daemon.

Answers are compared with ONNX Runtime run in-process on the same model files, as
test_serving.py does for REST; typed ``contents`` requests are built with the protos
``tritonclient.grpc`` ships (the client itself always sends raw contents).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import psycopg2
import pytest
import tritonclient.grpc as tg
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from falconctl.stack import free_port
from tests import convertermodels as cm
from tests.convertermodels import reference as converter_reference
from tests.convertermodels import zipmap_labels
from tests.httpx_lite import request
from tests.modelfactory import multi_io_expected, reference
from tests.stacks import create_key, make_repo, wait_grpc_ready, wal_records

ROOT = Path(__file__).resolve().parents[2]
DIGITS = np.load(ROOT / "tests" / "data" / "digits_test.npz")


@pytest.fixture(scope="module")
def served(module_stacks, tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("grpcrepo") / "models")
    topics = cm.tfidf_text(repo)
    forest = cm.random_forest_iris(repo)
    stack = module_stacks(repo=repo, FALCON_HOST_ID="grpchost")
    stack.start_grpc()
    wait_grpc_ready(stack.settings.grpc.public_bind)
    return stack, topics, forest


@pytest.fixture(scope="module")
def target(served) -> str:
    return served[0].settings.grpc.public_bind


@pytest.fixture(scope="module")
def client(target):
    return tg.InferenceServerClient(target)


@pytest.fixture(scope="module")
def digits_ref(served) -> dict[str, np.ndarray]:
    model = Path(served[0].settings.daemon.model_repository) / "digits" / "1" / "model.onnx"
    return reference(model, {"input": DIGITS["X"]})


def status_of(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value.status(), err.value.message()


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and not client.is_model_ready("nope")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "falcon-inference" and "model_repository" in server["extensions"]
    meta = client.get_model_metadata("digits", as_json=True)
    assert meta["name"] == "digits" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "64"]}]
    assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}
    assert status_of(lambda: client.get_model_metadata("nope"))[0] == "StatusCode.NOT_FOUND"


def test_raw_contents_match_in_process_onnxruntime_on_the_test_split(client, digits_ref):
    X = DIGITS["X"]
    labels, probs = [], []
    for start in range(0, len(X), 100):
        inp = tg.InferInput("input", list(X[start:start + 100].shape), "FP32")
        inp.set_data_from_numpy(X[start:start + 100])
        result = client.infer("digits", [inp], request_id=f"raw-{start}")
        assert result.get_response().id == f"raw-{start}"
        assert result.get_response().model_version == "1"
        labels.append(result.as_numpy("label"))
        probs.append(result.as_numpy("probabilities"))
    np.testing.assert_array_equal(np.concatenate(labels), digits_ref["label"])
    np.testing.assert_allclose(np.concatenate(probs), digits_ref["probabilities"], rtol=0, atol=1e-7)
    assert float(np.mean(np.concatenate(labels) == DIGITS["y"])) > 0.9
    only = client.infer("digits", [inp], outputs=[tg.InferRequestedOutput("probabilities")])
    assert only.as_numpy("label") is None and only.as_numpy("probabilities").shape == (len(X) % 100 or 100, 10)


def test_typed_contents_match_in_process_onnxruntime(target, digits_ref):
    X = DIGITS["X"][:40]
    req = pb.ModelInferRequest(model_name="digits", id="typed-1")
    tensor = req.inputs.add(name="input", datatype="FP32", shape=list(X.shape))
    tensor.contents.fp32_contents.extend(X.reshape(-1).tolist())
    with grpc.insecure_channel(target) as channel:
        resp = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=10)
    result = tg.InferResult(resp)
    np.testing.assert_array_equal(result.as_numpy("label"), digits_ref["label"][:40])
    np.testing.assert_allclose(result.as_numpy("probabilities"), digits_ref["probabilities"][:40],
                               rtol=0, atol=1e-7)


def test_string_tensors_typed_and_raw(client, target, served):
    topics = served[1]
    texts = topics.feeds["text"]
    ref = reference(topics.path, {"text": texts})
    inp = tg.InferInput("text", list(texts.shape), "BYTES")
    inp.set_data_from_numpy(texts)
    raw = client.infer(topics.name, [inp])
    req = pb.ModelInferRequest(model_name=topics.name)
    tensor = req.inputs.add(name="text", datatype="BYTES", shape=list(texts.shape))
    tensor.contents.bytes_contents.extend(t.encode() for t in texts.reshape(-1))
    with grpc.insecure_channel(target) as channel:
        typed = tg.InferResult(pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=10))
    label = next(o.name for o in raw.get_response().outputs if o.datatype == "BYTES")
    want = np.asarray(ref[label]).reshape(-1)
    for result in (raw, typed):
        got = [b.decode() for b in result.as_numpy(label).reshape(-1)]
        assert got == [str(w) for w in want]


@pytest.mark.parametrize("build, field", [
    (lambda r: r.inputs.add(name="input", datatype="FP32", shape=[2, 63])
     .contents.fp32_contents.extend([0.0] * 126), "inputs[0].shape"),
    (lambda r: r.inputs.add(name="input", datatype="FLOAT", shape=[1, 64]), "inputs[0].datatype"),
    (lambda r: r.inputs.add(name="nope", datatype="FP32", shape=[1, 64])
     .contents.fp32_contents.extend([0.0] * 64), "nope"),
    (lambda r: r.inputs.add(name="input", datatype="FP32", shape=[1, 64])
     .contents.fp32_contents.extend([0.0] * 63), "inputs[0].contents.fp32_contents"),
    (lambda r: (r.inputs.add(name="input", datatype="FP32", shape=[1, 64]),
                r.raw_input_contents.append(b"\0" * 255)), "raw_input_contents[0]"),
    (lambda r: (r.inputs.add(name="input", datatype="FP32", shape=[1, 64])
                .contents.fp32_contents.extend([0.0] * 64),
                r.outputs.add(name="logits")), "outputs[0].name"),
])
def test_bad_inputs_are_invalid_argument_naming_the_field(target, build, field):
    req = pb.ModelInferRequest(model_name="digits")
    build(req)
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as err:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert field in err.value.details()


def test_unknown_model_is_not_found(client):
    inp = tg.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(DIGITS["X"][:1])
    assert status_of(lambda: client.infer("nope", [inp]))[0] == "StatusCode.NOT_FOUND"


def test_every_served_call_is_audited_once_with_its_request_id_and_trace(client, served):
    before = {r.request_id for r in wal_records(served[0])}
    inp = tg.InferInput("input", [3, 64], "FP32")
    inp.set_data_from_numpy(DIGITS["X"][:3])
    trace = "0af7651916cd43dd8448eb211c80319c"
    for i in range(5):
        client.infer("digits", [inp], headers={"x-request-id": f"audit-{i}",
                                              "traceparent": f"00-{trace}-b7ad6b7169203331-01"})
    records = [r for r in wal_records(served[0]) if r.request_id not in before]
    mine = [r for r in records if r.request_id.startswith("audit-")]
    assert sorted(r.request_id for r in mine) == [f"audit-{i}" for i in range(5)]
    for rec in mine:
        assert (rec.face, rec.model, rec.version, rec.host) == ("grpc", "digits", "1", "grpchost")
        assert rec.trace_id == trace
        assert rec.input_meta == [{"name": "input", "dtype": "<f4", "shape": [3, 64]}]


def test_statistics_and_repository(client):
    stats = client.get_inference_statistics("digits", as_json=True)
    assert stats["model_stats"][0]["name"] == "digits"
    assert int(stats["model_stats"][0]["inference_stats"]["success"]["count"]) > 0
    index = client.get_model_repository_index(as_json=True)
    assert {"name": "digits", "version": "1", "state": "READY"}.items() <= \
        next(m for m in index["models"] if m["name"] == "digits").items()


def test_client_deadline_is_the_request_deadline(make_stack):
    """A hung daemon, a default deadline of 10 s and a call with a 0.5 s gRPC deadline:
    DEADLINE_EXCEEDED at 0.5 s (the face's core call has the call's remaining time),
    and calls succeed again once the daemon runs."""
    stack = make_stack(FALCON_EDGE_DEADLINE_MS="10000")
    stack.start_grpc()
    client = tg.InferenceServerClient(stack.settings.grpc.bind)
    inp = tg.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(DIGITS["X"][:1])
    client.infer("digits", [inp])
    daemon = stack.procs["daemon"].popen
    daemon.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        code, _ = status_of(lambda: client.infer("digits", [inp], client_timeout=0.5))
        assert code == "StatusCode.DEADLINE_EXCEEDED"
        assert time.monotonic() - started < 1.5
    finally:
        daemon.send_signal(signal.SIGCONT)
    assert client.infer("digits", [inp], client_timeout=10).as_numpy("label").shape == (1,)


def test_api_keys_and_scopes(make_stack):
    stack = make_stack(start=False, FALCON_AUTH_ENABLED="true")
    predict = create_key(stack, "reader", "--scope", "predict")
    tenant = create_key(stack, "tenant", "--scope", "predict", "--model", "digits")
    stack.start()
    stack.start_grpc()
    wait_grpc_ready(stack.settings.grpc.public_bind)
    client = tg.InferenceServerClient(stack.settings.grpc.public_bind)
    inp = tg.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(DIGITS["X"][:1])
    assert client.is_server_live() and client.is_server_ready()  # open
    code, message = status_of(lambda: client.infer("digits", [inp]))
    assert code == "StatusCode.UNAUTHENTICATED" and "missing API key" in message
    code, _ = status_of(lambda: client.infer("digits", [inp],
                                             headers={"authorization": "Bearer fk_nope"}))
    assert code == "StatusCode.UNAUTHENTICATED"
    ok = client.infer("digits", [inp], headers={"authorization": f"Bearer {predict}"})
    assert ok.as_numpy("label").shape == (1,)
    code, _ = status_of(lambda: client.get_model_repository_index(
        headers={"authorization": f"Bearer {predict}"}))
    assert code == "StatusCode.PERMISSION_DENIED"
    # every model's statistics: a key limited to some models sees only theirs
    every = client.get_inference_statistics(headers={"authorization": f"Bearer {predict}"},
                                            as_json=True)
    assert {s["name"] for s in every["model_stats"]} == {"digits", "multi"}
    mine = client.get_inference_statistics(headers={"authorization": f"Bearer {tenant}"},
                                           as_json=True)
    assert {s["name"] for s in mine["model_stats"]} == {"digits"}
    direct = tg.InferenceServerClient(stack.settings.grpc.bind)  # HAProxy replaces it
    code, _ = status_of(lambda: direct.infer("digits", [inp], headers={
        "authorization": f"Bearer {predict}", "x-falcon-request-key": "forged-1"}))
    assert code == "StatusCode.PERMISSION_DENIED"


def test_haproxy_rate_limit_is_resource_exhausted_and_sets_the_request_key(make_stack):
    stack = make_stack(start=False, FALCON_AUTH_ENABLED="true",
                       FALCON_HAPROXY_RATE_PER_KEY="8", FALCON_HAPROXY_RATE_WINDOW_S="30")
    key = create_key(stack, "limited")
    stack.start()
    stack.start_grpc()
    wait_grpc_ready(stack.settings.grpc.public_bind)
    client = tg.InferenceServerClient(stack.settings.grpc.public_bind)
    inp = tg.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(DIGITS["X"][:1])
    codes = []
    for i in range(12):
        try:
            client.infer("digits", [inp], headers={"x-request-id": f"rl-{i}",
                                                   "authorization": f"Bearer {key}"})
            codes.append("OK")
        except InferenceServerException as exc:
            codes.append(exc.status())
    assert "OK" in codes and codes[-1] == "StatusCode.RESOURCE_EXHAUSTED", codes
    served = [r for r in wal_records(stack) if r.request_id.startswith("rl-")]
    assert len(served) == codes.count("OK")
    host = stack.settings.host_id
    assert all(r.request_key.startswith(f"{host}-") and r.face == "grpc" for r in served)


def test_calls_are_counted_in_the_edges_scrape(client, served):
    inp = tg.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(DIGITS["X"][:1])
    client.infer("digits", [inp])
    status_of(lambda: client.infer("nope", [inp]))
    text = request(served[0].settings.edge.bind, "GET", "/metrics").body.decode()
    ok = [line for line in text.splitlines() if line.startswith("falcon_requests_total{")
          and 'face="grpc"' in line and 'model="digits"' in line and 'status="200"' in line]
    missing = [line for line in text.splitlines() if line.startswith("falcon_requests_total{")
               and 'face="grpc"' in line and 'model="nope"' in line and 'status="404"' in line]
    assert ok and float(ok[0].split()[-1]) >= 1 and missing, text[:2000]
    assert 'falcon_request_duration_seconds_count{face="grpc",model="digits"}' in text


def test_multi_input_model_with_int_and_bool_tensors(client):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 4)).astype(np.float32)
    k = rng.integers(-5, 5, size=(7, 2)).astype(np.int64)
    mask = rng.random((7, 4)) > 0.5
    inputs = []
    for name, arr, dt in (("x", x, "FP32"), ("k", k, "INT64"), ("mask", mask, "BOOL")):
        inputs.append(tg.InferInput(name, list(arr.shape), dt))
        inputs[-1].set_data_from_numpy(arr)
    result = client.infer("multi", inputs)
    y, n = multi_io_expected(x, k, mask)
    np.testing.assert_allclose(result.as_numpy("y"), y, rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("n"), n)


def test_daemon_killed_gives_unavailable_within_the_deadline_then_calls_resume(make_stack):
    stack = make_stack(FALCON_EDGE_DEADLINE_MS="1000")
    stack.start_grpc()
    target = stack.settings.grpc.public_bind
    wait_grpc_ready(target)
    client = tg.InferenceServerClient(target)
    inp = tg.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(DIGITS["X"][:1])
    client.infer("digits", [inp])
    stack.procs["daemon"].stop(signal.SIGKILL)
    stop_at, seen = time.monotonic() + 3, 0
    while time.monotonic() < stop_at:
        started = time.monotonic()
        code, _ = status_of(lambda: client.infer("digits", [inp], client_timeout=5))
        assert code == "StatusCode.UNAVAILABLE"
        assert time.monotonic() - started < 1.5
        seen += 1
    assert seen >= 5
    stack.start_daemon()
    deadline, streak = time.monotonic() + 15, 0
    while streak < 20 and time.monotonic() < deadline:
        try:
            client.infer("digits", [inp], client_timeout=5)
            streak += 1
        except InferenceServerException:
            streak = 0
            time.sleep(0.1)
    assert streak >= 20


def test_zipmap_probabilities_are_a_tensor_matching_onnxruntime(client, served):
    built = served[2]
    ref = converter_reference(built)
    inp = tg.InferInput("X", list(built.feeds["X"].shape), "FP32")
    inp.set_data_from_numpy(built.feeds["X"])
    result = client.infer("rf_iris", [inp])
    probs = next(name for name in zipmap_labels(built.path))
    np.testing.assert_allclose(result.as_numpy(probs), ref[probs], rtol=0, atol=1e-6)
    label = next(o.name for o in result.get_response().outputs if o.name != probs)
    np.testing.assert_array_equal(result.as_numpy(label), ref[label])


@contextlib.contextmanager
def calls_in_a_loop(client: tg.InferenceServerClient, inp: tg.InferInput) -> Iterator[list[str]]:
    """digits called back to back from a thread while the block runs; each call's outcome
    ("OK" or "<status>: <message>") in the list yielded."""
    stop, results = threading.Event(), []

    def load() -> None:
        while not stop.is_set():
            try:
                client.infer("digits", [inp], client_timeout=10)
                results.append("OK")
            except InferenceServerException as exc:
                results.append(f"{exc.status()}: {exc.message()}")

    worker = threading.Thread(target=load)
    worker.start()
    try:
        yield results
    finally:
        stop.set()
        worker.join(20)


def test_haproxy_graceful_reload_loses_no_call(served, target):
    client = tg.InferenceServerClient(target)
    inp = tg.InferInput("input", [4, 64], "FP32")
    inp.set_data_from_numpy(DIGITS["X"][:4])
    with calls_in_a_loop(client, inp) as results:
        time.sleep(0.5)
        served[0].reload_haproxy()
        time.sleep(3)
    failed = [r for r in results if r != "OK"]
    assert len(results) > 20 and not failed, failed[:5]


def test_restarting_one_of_two_grpc_processes_loses_no_call(make_stack):
    """The stopping process reports not-ready for edge.drain_s first: HAProxy moves
    its calls to the standby (grpc.bind2) before it stops accepting."""
    stack = make_stack(start=False, FALCON_EDGE_DRAIN_S="2.5")
    second = stack.settings.grpc.bind.rpartition(":")[0] + f":{free_port()}"
    stack.env["FALCON_GRPC_BIND2"] = second
    stack.start(grpc=True)
    stack.start_grpc(name="grpc2", bind=second)
    target = stack.settings.grpc.public_bind
    wait_grpc_ready(target)
    client = tg.InferenceServerClient(target)
    inp = tg.InferInput("input", [2, 64], "FP32")
    inp.set_data_from_numpy(DIGITS["X"][:2])
    with calls_in_a_loop(client, inp) as results:
        time.sleep(0.5)
        stack.procs["grpc"].stop(signal.SIGTERM)
        time.sleep(0.5)
        stack.start_grpc()
        time.sleep(2.0)
    failed = [r for r in results if r != "OK"]
    assert len(results) > 20 and not failed, failed[:5]


def test_every_served_call_lands_once_in_postgresql(make_stack, pg_dsn):
    stack = make_stack(audit=True, FALCON_AUDIT_DSN=pg_dsn)
    stack.start_grpc()
    target = stack.settings.grpc.public_bind
    wait_grpc_ready(target)
    client = tg.InferenceServerClient(target)
    inp = tg.InferInput("input", [2, 64], "FP32")
    inp.set_data_from_numpy(DIGITS["X"][:2])
    ids = {f"pg-{i}" for i in range(10)}
    for rid in sorted(ids):
        client.infer("digits", [inp], headers={"x-request-id": rid})
    status_of(lambda: client.infer("nope", [inp], headers={"x-request-id": "pg-refused"}))
    deadline, rows = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT request_id, face, model, version, request_key "
                        "FROM audit.predictions WHERE request_id LIKE 'pg-%'")
            rows = cur.fetchall()
        conn.close()
        if len(rows) >= len(ids):
            break
        time.sleep(0.25)
    assert sorted(r[0] for r in rows) == sorted(ids)  # each once; the refused call not at all
    assert {(r[1], r[2], r[3]) for r in rows} == {("grpc", "digits", "1")}
    assert all(r[4].startswith(f"{stack.settings.host_id}-") for r in rows)  # HAProxy's key


def test_an_answer_over_the_size_limit_is_refused_before_it_is_audited(make_stack, tmp_path):
    """A small request whose answer grpcio could not send (500 classes a row, ranked as
    strings by the classification extension: ~9 kB a row) is RESOURCE_EXHAUSTED and
    leaves no audit record; it used to be recorded as served, then never delivered."""
    from tests.modelfactory import write_mlp_model

    repo = make_repo(tmp_path / "models")
    write_mlp_model(repo, "wide", input_dim=2, hidden=8, layers=1, classes=500, seed=0)
    stack = make_stack(repo=repo, FALCON_GRPC_MAX_MESSAGE_BYTES=str(64 << 10))
    stack.start_grpc()
    wait_grpc_ready(stack.settings.grpc.public_bind)
    client = tg.InferenceServerClient(stack.settings.grpc.public_bind)
    [inp_name] = [i.name for i in client.get_model_metadata("wide").inputs]
    inp = tg.InferInput(inp_name, [16, 2], "FP32")
    inp.set_data_from_numpy(np.ones((16, 2), dtype=np.float32))
    raw = client.infer("wide", [inp], outputs=[tg.InferRequestedOutput("probabilities")],
                       headers={"x-request-id": "wide-raw"})  # 32 kB of floats: fits
    assert raw.as_numpy("probabilities").shape == (16, 500)
    code, message = status_of(lambda: client.infer(
        "wide", [inp], outputs=[tg.InferRequestedOutput("probabilities", class_count=500)],
        headers={"x-request-id": "wide-ranked"}))
    assert code == "StatusCode.RESOURCE_EXHAUSTED" and "bytes" in message, message
    ids = {r.request_id for r in wal_records(stack)}
    assert "wide-raw" in ids and "wide-ranked" not in ids


def test_a_message_over_the_size_limit_is_resource_exhausted(make_stack):
    stack = make_stack(FALCON_GRPC_MAX_MESSAGE_BYTES="4096")
    stack.start_grpc()
    wait_grpc_ready(stack.settings.grpc.public_bind)
    client = tg.InferenceServerClient(stack.settings.grpc.public_bind)
    small = tg.InferInput("input", [2, 64], "FP32")  # 512 bytes of data
    small.set_data_from_numpy(DIGITS["X"][:2])
    assert client.infer("digits", [small]).as_numpy("label").shape == (2,)
    big = tg.InferInput("input", [100, 64], "FP32")  # 25,600 bytes
    big.set_data_from_numpy(DIGITS["X"][:100])
    code, _ = status_of(lambda: client.infer("digits", [big]))
    assert code == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.infer("digits", [small]).as_numpy("label").shape == (2,)
