"""A worker whose WAL stream failed goes not-ready, then opens a new stream
(issue 15 item 5): it used to answer 503 to every prediction until restarted
while ``/v2/health/ready`` said ready, so HAProxy kept sending it traffic.

The failure is real: the WAL lives on a small tmpfs that is filled up (ENOSPC on
write stops the writer for good, as a failed fsync does)."""

from __future__ import annotations

import errno
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit.wal import list_streams
from tests.httpx_lite import post_json, request

ROW = {"instances": [[0.0] * 64]}


@pytest.fixture
def tiny_wal(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "wal"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(path: Path) -> None:
    with open(path, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def statuses(edge: str) -> tuple[int, int]:
    return (post_json(edge, "/v1/models/digits/predict", ROW).status,
            request(edge, "GET", "/v2/health/ready").status)


def test_a_failed_wal_stream_goes_not_ready_then_recovers(make_stack, tiny_wal):
    stack = make_stack(FALCON_AUDIT_WAL_DIR=str(tiny_wal), FALCON_AUDIT_MIN_FREE_BYTES="0",
                       FALCON_AUDIT_RETRY_S="2", FALCON_EDGE_WORKERS="1")
    edge = stack.settings.edge.bind
    assert statuses(edge) == (200, 200)
    filler = tiny_wal / "filler"
    fill(filler)
    for _ in range(2000):  # until a write finds the disk full
        if post_json(edge, "/v1/models/digits/predict", ROW).status == 503:
            break
    else:
        pytest.fail("the WAL never failed on a full disk")
    assert statuses(edge) == (503, 503)  # not ready: HAProxy takes it out
    filler.unlink()
    deadline = time.monotonic() + 15
    while statuses(edge) != (200, 200):
        assert time.monotonic() < deadline, "the worker never recovered"
        time.sleep(0.2)
    assert len(list_streams(tiny_wal)) == 2  # the failed stream (left to the shipper) and a new one
