"""Write the golden wire frames next to this file.

    python -m tests.data.wire.make_golden          # (re)write the *.frame files
    python -m tests.data.wire.make_golden --check  # exit 1 if a file differs

The frames are the contract between edge and daemon: tests/unit/test_wire.py checks
that ``wire.frames.encode`` still produces these exact bytes and that the readers
decode them; tests/unit/test_wire_ops.py that each decodes into its ``wire.ops`` class
and re-encodes to the same bytes. Regenerate only on a deliberate protocol change, and commit the result.

- ``request_infer.frame``  REQUEST, op "infer", tensors x float32 [2, 3], mask bool [2]
- ``response_ok.frame``    RESPONSE, ok, one float32 [2, 3] output
- ``response_error.frame`` RESPONSE, error as plain data (Overloaded, retryable)
- ``request_strings.frame`` REQUEST, op "infer", a string tensor text [2, 2] (one
  element empty, one non-ASCII) and a float32 [2, 1]: the string layout
- ``torn.frame``           request_infer.frame cut in the middle of its payload
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from tests.data.golden_files import write_or_check
from wire import frames, messages

HERE = Path(__file__).resolve().parent

X = np.array([[0.0, 0.5, -1.5], [2.0, 1024.0, -0.25]], dtype=np.float32)
MASK = np.array([True, False])
PROBABILITIES = np.array([[0.25, 0.75, 0.0], [1.0, 0.0, 0.0]], dtype=np.float32)

REQUEST_INFER: dict[str, Any] = {
    "id": 7, "op": "infer", "deadline_ms": 2000, "model": "digits", "version": "1",
    "inputs": [messages.encode_tensor("x", X), messages.encode_tensor("mask", MASK)],
    "outputs": None,
}
RESPONSE_OK: dict[str, Any] = {
    "id": 7, "ok": True,
    "result": {"model": "digits", "version": "1",
               "outputs": [messages.encode_tensor("probabilities", PROBABILITIES)],
               "queue_us": 120, "compute_us": 340},
}
TEXT = np.array([["red", ""], ["caf\u00e9 \u2615", "blue"]], dtype=object)
REQUEST_STRINGS: dict[str, Any] = {
    "id": 9, "op": "infer", "deadline_ms": 2000, "model": "colors", "version": "1",
    "inputs": [messages.encode_tensor("text", TEXT),
               messages.encode_tensor("x", np.array([[0.5], [-2.0]], dtype=np.float32))],
    "outputs": None,
}
RESPONSE_ERROR: dict[str, Any] = {
    "id": 8, "ok": False, "error": messages.error(messages.OVERLOADED, "queue full"),
}

# file name -> (kind, payload) of every whole frame
FRAMES: dict[str, tuple[int, dict[str, Any]]] = {
    "request_infer.frame": (frames.REQUEST, REQUEST_INFER),
    "response_ok.frame": (frames.RESPONSE, RESPONSE_OK),
    "response_error.frame": (frames.RESPONSE, RESPONSE_ERROR),
    "request_strings.frame": (frames.REQUEST, REQUEST_STRINGS),
}


def torn(frame: bytes) -> bytes:
    """``frame`` cut halfway through its payload."""
    payload = len(frame) - frames.HEADER.size
    return frame[: frames.HEADER.size + payload // 2]


def golden() -> dict[str, bytes]:
    out = {name: frames.encode(kind, payload) for name, (kind, payload) in FRAMES.items()}
    out["torn.frame"] = torn(out["request_infer.frame"])
    return out


def main(argv: list[str]) -> int:
    return write_or_check(golden(), HERE, argv, "encode()")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
