"""edge.grpcface.codec: Triton's gRPC tensors to numpy and back, no server."""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import InvalidInput, PayloadTooLarge
from edge.grpcface.codec import decode_infer_request, encode_infer_response
from edge.grpcface.proto import grpc_service_pb2 as pb
from wire.messages import pack_strings


def request(*tensors: tuple[str, str, list[int]]) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m")
    for name, datatype, shape in tensors:
        req.inputs.add(name=name, datatype=datatype, shape=shape)
    return req


def test_typed_and_raw_give_the_same_arrays():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    s = np.array([["a", "caf\u00e9"]], dtype=object)
    typed = request(("x", "FP32", [2, 3]), ("s", "BYTES", [1, 2]), ("b", "BOOL", [2]))
    typed.inputs[0].contents.fp32_contents.extend(x.reshape(-1).tolist())
    typed.inputs[1].contents.bytes_contents.extend([b"a", "caf\u00e9".encode()])
    typed.inputs[2].contents.bool_contents.extend([True, False])
    typed.outputs.add(name="y")
    raw = request(("x", "FP32", [2, 3]), ("s", "BYTES", [1, 2]), ("b", "BOOL", [2]))
    raw.raw_input_contents.extend([x.tobytes(), pack_strings(s), b"\1\0"])
    for req in (typed, raw):
        inputs, outputs = decode_infer_request(req, 100)
        got = dict(inputs)
        np.testing.assert_array_equal(got["x"], x)
        assert got["s"].tolist() == s.tolist()
        assert got["b"].dtype == np.bool_ and got["b"].tolist() == [True, False]
    assert decode_infer_request(typed, 100)[1] == ["y"]
    assert decode_infer_request(raw, 100)[1] is None


@pytest.mark.parametrize("build, field", [
    (lambda r: None, "inputs"),
    (lambda r: r.inputs.add(name="x", datatype="FLOAT", shape=[1]), "inputs[0].datatype"),
    (lambda r: r.inputs.add(name="x", datatype="FP32", shape=[1, -2]), "inputs[0].shape[1]"),
    (lambda r: r.inputs.add(name="x", datatype="FP16", shape=[1])
     .contents.fp32_contents.append(1.0), "inputs[0].contents"),
    (lambda r: r.inputs.add(name="x", datatype="FP32", shape=[1])
     .contents.fp64_contents.append(1.0), "inputs[0].contents.fp64_contents"),
    (lambda r: r.inputs.add(name="x", datatype="INT8", shape=[1])
     .contents.int_contents.append(300), "inputs[0].contents.int_contents[0]"),
    (lambda r: r.inputs.add(name="x", datatype="BYTES", shape=[1])
     .contents.bytes_contents.append(b"\xff"), "inputs[0].contents.bytes_contents[0]"),
    (lambda r: (r.inputs.add(name="x", datatype="FP32", shape=[2]),
                r.raw_input_contents.append(b"\0" * 4)), "raw_input_contents[0]"),
    (lambda r: (r.inputs.add(name="x", datatype="BYTES", shape=[1]),
                r.raw_input_contents.append(b"\5\0\0\0ab")), "raw_input_contents[0]"),
    (lambda r: (r.inputs.add(name="x", datatype="FP32", shape=[1]),
                r.inputs.add(name="y", datatype="FP32", shape=[1]),
                r.raw_input_contents.append(b"\0" * 4)), "raw_input_contents"),
    (lambda r: (r.inputs.add(name="x", datatype="FP32", shape=[1])
                .contents.fp32_contents.append(1.0),
                r.raw_input_contents.append(b"\0" * 4)), "inputs[0].contents"),
    (lambda r: (r.inputs.add(name="x", datatype="FP32", shape=[0]),
                r.inputs.add(name="x", datatype="FP32", shape=[0])), "inputs[1].name"),
    (lambda r: (r.inputs.add(name="x", datatype="FP32", shape=[0]),
                r.outputs.add(name="p"), r.outputs.add(name="p")), "outputs[1].name"),
])
def test_refusals_name_the_field(build, field):
    req = pb.ModelInferRequest(model_name="m")
    build(req)
    with pytest.raises(InvalidInput) as err:
        decode_infer_request(req, 100)
    assert err.value.field == field, err.value


def test_too_many_elements_is_too_large():
    with pytest.raises(PayloadTooLarge):
        decode_infer_request(request(("x", "FP32", [10, 11])), 100)


def test_answers_are_raw_little_endian_and_strings_length_prefixed():
    big = np.array([1.5, 2.5], dtype=">f4")
    resp = encode_infer_response("m", "2", "r1", [("p", big),
                                                  ("l", np.array(["x", "yz"], dtype=object))])
    assert (resp.model_name, resp.model_version, resp.id) == ("m", "2", "r1")
    assert [(o.name, o.datatype, list(o.shape)) for o in resp.outputs] == \
        [("p", "FP32", [2]), ("l", "BYTES", [2])]
    assert np.frombuffer(resp.raw_output_contents[0], "<f4").tolist() == [1.5, 2.5]
    assert resp.raw_output_contents[1] == b"\1\0\0\0x\2\0\0\0yz"


class FakeContext:
    """What edge.grpcface.service.Call reads of a grpcio ServicerContext."""

    def __init__(self, metadata: tuple[tuple[str, str], ...], remaining: float | None) -> None:
        self.metadata, self.remaining, self.trailing = metadata, remaining, ()

    def invocation_metadata(self):
        return self.metadata

    def time_remaining(self):
        return self.remaining

    def set_trailing_metadata(self, md):
        self.trailing = md


def test_a_call_reads_its_deadline_key_ids_and_trace_from_metadata():
    from edge.errors import Forbidden
    from edge.grpcface.service import Call

    trace = "0af7651916cd43dd8448eb211c80319c"
    ctx = FakeContext((("authorization", "Bearer  fk_x "), ("x-request-id", "r-1"),
                       ("traceparent", f"00-{trace}-b7ad6b7169203331-01")), 0.25)
    call = Call(ctx, "s" * 43, "h")
    assert call.timeout_ms() == 250 and call.credential() == "fk_x"
    rc = call.request_context("key1")
    assert (rc.request_id, rc.face, rc.trace_id, rc.api_key_id) == ("r-1", "grpc", trace, "key1")
    assert rc.request_key.startswith("h-") and dict(ctx.trailing)["x-request-id"] == "r-1"
    assert Call(FakeContext((), None), None, "h").timeout_ms() is None
    with pytest.raises(Forbidden):  # HAProxy's metadata without its secret
        Call(FakeContext((("x-falcon-request-key", "k"),), None), "s" * 43, "h")
    trusted = Call(FakeContext((("x-falcon-proxy-secret", "s" * 43),
                                ("x-falcon-request-key", "front-1")), None), "s" * 43, "h")
    assert trusted.request_key == "front-1"
