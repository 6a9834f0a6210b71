"""wire.ops: every op and answer class encodes and decodes, the golden frames decode into
their classes and re-encode to the same bytes, and a malformed field is a MessageError
naming it (the daemon answers it as InvalidInput with that field)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wire import codec, frames, messages, ops
from wire.messages import MessageError, RemoteError

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "wire"
X = ops.Tensors.of([("x", np.arange(6, dtype=np.float32).reshape(2, 3)),
                    ("text", np.array(["a", "caf\u00e9"], dtype=object))])

# one request of every op, and one answer of every answer class
REQUESTS: list[ops.Op] = [
    ops.Ping(), ops.Models(), ops.Metadata(model="digits"),
    ops.Metadata(model="digits", version="2"),
    ops.Infer(model="digits", version="1", inputs=X),
    ops.Infer(model="digits", inputs=X, outputs=["label"], trace="00-" + "a" * 32 + "-" + "b" * 16 + "-01"),
    ops.Index(), ops.Load(model="mlp"), ops.Load(model="mlp", version="2"),
    ops.Unload(model="mlp", version="1"), ops.Split(model="mlp", split={"1": 90, "2": 10}),
    ops.Rollback(model="mlp"), ops.Stats(), ops.Stats(model="mlp", version="1"),
]
ANSWERS: list[ops.Answer] = [
    ops.PingAnswer(ready=True, draining=False, models=2),
    ops.PingAnswer(ready=False, draining=True, models=0, peer="svc (uid 1, pid 2)"),
    ops.ModelsAnswer(models=[ops.ModelEntry(name="mlp", versions=["1", "2"],
                                            default_version="2", split={"1": 100})]),
    ops.MetadataAnswer(name="mlp", version="1", inputs=[{"name": "x", "dtype": "<f4",
                                                         "shape": [-1, 4]}],
                       outputs=[{"name": "y", "dtype": "<i8", "shape": [-1],
                                 "class_labels": [0, 1]}],
                       config={"max_batch_size": 8}, weight_bytes=64, content_digest="ab",
                       batching={"enabled": True}),
    ops.InferAnswer(model="mlp", version="1", outputs=X, queue_us=3, compute_us=4,
                    batch_rows=2),
    ops.IndexAnswer(models=[ops.IndexEntry(name="mlp", version="3", state="UNAVAILABLE",
                                           reason="bad graph")]),
    ops.LoadAnswer(model="mlp", loaded=["1", "2"]),
    ops.UnloadAnswer(model="mlp", unloaded=["1"]),
    ops.SplitAnswer(model="mlp", old={}, new={"1": 100}),
    ops.RollbackAnswer(model="mlp", old={"1": 100}, new={}),
    ops.StatsAnswer(model_stats=[{"name": "mlp", "version": "1", "inference_count": 3}]),
]


def through_a_frame(kind: int, payload: dict[str, Any]) -> dict[str, Any]:
    frame = frames.encode(kind, payload)
    return frames.decode_payload(frame[frames.HEADER.size:])


def test_every_op_and_answer_class_has_a_case() -> None:
    assert {type(r) for r in REQUESTS} == set(ops.OPS.values())
    assert {type(a) for a in ANSWERS} == set(ops.ANSWERS)


@pytest.mark.parametrize("op", REQUESTS, ids=repr)
def test_request_round_trips_through_a_frame(op: ops.Op) -> None:
    req = ops.Request(id=5, op=op, deadline_ms=1500)
    payload = through_a_frame(frames.REQUEST, req.to_wire())
    assert payload["op"] == op.OP and payload["id"] == 5 and payload["deadline_ms"] == 1500
    assert ops.Request.from_wire(payload) == req
    assert type(ops.Request.from_wire(payload).op) is type(op)


@pytest.mark.parametrize("answer", ANSWERS, ids=repr)
def test_answer_round_trips_through_a_frame(answer: ops.Answer) -> None:
    payload = through_a_frame(frames.RESPONSE, ops.Response(9, answer).to_wire())
    assert payload["ok"] is True
    assert ops.Response.from_wire(payload, type(answer)) == ops.Response(9, answer)


def test_tensors_keep_their_arrays_and_bytes() -> None:
    req = ops.Request.from_wire(through_a_frame(
        frames.REQUEST, ops.Request(1, ops.Infer(model="m", inputs=X), 100).to_wire()))
    assert isinstance(req.op, ops.Infer)
    got = req.op.inputs.arrays()
    assert [n for n, _ in got] == ["x", "text"]
    np.testing.assert_array_equal(got[0][1], X.arrays()[0][1])
    assert got[1][1].tolist() == ["a", "caf\u00e9"]


def test_optional_fields_travel_as_nil_except_the_ones_older_peers_never_sent() -> None:
    wire = ops.Infer(model="m", inputs=ops.Tensors.of([])).to_wire()
    assert wire == {"model": "m", "version": None, "inputs": [], "outputs": None}
    assert ops.Infer(model="m", inputs=ops.Tensors.of([]), trace="t").to_wire()["trace"] == "t"
    assert ops.Load(model="m").to_wire() == {"model": "m", "version": None}
    assert "peer" not in ops.PingAnswer(ready=True, draining=False, models=1).to_wire()
    assert "batch_rows" not in ops.InferAnswer(model="m", version="1",
                                               outputs=ops.Tensors.of([])).to_wire()
    assert ops.Stats.from_wire({}) == ops.Stats()  # absent: the default


# --- the golden frames ---------------------------------------------------------------------

GOLDEN = {  # file -> the class its payload decodes into
    "request_infer.frame": ops.Infer,
    "request_strings.frame": ops.Infer,
    "response_ok.frame": ops.InferAnswer,  # the answer to request_infer.frame
    "response_error.frame": RemoteError,
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_frame_decodes_into_its_class_and_re_encodes_to_the_same_bytes(name: str) -> None:
    data = (GOLDEN_DIR / name).read_bytes()
    kind, length = frames.decode_header(data[:frames.HEADER.size], frames.DEFAULT_MAX_FRAME)
    payload = frames.decode_payload(data[frames.HEADER.size:])
    typed: ops.Request | ops.Response
    if kind == frames.REQUEST:
        typed = ops.Request.from_wire(payload)
        assert type(typed.op) is GOLDEN[name]
        assert isinstance(typed.op, ops.Infer)
        assert [a.shape for _, a in typed.op.inputs.arrays()]  # the tensors decode too
    else:
        typed = ops.Response.from_wire(payload, ops.InferAnswer)
        got = typed.error if GOLDEN[name] is RemoteError else typed.answer
        assert type(got) is GOLDEN[name]
        if isinstance(got, ops.InferAnswer):
            assert [(n, a.dtype.str, a.shape) for n, a in got.outputs.arrays()] == [
                ("probabilities", "<f4", (2, 3))]
    assert typed.to_wire() == payload
    assert frames.encode(kind, typed.to_wire()) == data


def test_every_whole_golden_frame_is_covered() -> None:
    whole = {p.name for p in GOLDEN_DIR.glob("*.frame")} - {"torn.frame"}
    assert whole == set(GOLDEN)


# --- malformed messages name their field ----------------------------------------------------

def infer(**change: Any) -> dict[str, Any]:
    payload = ops.Request(3, ops.Infer(model="m", inputs=X), 100).to_wire()
    payload.update(change)
    return {k: v for k, v in payload.items() if v != "DROP"}


@pytest.mark.parametrize("payload, field, reason", [
    (infer(model=7), "model", "expected a string, got int"),
    (infer(model="DROP"), "model", "missing"),
    (infer(model=None), "model", "expected a string, got nil"),
    (infer(version=2), "version", "expected a string, got int"),
    (infer(inputs={"x": 1}), "inputs", "expected a list of tensors, got"),
    (infer(inputs="DROP"), "inputs", "missing"),
    (infer(outputs="label"), "outputs", "expected a list of strings, got str"),
    (infer(outputs=["a", 1]), "outputs", "expected a list of strings, got list"),
    (infer(trace=12), "trace", "expected a string, got int"),
    (infer(deadline_ms="soon"), "deadline_ms", "expected an integer (milliseconds), got str"),
    (infer(deadline_ms=True), "deadline_ms", "expected an integer"),
    (infer(id="x"), "id", "expected an integer, got str"),
    ({"id": 1, "op": "metadata"}, "model", "missing"),
    ({"id": 1, "op": "load", "model": ["m"]}, "model", "expected a string, got list"),
    ({"id": 1, "op": "unload", "model": "m", "version": 1.5}, "version", "expected a string"),
    ({"id": 1, "op": "split", "model": "m"}, "split", "missing"),
    ({"id": 1, "op": "split", "model": "m", "split": [1]}, "split",
     "expected a map of version -> weight"),
    ({"id": 1, "op": "split", "model": "m", "split": {"1": "90"}}, "split",
     "weight of version '1' must be an integer, got '90'"),
    ({"id": 1, "op": "rollback"}, "model", "missing"),
    ({"id": 1, "op": "stats", "model": 3}, "model", "expected a string, got int"),
])
def test_a_malformed_request_names_its_field(payload: dict[str, Any], field: str,
                                              reason: str) -> None:
    with pytest.raises(MessageError) as err:
        ops.Request.from_wire(payload)
    assert err.value.field == field
    assert err.value.reason.startswith(reason), err.value.reason
    assert str(err.value) == f"{field}: {err.value.reason}"
    assert not isinstance(err.value, ops.UnknownOp)


@pytest.mark.parametrize("name", ["explode", None, 3, ""])
def test_an_unknown_op_is_its_own_error(name: Any) -> None:
    with pytest.raises(ops.UnknownOp) as err:
        ops.Request.from_wire({"id": 1, "op": name})
    assert err.value.field == "op" and "known: ping, models" in err.value.reason


def test_a_malformed_tensor_is_named_when_the_receiver_decodes_it() -> None:
    bad = {"name": "x", "dtype": "<f4", "shape": [1, 4], "data": b"xx"}
    req = ops.Request.from_wire(infer(inputs=[bad]))  # the envelope and fields are fine
    assert isinstance(req.op, ops.Infer)
    with pytest.raises(MessageError, match=r"^inputs\[0\]\.data: 2 bytes"):
        req.op.inputs.arrays()


@pytest.mark.parametrize("answer, result, field", [
    (ops.PingAnswer, {"ready": "yes", "draining": False, "models": 1}, "result.ready"),
    (ops.PingAnswer, {"ready": True, "draining": False}, "result.models"),
    (ops.ModelsAnswer, {"models": [{"name": "m", "versions": ["1"]}]},
     "result.models[0].default_version"),
    (ops.ModelsAnswer, {"models": [{"name": "m", "versions": [1], "default_version": "1"}]},
     "result.models[0].versions"),
    (ops.IndexAnswer, {"models": "all"}, "result.models"),
    (ops.MetadataAnswer, {"name": "m", "version": "1", "inputs": [], "outputs": [3]},
     "result.outputs"),
    (ops.InferAnswer, {"model": "m", "version": "1", "outputs": [], "queue_us": 1.5},
     "result.queue_us"),
    (ops.SplitAnswer, {"model": "m", "old": {}, "new": {"1": None}}, "result.new"),
    (ops.StatsAnswer, {"model_stats": {}}, "result.model_stats"),
    (ops.LoadAnswer, None, "result"),
])
def test_a_malformed_answer_names_its_field(answer: type[ops.Answer], result: Any,
                                            field: str) -> None:
    with pytest.raises(MessageError) as err:
        ops.Response.from_wire({"id": 1, "ok": True, "result": result}, answer)
    assert err.value.field == field


def test_an_error_answer_is_remote_error_data_with_its_field() -> None:
    data = messages.error(messages.NOT_FOUND, "model 'x' is not loaded", "model")
    resp = ops.Response.from_wire({"id": 4, "ok": False, "error": data}, ops.MetadataAnswer)
    assert resp.answer is None and resp.error == RemoteError(
        messages.NOT_FOUND, "model 'x' is not loaded", False, "model")
    assert resp.to_wire() == {"id": 4, "ok": False, "error": data}
    assert ops.Response.from_wire({"id": 4, "ok": False}, ops.PingAnswer).error == RemoteError(
        messages.INTERNAL, "", False)


def test_ops_say_whether_they_may_be_sent_twice() -> None:
    assert {n for n, cls in ops.OPS.items() if not cls.IDEMPOTENT} == {
        "load", "unload", "split", "rollback"}


def test_a_field_whose_annotation_has_no_codec_fails_when_its_class_is_checked() -> None:
    @dataclass(frozen=True, slots=True, kw_only=True)
    class Odd(codec.Message):
        when: float

    with pytest.raises(KeyError, match="float"):
        codec.check(Odd)
