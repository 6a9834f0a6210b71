"""Every served prediction is in the WAL before its response leaves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tritonclient.http as triton

from tests.httpx_lite import post_json
from tests.stacks import wal_records

ROOT = Path(__file__).resolve().parents[2]
DIGITS = np.load(ROOT / "tests" / "data" / "digits_test.npz")


def test_each_response_has_exactly_one_record_with_what_the_client_got(make_stack):
    stack = make_stack(FALCON_HOST_ID="hostA")
    addr = stack.settings.haproxy.bind
    answers = {}
    for i in range(20):
        rows = DIGITS["X"][i * 3:(i + 1) * 3].tolist()
        ans = post_json(addr, "/v1/models/digits/predict", {"instances": rows},
                        headers={"traceparent": f"00-{i:032x}-{1:016x}-01"})
        assert ans.status == 200
        answers[ans.json()["request_id"]] = (rows, ans.json())
    client = triton.InferenceServerClient(addr)
    inp = triton.InferInput("input", [2, 64], "FP32")
    inp.set_data_from_numpy(DIGITS["X"][:2])
    v2 = client.infer("digits", [inp], request_id="v2-one")
    records = wal_records(stack)
    assert len(records) == 21
    by_id = {r.request_id: r for r in records}
    assert len(by_id) == 21
    for rid, (rows, doc) in answers.items():
        rec = by_id[rid]
        assert (rec.model, rec.version, rec.face, rec.cached, rec.host) == ("digits", "1", "v1", False, "hostA")
        assert rec.labels == [p["label"] for p in doc["predictions"]]
        probs = [[p["probabilities"][str(c)] for c in range(10)] for p in doc["predictions"]]
        np.testing.assert_allclose(rec.outputs["probabilities"]["data"], probs, rtol=1e-6)
        stored = np.frombuffer(rec.inputs[4 + len(b"input\0<f4\0003,64\0"):], np.float32)
        np.testing.assert_array_equal(stored.reshape(3, 64), np.asarray(rows, np.float32))
        assert rec.input_meta == [{"name": "input", "dtype": "<f4", "shape": [3, 64]}]
        assert rec.trace_id is not None and len(rec.trace_id) == 32
        assert rec.latency_ms > 0
    v2rec = [r for r in records if r.face == "v2"][0]
    np.testing.assert_array_equal(v2rec.outputs["label"]["data"], v2.as_numpy("label"))
    assert json.dumps(v2rec.to_row()["outputs"], allow_nan=False)


def test_same_inputs_same_digest_whatever_the_face(make_stack):
    stack = make_stack()
    addr = stack.settings.haproxy.bind
    row = DIGITS["X"][:1]
    post_json(addr, "/v1/models/digits/predict", {"instances": row.tolist()})
    client = triton.InferenceServerClient(addr)
    inp = triton.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(row)
    client.infer("digits", [inp])
    digests = {r.face: r.input_digest for r in wal_records(stack)}
    assert digests["v1"] == digests["v2"]


def test_wal_refusing_records_turns_predictions_into_503(make_stack):
    # the disk-space guard demands more free space than any disk has
    stack = make_stack(FALCON_AUDIT_MIN_FREE_BYTES=str(1 << 50))
    ans = post_json(stack.settings.haproxy.bind, "/v1/models/digits/predict",
                    {"instances": DIGITS["X"][:1].tolist()})
    assert ans.status == 503, ans.body
    assert "audit" in ans.json()["error"] and ans.headers["retry-after"]
    assert wal_records(stack) == []


def test_trace_context_is_taken_or_created_echoed_and_audited(make_stack):
    stack = make_stack()
    addr = stack.settings.haproxy.bind
    row = {"instances": DIGITS["X"][:1].tolist()}
    given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    ans = post_json(addr, "/v1/models/digits/predict", row, headers={"traceparent": given})
    echoed = ans.headers["traceparent"].split("-")
    assert echoed[1] == "4bf92f3577b34da6a3ce929d0e0e4736" and echoed[2] != "00f067aa0ba902b7"
    fresh = post_json(addr, "/v1/models/digits/predict", row).headers["traceparent"].split("-")
    assert len(fresh[1]) == 32 and fresh[1] != echoed[1]
    traces = {r.trace_id for r in wal_records(stack)}
    assert traces == {echoed[1], fresh[1]}
