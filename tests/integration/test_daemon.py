"""The inference daemon on its own: protocol, readiness, shared memory, drain."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import shm
from tests.modelfactory import write_mlp_model
from wire import frames, messages


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    return sock


def infer_req(rid: int, rows: np.ndarray, deadline_ms: int = 5000, model: str = "digits") -> bytes:
    return frames.encode(frames.REQUEST, {
        "id": rid, "op": "infer", "model": model, "deadline_ms": deadline_ms,
        "inputs": [messages.encode_tensor("input", rows)], "outputs": None})


def segments(stack) -> list[str]:
    return shm.list_segments(stack.env["FALCON_DAEMON_SHM_PREFIX"])


def test_several_requests_in_flight_on_one_connection(make_stack):
    stack = make_stack(start=False)
    stack.start_daemon()
    rows = np.random.default_rng(0).uniform(0, 16, size=(30, 64)).astype(np.float32)
    with connect(stack.settings.daemon_socket) as sock:
        sock.sendall(b"".join(infer_req(i, rows[i * 10:(i + 1) * 10]) for i in range(3)))
        answers = {}
        for _ in range(3):
            kind, resp = frames.read_frame(sock)
            assert kind == frames.RESPONSE and resp["ok"], resp
            answers[resp["id"]] = resp["result"]
    assert sorted(answers) == [0, 1, 2]
    model = Path(stack.settings.daemon.model_repository) / "digits" / "1" / "model.onnx"
    ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for i, result in answers.items():  # each answer belongs to its own request's rows
        outs = dict(messages.decode_tensors(result["outputs"], "outputs"))
        label, probs = ref.run(["label", "probabilities"], {"input": rows[i * 10:(i + 1) * 10]})
        np.testing.assert_array_equal(outs["label"], label)
        np.testing.assert_allclose(outs["probabilities"], probs, atol=1e-7)


def test_errors_come_back_as_data_and_the_connection_survives(make_stack):
    stack = make_stack(start=False)
    stack.start_daemon()
    with connect(stack.settings.daemon_socket) as sock:
        cases = [
            ({"id": 1, "op": "explode"}, messages.PROTOCOL_ERROR),
            ({"id": 2, "op": "metadata", "model": "nope"}, messages.NOT_FOUND),
            ({"id": 3, "op": "infer", "model": "digits", "deadline_ms": 0, "inputs": []},
             messages.DEADLINE_EXCEEDED),
            ({"id": 4, "op": "infer", "model": "digits", "deadline_ms": 1000,
              "inputs": [{"name": "input", "dtype": "<f4", "shape": [1, 64], "data": b"xx"}]},
             messages.INVALID_INPUT),
            ({"id": 5, "op": "infer", "model": "digits", "deadline_ms": 1000,
              "inputs": [messages.encode_tensor("input", np.zeros((1, 64), np.float64))]},
             messages.INVALID_INPUT),
        ]
        for req, expected in cases:
            sock.sendall(frames.encode(frames.REQUEST, req))
            _, resp = frames.read_frame(sock)
            assert resp["id"] == req["id"] and resp["ok"] is False
            assert resp["error"]["type"] == expected, resp
            assert resp["error"]["retryable"] is False
            if req["id"] == 5:  # the field at fault travels apart from the message
                assert resp["error"]["field"] == "input 'input'", resp
                assert resp["error"]["message"] == "dtype <f8, model expects <f4", resp
        sock.sendall(frames.encode(frames.REQUEST, {"id": 6, "op": "split", "model": "digits",
                                                    "split": {"7": 100}}))
        _, resp = frames.read_frame(sock)
        assert resp["error"]["type"] == messages.INVALID_INPUT and resp["error"]["field"] == "split"
        assert resp["error"]["message"].startswith("version '7' is not loaded"), resp
        sock.sendall(infer_req(9, np.zeros((1, 64), np.float32)))
        assert frames.read_frame(sock)[1]["ok"] is True
        sock.sendall(frames.encode(frames.REQUEST, {"id": 10, "op": "stats", "model": "digits"}))
        [stats] = frames.read_frame(sock)[1]["result"]["model_stats"]
        # the two refused inputs (ids 4, 5) are failures of digits/1, the last infer a success
        assert stats["inference_stats"]["fail"]["count"] == 2, stats
        assert stats["inference_stats"]["success"]["count"] == 1, stats
    with connect(stack.settings.daemon_socket) as sock:  # garbage -> error frame, then close
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        _, resp = frames.read_frame(sock)
        assert resp["error"]["type"] == messages.PROTOCOL_ERROR
        with pytest.raises(frames.ConnectionClosed):
            frames.read_frame(sock)


def test_a_malformed_field_is_invalid_input_naming_it_and_nothing_is_counted(make_stack):
    """Each op is decoded into its wire.ops class before it runs: a field of the wrong
    type or a missing one is InvalidInput naming that field, an unknown op a
    ProtocolError naming ``op``; the connection serves on."""
    stack = make_stack(start=False)
    stack.start_daemon()
    ok = messages.encode_tensor("input", np.zeros((1, 64), np.float32))
    cases = [
        ({"op": "explode"}, messages.PROTOCOL_ERROR, "op"),
        ({"op": "metadata"}, messages.INVALID_INPUT, "model"),
        ({"op": "load", "model": 5}, messages.INVALID_INPUT, "model"),
        ({"op": "unload", "model": "digits", "version": 1.5}, messages.INVALID_INPUT, "version"),
        ({"op": "split", "model": "digits", "split": {"1": "all"}}, messages.INVALID_INPUT,
         "split"),
        ({"op": "stats", "model": ["digits"]}, messages.INVALID_INPUT, "model"),
        ({"op": "infer", "model": "digits", "deadline_ms": "soon", "inputs": [ok]},
         messages.INVALID_INPUT, "deadline_ms"),
        ({"op": "infer", "model": "digits", "deadline_ms": 1000, "inputs": {"input": ok}},
         messages.INVALID_INPUT, "inputs"),
        ({"op": "infer", "model": "digits", "deadline_ms": 1000, "inputs": [ok], "trace": 7},
         messages.INVALID_INPUT, "trace"),
        ({"op": "infer", "deadline_ms": 1000, "inputs": [ok]}, messages.INVALID_INPUT, "model"),
    ]
    with connect(stack.settings.daemon_socket) as sock:
        for rid, (req, kind, field) in enumerate(cases, 1):
            sock.sendall(frames.encode(frames.REQUEST, {"id": rid, **req}))
            _, resp = frames.read_frame(sock)
            assert resp["id"] == rid and resp["ok"] is False, resp
            assert (resp["error"]["type"], resp["error"].get("field")) == (kind, field), resp
            assert resp["error"]["message"] and resp["error"]["retryable"] is False
        sock.sendall(infer_req(99, np.zeros((1, 64), np.float32)))
        assert frames.read_frame(sock)[1]["ok"] is True
        sock.sendall(frames.encode(frames.REQUEST, {"id": 100, "op": "stats", "model": "digits"}))
        [stats] = frames.read_frame(sock)[1]["result"]["model_stats"]
        assert stats["inference_stats"]["fail"]["count"] == 0, stats  # refused before a version
        assert stats["inference_stats"]["success"]["count"] == 1, stats
        sock.sendall(frames.encode(frames.REQUEST, {"id": 101, "op": "models"}))
        listing = {m["name"]: m for m in frames.read_frame(sock)[1]["result"]["models"]}
        assert listing["digits"]["split"] == {}, listing  # the refused split changed nothing


def test_ready_is_announced_to_systemd_only_once_models_are_loaded(make_stack, tmp_path):
    notify_path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    listener.settimeout(60)
    stack = make_stack(start=False, NOTIFY_SOCKET=notify_path)
    proc = stack._spawn("daemon", [stack.python, "-m", "falconctl", "daemon"])
    try:
        message = listener.recv(4096).decode()
        assert "READY=1" in message and f"MAINPID={proc.popen.pid}" in message
        # at the moment READY=1 arrives, the model is servable
        with connect(stack.settings.daemon_socket) as sock:
            sock.sendall(infer_req(1, np.zeros((1, 64), np.float32)))
            assert frames.read_frame(sock)[1]["ok"] is True
        proc.popen.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in listener.recv(4096).decode()
        assert proc.popen.wait(30) == 0
    finally:
        listener.close()


@pytest.fixture
def heavy_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "heavy-models"
    # 1024 -> 3 x 1536 -> 10: ~25 MB of float32 weights
    write_mlp_model(repo, "mlp", input_dim=1024, hidden=1536, layers=3, classes=10, seed=3)
    return repo


def rss_anon_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon")


def test_weights_live_in_shared_memory_not_in_private_memory(make_stack, heavy_repo):
    stack = make_stack(start=False, repo=heavy_repo)
    daemon = stack.start_daemon()
    [name] = segments(stack)
    weight_bytes = os.path.getsize(shm.segment_path(name))
    assert weight_bytes > 20e6
    rows = np.random.default_rng(0).normal(size=(8, 1024)).astype(np.float32)
    with connect(stack.settings.daemon_socket) as sock:
        for i in range(5):
            sock.sendall(infer_req(i, rows, model="mlp"))
            assert frames.read_frame(sock)[1]["ok"]
    anon = rss_anon_kb(daemon.popen.pid) * 1024
    # A private copy of the weights (what prepacking or a plain session makes)
    # would put >= weight_bytes in anonymous memory on top of the interpreter
    # and ONNX Runtime (~60 MB here). Shared weights are not anonymous memory.
    shmem = int([ln for ln in Path(f"/proc/{daemon.popen.pid}/status").read_text().splitlines()
                 if ln.startswith("RssShmem:")][0].split()[1]) * 1024
    assert shmem >= 0.9 * weight_bytes, "the session is not reading the shared segment"
    baseline = make_stack(start=False)
    base = baseline.start_daemon()
    base_anon = rss_anon_kb(base.popen.pid) * 1024
    assert anon - base_anon < 0.3 * weight_bytes, (anon, base_anon, weight_bytes)


def test_restart_reattaches_to_intact_segments_and_clean_stop_unlinks(make_stack, heavy_repo):
    stack = make_stack(start=False, repo=heavy_repo)
    first = stack.start_daemon()
    [name] = segments(stack)
    first.stop(signal.SIGKILL)  # crash: segments stay
    assert segments(stack) == [name]
    second = stack.start_daemon()
    assert "re-attached" in second.tail()
    assert re.search(r"re-attached, \d+ weight bytes\), warmed up in", second.tail())
    assert segments(stack) == [name]
    assert second.stop(signal.SIGTERM) == 0
    assert segments(stack) == []
    assert not os.path.exists(stack.settings.daemon_socket)


def test_corrupt_segment_is_detected_and_rebuilt(make_stack, heavy_repo):
    stack = make_stack(start=False, repo=heavy_repo)
    stack.start_daemon().stop(signal.SIGKILL)
    [name] = segments(stack)
    with open(shm.segment_path(name), "r+b") as fh:  # flip bytes inside the weights
        fh.seek(os.path.getsize(shm.segment_path(name)) - 1000)
        fh.write(b"\xff" * 8)
    daemon = stack.start_daemon()
    assert "corrupt" in daemon.tail() and "published" in daemon.tail()
    rows = np.ones((2, 1024), np.float32)
    with connect(stack.settings.daemon_socket) as sock:
        sock.sendall(infer_req(1, rows, model="mlp"))
        assert frames.read_frame(sock)[1]["ok"]


def test_sigterm_drains_in_flight_requests(make_stack, heavy_repo):
    stack = make_stack(start=False, repo=heavy_repo, FALCON_DAEMON_INFERENCE_THREADS="1")
    daemon = stack.start_daemon()
    rows = np.random.default_rng(0).normal(size=(256, 1024)).astype(np.float32)
    with connect(stack.settings.daemon_socket) as sock:
        sock.sendall(b"".join(infer_req(i, rows, 30000, "mlp") for i in range(6)))
        time.sleep(0.05)
        daemon.popen.send_signal(signal.SIGTERM)
        answers = [frames.read_frame(sock)[1] for _ in range(6)]
    assert all(a["ok"] for a in answers), [a.get("error") for a in answers]
    assert daemon.popen.wait(30) == 0
    assert segments(stack) == []


def test_second_daemon_refuses_to_steal_the_socket(make_stack):
    stack = make_stack(start=False)
    stack.start_daemon()
    other = stack._spawn("daemon2", [stack.python, "-m", "falconctl", "daemon"])
    assert other.popen.wait(60) == 1
    assert "already listening" in other.tail()
    with connect(stack.settings.daemon_socket) as sock:
        sock.sendall(infer_req(1, np.zeros((1, 64), np.float32)))
        assert frames.read_frame(sock)[1]["ok"]
