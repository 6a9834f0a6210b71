"""CPU cost of the typed edge <-> daemon protocol per digits infer, piece by piece (no servers).

    .venv/bin/python -m bench.wire_ops

One infer round trip as the edge and the daemon code it (wire/ops.py, wire/codec.py):
the edge builds and encodes the request, the daemon decodes it and its input tensor,
builds and encodes the answer, the edge decodes it and its output tensors. Each piece
is timed apart, then the frames (msgpack) and the whole round trip. Prints
microseconds per call (best of several rounds; noisy on a busy machine).
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

import numpy as np

from wire import frames, ops

INPUTS = [("input", np.zeros((1, 64), np.float32))]  # the digits model: 64 pixels in,
OUTPUTS = [("label", np.zeros((1,), np.int64)),      # a label and 10 probabilities out
           ("probabilities", np.zeros((1, 10), np.float32))]


def request() -> ops.Request:
    return ops.Request(1, ops.Infer(model="digits", version="1",
                                    inputs=ops.Tensors.of(INPUTS)), 2000)


def response() -> ops.Response:
    outputs = ops.Tensors.of(OUTPUTS)
    outputs.to_wire()  # (the daemon encodes inside its compute_output window)
    return ops.Response(1, ops.InferAnswer(model="digits", version="1", outputs=outputs,
                                           queue_us=1, compute_us=2, batch_rows=1))


def payload(kind: int, wire: dict) -> dict:
    return frames.decode_payload(frames.encode(kind, wire)[frames.HEADER.size:])


def round_trip() -> None:
    got = ops.Request.from_wire(payload(frames.REQUEST, request().to_wire()))
    got.op.inputs.arrays()
    answer = ops.Response.from_wire(payload(frames.RESPONSE, response().to_wire()),
                                    ops.InferAnswer).answer
    assert answer is not None
    answer.outputs.arrays()  # type: ignore[attr-defined]


def main() -> None:
    req_wire, resp_wire = request().to_wire(), response().to_wire()
    req_payload, resp_payload = payload(frames.REQUEST, req_wire), payload(frames.RESPONSE,
                                                                           resp_wire)
    cases: list[tuple[str, Callable[[], object]]] = [
        ("edge: build the request", request),
        ("edge: build + to_wire (tensor encoded)", lambda: request().to_wire()),
        ("daemon: Request.from_wire", lambda: ops.Request.from_wire(req_payload)),
        ("daemon: + input tensors decoded",
         lambda: ops.Request.from_wire(req_payload).op.inputs.arrays()),
        ("daemon: build + encode the answer", lambda: response().to_wire()),
        ("edge: Response.from_wire", lambda: ops.Response.from_wire(resp_payload,
                                                                    ops.InferAnswer)),
        ("frames: both, encode + decode", lambda: (payload(frames.REQUEST, req_wire),
                                                   payload(frames.RESPONSE, resp_wire))),
        ("round trip, all of the above", round_trip),
    ]
    n = 20000
    for name, func in cases:
        best = min(timeit.repeat(func, number=n, repeat=7)) / n
        print(f"{name:42s} {best * 1e6:7.2f} us")


if __name__ == "__main__":
    main()
