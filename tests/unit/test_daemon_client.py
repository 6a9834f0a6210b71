"""edge.daemon_client on a stale connection (issue 15 item 4): a read is sent
again on a fresh connection, a management change never is (the first copy may
have been applied: a re-sent rollback goes back two steps).

The daemon is a byte-level fake on a real Unix socket: it answers the first
request, reads the second and closes the connection without answering (a daemon
that applied it and died), then answers whatever comes on the next connection."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from edge.daemon_client import DaemonClient
from edge.errors import Unavailable
from wire import frames


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
            first.sendall(frames.encode(frames.RESPONSE, {"id": req["id"], "ok": True,
                                                          "result": {}}))
            self._answer(first)  # applied, then the daemon dies before answering
        try:
            second = self.listener.accept()[0]
        except OSError:
            return
        with second:
            req = self._answer(second)
            second.sendall(frames.encode(frames.RESPONSE, {"id": req["id"], "ok": True,
                                                           "result": {"again": True}}))

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("op", ["rollback", "split", "load", "unload"])
def test_a_management_change_is_never_sent_twice(tmp_path: Path, op: str) -> None:
    daemon = DyingDaemon(tmp_path / "d.sock")
    client = DaemonClient(str(tmp_path / "d.sock"))
    try:
        assert client.call("ping", {}, time.monotonic() + 5) == {}
        with pytest.raises(Unavailable, match="may or may not have been applied"):
            client.call(op, {"model": "m"}, time.monotonic() + 5)
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
        assert client.call("ping", {}, time.monotonic() + 5) == {}
        assert client.call(op, {"model": "m"}, time.monotonic() + 5) == {"again": True}
        assert daemon.ops == ["ping", op, op]
    finally:
        client.close()
        daemon.close()
