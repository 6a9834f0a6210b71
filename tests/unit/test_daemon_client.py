"""edge.daemon_client on a stale connection (issue 15 item 4): a read is sent
again on a fresh connection, a management change never is (the first copy may
have been applied: a re-sent rollback goes back two steps).

The daemon is a byte-level fake on a real Unix socket: it answers the first
request, reads the second and closes the connection without answering (a daemon
that applied it and died), then answers whatever comes on the next connection.
The client speaks wire.ops classes: a request of each op, its answer's class back."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from edge.daemon_client import DaemonClient
from edge.errors import Unavailable
from wire import frames, messages, ops
from wire.messages import MessageError, RemoteError

PING = ops.PingAnswer(ready=True, draining=False, models=1)
REQUESTS: dict[str, ops.Op] = {
    "infer": ops.Infer(model="m", inputs=ops.Tensors.of([])), "metadata": ops.Metadata(model="m"),
    "models": ops.Models(), "index": ops.Index(), "rollback": ops.Rollback(model="m"),
    "split": ops.Split(model="m", split={"1": 100}), "load": ops.Load(model="m"),
    "unload": ops.Unload(model="m")}
AGAIN: dict[str, ops.Answer] = {  # what the fresh connection answers each read with
    "infer": ops.InferAnswer(model="again", version="1", outputs=ops.Tensors.of([])),
    "metadata": ops.MetadataAnswer(name="again", version="1", inputs=[], outputs=[]),
    "models": ops.ModelsAnswer(models=[ops.ModelEntry(name="again", versions=["1"],
                                                      default_version="1")]),
    "index": ops.IndexAnswer(models=[ops.IndexEntry(name="again", version="1", state="READY")]),
}


class DyingDaemon:
    def __init__(self, path: Path) -> None:
        self.ops: list[str] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(4)
        self.listener.settimeout(5)
        threading.Thread(target=self._serve, daemon=True).start()

    def _answer(self, conn: socket.socket) -> dict:
        _, req = frames.read_frame(conn)
        self.ops.append(req["op"])
        return req

    def _serve(self) -> None:
        with self.listener.accept()[0] as first:
            req = self._answer(first)
            first.sendall(frames.encode(frames.RESPONSE, ops.Response(req["id"], PING).to_wire()))
            self._answer(first)  # applied, then the daemon dies before answering
        try:
            second = self.listener.accept()[0]
        except OSError:
            return
        with second:
            req = self._answer(second)
            second.sendall(frames.encode(frames.RESPONSE,
                                         ops.Response(req["id"], AGAIN[req["op"]]).to_wire()))

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("op", ["rollback", "split", "load", "unload"])
def test_a_management_change_is_never_sent_twice(tmp_path: Path, op: str) -> None:
    daemon = DyingDaemon(tmp_path / "d.sock")
    client = DaemonClient(str(tmp_path / "d.sock"))
    try:
        assert client.call(ops.Ping(), time.monotonic() + 5) == PING
        with pytest.raises(Unavailable, match="may or may not have been applied"):
            client.call(REQUESTS[op], time.monotonic() + 5)
        time.sleep(0.2)  # a re-sent copy would have arrived by now
        assert daemon.ops == ["ping", op]
    finally:
        client.close()
        daemon.close()


@pytest.mark.parametrize("op", ["infer", "metadata", "models", "index"])
def test_a_read_is_sent_again_on_a_fresh_connection(tmp_path: Path, op: str) -> None:
    daemon = DyingDaemon(tmp_path / "d.sock")
    client = DaemonClient(str(tmp_path / "d.sock"))
    try:
        assert client.call(ops.Ping(), time.monotonic() + 5) == PING
        assert client.call(REQUESTS[op], time.monotonic() + 5) == AGAIN[op]
        assert daemon.ops == ["ping", op, op]
    finally:
        client.close()
        daemon.close()


def answer_once(path: Path, response: dict) -> list[dict]:
    """A daemon that answers the first request on the first connection with
    ``response`` (its id replaced by the request's); returns the requests it read."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    seen: list[dict] = []

    def serve() -> None:
        with listener, listener.accept()[0] as conn:
            _, req = frames.read_frame(conn)
            seen.append(req)
            conn.sendall(frames.encode(frames.RESPONSE, {**response, "id": req["id"]}))
            conn.recv(1)  # until the client closes
    threading.Thread(target=serve, daemon=True).start()
    return seen


def test_the_request_goes_out_typed_and_the_answer_comes_back_in_its_class(tmp_path: Path) -> None:
    answer = ops.LoadAnswer(model="m", loaded=["1", "2"])
    seen = answer_once(tmp_path / "d.sock", ops.Response(0, answer).to_wire())
    client = DaemonClient(str(tmp_path / "d.sock"))
    try:
        assert client.call(ops.Load(model="m", version="2"), time.monotonic() + 5) == answer
    finally:
        client.close()
    [req] = seen
    assert {k: v for k, v in req.items() if k not in ("id", "deadline_ms")} == {
        "op": "load", "model": "m", "version": "2"}
    assert 0 < req["deadline_ms"] <= 5000


def test_an_error_answer_raises_it_as_remote_error_with_its_field(tmp_path: Path) -> None:
    data = messages.error(messages.INVALID_INPUT, "version '3' is not loaded", "split")
    answer_once(tmp_path / "d.sock", {"ok": False, "error": data})
    client = DaemonClient(str(tmp_path / "d.sock"))
    try:
        with pytest.raises(RemoteError) as err:
            client.call(ops.Split(model="m", split={"3": 1}), time.monotonic() + 5)
    finally:
        client.close()
    assert (err.value.type, err.value.field) == (messages.INVALID_INPUT, "split")


def test_a_malformed_answer_is_a_message_error_naming_the_field(tmp_path: Path) -> None:
    answer_once(tmp_path / "d.sock", {"ok": True, "result": {"ready": True, "draining": False,
                                                             "models": "two"}})
    client = DaemonClient(str(tmp_path / "d.sock"))
    try:
        with pytest.raises(MessageError) as err:
            client.call(ops.Ping(), time.monotonic() + 5)
    finally:
        client.close()
    assert err.value.field == "result.models"


def test_the_core_answers_a_malformed_answer_unavailable_outside_the_breaker(tmp_path: Path) -> None:
    from edge.core import Core
    from edge.errors import Unavailable

    answer_once(tmp_path / "d.sock", {"ok": True, "result": {"models": [{"name": "m"}]}})
    core = Core(DaemonClient(str(tmp_path / "d.sock")))
    try:
        with pytest.raises(Unavailable, match=r"malformed daemon answer: result\.models\[0\]\."
                                              r"versions: missing"):
            core.models(time.monotonic() + 5)
    finally:
        core.client.close()
    assert core.breaker.state == "closed" and core.breaker.cb.fail_counter == 0
