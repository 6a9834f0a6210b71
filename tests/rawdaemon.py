"""Raw frames to a daemon's Unix socket, for tests that drive the daemon without an
edge: build an infer request, pipeline many over several connections at once (so the
daemon batches them) or send them one by one (so each runs alone), read the answers.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import numpy as np

from wire import frames, messages

CONNECTIONS = 8
PER_CONNECTION = 8


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(path)
    return sock


def infer(rid: int, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None,
          deadline_ms: int = 20000) -> bytes:
    return frames.encode(frames.REQUEST, {
        "id": rid, "op": "infer", "model": model, "deadline_ms": deadline_ms,
        "inputs": [messages.encode_tensor(n, a) for n, a in inputs.items()], "outputs": outputs})


def pipelined(path: str, batches: list[list[bytes]]) -> dict[int, dict[str, Any]]:
    """One connection per list; all connections send their frames at once, then read
    every answer. Returns the responses by request id."""
    answers: dict[int, dict[str, Any]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(batches))

    def client(reqs: list[bytes]) -> None:
        try:
            with connect(path) as sock:
                start.wait()
                sock.sendall(b"".join(reqs))
                for _ in reqs:
                    _, resp = frames.read_frame(sock)
                    answers[resp["id"]] = resp
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(reqs,)) for reqs in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return answers


def outputs_of(resp: dict[str, Any]) -> dict[str, np.ndarray]:
    assert resp["ok"], resp
    return dict(messages.decode_tensors(resp["result"]["outputs"], "outputs"))


def spread(frames_: list[bytes]) -> list[list[bytes]]:
    return [frames_[i::CONNECTIONS] for i in range(CONNECTIONS)]


def coalesced(answers: dict[int, dict[str, Any]], rows: dict[int, int]) -> int:
    """How many answers came from a run that carried more than their own rows."""
    return sum(a["result"]["batch_rows"] > rows[rid] for rid, a in answers.items())


def one_by_one(path: str, reqs: list[bytes]) -> list[dict[str, Any]]:
    """Each request sent only after the previous one is answered: each runs alone."""
    with connect(path) as sock:
        out = []
        for req in reqs:
            sock.sendall(req)
            out.append(frames.read_frame(sock)[1])
    return out
