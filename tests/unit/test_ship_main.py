"""audit.ship_main's start-timeout extension, against a real datagram socket
standing in for systemd's $NOTIFY_SOCKET."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit.ship_main import extending_start


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.05)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield sock
    sock.close()


def drain(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            return out


def test_it_keeps_extending_while_in_the_block_and_stops_after(listener: socket.socket) -> None:
    with extending_start(time.monotonic() + 60, every=0.05):
        time.sleep(0.4)
    sent = drain(listener)
    assert len(sent) >= 4, sent
    assert all("EXTEND_TIMEOUT_USEC=30000000" in m and "STATUS=" in m for m in sent)
    time.sleep(0.2)
    assert drain(listener) == []  # none after the block


def test_it_never_extends_past_its_bound(listener: socket.socket) -> None:
    with extending_start(time.monotonic() + 0.2, every=0.05):
        time.sleep(0.35)  # past the budget, with room for a late last send
        drain(listener)
        time.sleep(0.3)
        assert drain(listener) == []  # still in the block, but out of budget


def test_an_unreachable_notify_socket_is_logged_not_raised(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    with extending_start(time.monotonic() + 60, every=0.05):
        time.sleep(0.1)
    assert "cannot extend the start timeout" in caplog.text
