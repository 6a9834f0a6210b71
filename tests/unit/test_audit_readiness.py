"""A worker's readiness after a WAL failure is deterministic (issue 15): not
ready from the failure until a new stream is open (its header written and
fsynced), never ready merely because the back-off ran out. A real
:class:`~audit.writer.WalWriter` on a real directory; the failures are the
writer's own (a failed fsync), the clock is the test's."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from audit.wal import WalWriter, list_streams
from edge.audit import Auditor, RequestContext, canonical
from edge.errors import Unavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Disk:
    """fsync that fails while ``broken``; the writers the auditor opens use it."""

    def __init__(self) -> None:
        self.broken = False

    def fsync(self, fd: int) -> None:
        if self.broken:
            raise OSError(5, "Input/output error (test)")
        os.fdatasync(fd)

    def factory(self, wal_dir: Path, stream: str) -> WalWriter:
        return WalWriter(wal_dir, stream, sync="always", min_free_bytes=0, fsync=self.fsync)


def record(auditor: Auditor) -> None:
    canon = canonical([("x", np.zeros((1, 2), np.float32))])
    auditor.record(RequestContext("r", "v1"), model="m", version="1", canon=canon,
                   outputs=[("y", np.zeros((1,), np.float32))], labels=None, cached=False)


def test_readiness_returns_only_with_a_working_stream(tmp_path: Path) -> None:
    clock, disk = Clock(), Disk()
    auditor = Auditor(tmp_path, "h", disk.factory, retry_s=5.0, clock=clock)
    record(auditor)
    assert auditor.healthy()

    disk.broken = True
    with pytest.raises(Unavailable):
        record(auditor)  # the fsync fails: the stream is closed, a 5 s back-off starts
    seen = []
    for _ in range(50):  # 0.5 s steps through 25 s of a disk that stays broken
        seen.append(auditor.healthy())
        clock.now += 0.5
    # Never ready while no stream can be opened: the back-off's end alone does not
    # make it ready (it did: ready for a probe, then not-ready when the next open failed).
    assert not any(seen), seen
    assert len(list_streams(tmp_path)) == 1  # no new stream could be made

    disk.broken = False
    clock.now += 60.0  # past the longest back-off
    assert auditor.healthy()  # the probe opened a new stream (header fsynced)
    assert len(list_streams(tmp_path)) == 2
    record(auditor)  # and predictions are audited on it
    assert auditor.healthy()
    auditor.close()


def test_a_worker_whose_first_stream_cannot_open_is_not_ready_until_one_does(
        tmp_path: Path) -> None:
    clock, disk = Clock(), Disk()
    disk.broken = True
    auditor = Auditor(tmp_path, "h", disk.factory, retry_s=2.0, clock=clock)
    with pytest.raises(Unavailable):
        record(auditor)
    transitions = []
    for step in range(40):
        if step == 20:
            disk.broken = False
        ready = auditor.healthy()
        if not transitions or transitions[-1] != ready:
            transitions.append(ready)
        if ready:  # HAProxy sends a ready worker traffic
            try:
                record(auditor)
            except Unavailable:
                pass
        clock.now += 0.5
    # One transition, once the disk works: no ready -> not-ready -> ready while it fails
    assert transitions == [False, True], transitions
    assert len(list_streams(tmp_path)) == 1  # the one stream, opened once the disk worked
    auditor.close()
