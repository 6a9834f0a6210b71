"""audit.wal under faults: a failing fsync, a full filesystem, a writer killed with -9.

The fsync failure goes through the writer's ``fsync`` seam (the only seam used). The
full filesystem is real: a 256 KiB tmpfs mounted for the test (skipped where mount is
not permitted). The killed writer is a real child process appending in a loop and
printing each acknowledged position; after kill -9 every one of them must be readable.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit.segment import encode_record
from audit.wal import START, Position, StreamReader, WalFailed, WalFull, WalWriter

ROOT = Path(__file__).resolve().parents[2]


class FailingFsync:
    """The real fdatasync for the first ``ok`` calls, then EIO for every call."""

    def __init__(self, ok: int) -> None:
        self.ok, self.calls = ok, 0
        self._lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        with self._lock:
            self.calls += 1
            n = self.calls
        if n > self.ok:
            raise OSError(errno.EIO, "injected fsync failure")
        os.fdatasync(fd)


def payload(i: int, size: int = 500) -> bytes:
    head = f"record-{i}-".encode()
    return (head * (size // len(head) + 1))[:size]


def recovered(wal_dir: Path, stream: str) -> list[tuple[Position, bytes]]:
    """What a shipper gets once the writer is gone: recover, then read everything."""
    r = StreamReader(wal_dir, stream)
    assert not r.writer_alive()
    assert r.recover() is not None
    return r.read(START, max_records=1 << 30, max_bytes=1 << 40)


def assert_acked_readable(acked: list[tuple[Position, bytes]],
                          got: list[tuple[Position, bytes]]) -> None:
    assert set(acked) <= set(got)
    assert [pos for pos, _ in got] == sorted(pos for pos, _ in got)


# --- a failing fsync ------------------------------------------------------------------------

def test_a_failed_fsync_fails_the_writer_for_good(tmp_path: Path) -> None:
    fsync = FailingFsync(ok=1 + 10)  # the first segment's header, then 10 appends
    w = WalWriter(tmp_path, "s1", sync="always", fsync=fsync, min_free_bytes=0)
    acked = [(w.append(payload(i)), payload(i)) for i in range(10)]
    with pytest.raises(WalFailed):
        w.append(payload(10))
    assert isinstance(w.failed, OSError) and w.failed.errno == errno.EIO
    calls = fsync.calls
    for i in range(3):
        with pytest.raises(WalFailed):
            w.append(payload(11 + i))
    assert fsync.calls == calls  # never retried
    assert not StreamReader(tmp_path, "s1").writer_alive()  # the lock was let go
    w.close()  # nothing to flush; does not raise
    got = recovered(tmp_path, "s1")
    assert_acked_readable(acked, got)
    assert len(got) <= 11  # at most the one written but never acknowledged


def test_a_failed_group_commit_fails_every_waiter(tmp_path: Path) -> None:
    fsync = FailingFsync(ok=1 + 40)
    w = WalWriter(tmp_path, "s1", sync="batch", fsync=fsync, min_free_bytes=0)
    acked: list[tuple[Position, bytes]] = []
    errors: list[BaseException] = []

    def work(t: int) -> None:
        for i in range(500):
            p = payload(t * 1000 + i)
            try:
                acked.append((w.append(p), p))
            except WalFailed as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 8  # every thread saw the failure, none hung
    assert fsync.calls == fsync.ok + 1  # the failed fsync was the last
    assert_acked_readable(acked, recovered(tmp_path, "s1"))


@pytest.mark.parametrize("sync", ["always", "batch"])
def test_a_record_whose_fsync_failed_never_ships(tmp_path: Path, sync: str) -> None:
    """Its request was answered 503: shipped, it would be audited but not served
    (issue 15 item 16). What a shipper reads is exactly what was acknowledged."""
    fsync = FailingFsync(ok=1 + 30)
    w = WalWriter(tmp_path, "s1", sync=sync, fsync=fsync, min_free_bytes=0,
                  segment_bytes=8 << 10)  # a few segments: rolls fsync too
    acked: list[tuple[Position, bytes]] = []
    failed: list[bytes] = []

    def work(t: int) -> None:
        for i in range(200):
            p = payload(t * 1000 + i)
            try:
                acked.append((w.append(p), p))
            except WalFailed:
                failed.append(p)
                return

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failed and acked
    got = recovered(tmp_path, "s1")
    assert sorted(got) == sorted(acked)
    assert not set(failed) & {p for _, p in got}


def test_an_fsync_that_raises_something_else_makes_nothing_durable(tmp_path: Path) -> None:
    """A waiter whose bytes the raising fsync would have covered is not told they are
    durable: it leads an fsync of its own. A, B, C append; A's fsync is held until B
    and C wait; B then leads one that raises RuntimeError (not an OSError)."""
    held, durable = threading.Event(), {"bytes": 0}
    calls: list[str] = []

    def seam(fd: int) -> None:
        n = len(calls)
        calls.append("")
        if n == 1:
            held.wait(10)
        if n == 2:
            raise RuntimeError("not an OSError")
        size = os.fstat(fd).st_size
        os.fdatasync(fd)
        durable["bytes"] = max(durable["bytes"], size)

    w = WalWriter(tmp_path, "s1", sync="batch", fsync=seam, min_free_bytes=0)
    assert len(calls) == 1  # the first segment's header
    results: dict[str, object] = {}

    def append(name: str, i: int) -> None:
        try:
            results[name] = w.append(payload(i))
        except BaseException as exc:  # noqa: BLE001 - recorded for the asserts
            results[name] = exc

    a = threading.Thread(target=append, args=("a", 0))
    a.start()
    while len(calls) < 2:
        time.sleep(0.001)
    others = [threading.Thread(target=append, args=(n, i)) for i, n in ((1, "b"), (2, "c"))]
    for t in others:
        t.start()
    deadline = time.monotonic() + 10
    while w._commit.waiting < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    held.set()
    for t in [a, *others]:
        t.join(10)
        assert not t.is_alive()
    raised = [n for n in "bc" if isinstance(results[n], RuntimeError)]
    assert len(raised) == 1  # whichever of B and C led the failing fsync
    ok = "c" if raised == ["b"] else "b"
    pos = results[ok]
    assert isinstance(pos, Position) and pos.offset <= durable["bytes"]
    assert len(calls) == 4  # A's, the failed one, and the one the survivor led
    w.close()


def test_a_failed_background_fsync_fails_later_appends(tmp_path: Path) -> None:
    fsync = FailingFsync(ok=1)
    w = WalWriter(tmp_path, "s1", sync="interval", interval_ms=10, fsync=fsync,
                  min_free_bytes=0)
    acked: list[tuple[Position, bytes]] = []
    deadline = time.monotonic() + 5
    with pytest.raises(WalFailed):
        while time.monotonic() < deadline:
            acked.append((w.append(payload(len(acked))), payload(len(acked))))
            time.sleep(0.001)
    assert fsync.calls == fsync.ok + 1 and w.failed is not None
    w.close()
    assert_acked_readable(acked, recovered(tmp_path, "s1"))


# --- a full filesystem ----------------------------------------------------------------------

@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_enospc_fails_the_writer_and_keeps_what_was_acknowledged(tiny_fs: Path) -> None:
    w = WalWriter(tiny_fs, "s1", sync="always", segment_bytes=64 << 10, min_free_bytes=0)
    acked: list[tuple[Position, bytes]] = []
    with pytest.raises(WalFailed):
        for i in range(10_000):
            acked.append((w.append(payload(i)), payload(i)))
    assert isinstance(w.failed, OSError) and w.failed.errno == errno.ENOSPC
    assert len(acked) > 100
    with pytest.raises(WalFailed):
        w.append(b"x")
    w.close()
    assert_acked_readable(acked, recovered(tiny_fs, "s1"))


def test_the_guard_refuses_on_a_nearly_full_disk_and_resumes(tiny_fs: Path) -> None:
    filler = tiny_fs / "filler"
    filler.write_bytes(b"\0" * (64 << 10))
    w = WalWriter(tiny_fs, "s1", sync="always", min_free_bytes=96 << 10)
    acked: list[tuple[Position, bytes]] = []
    with pytest.raises(WalFull):
        for i in range(10_000):
            acked.append((w.append(payload(i)), payload(i)))
    assert w.failed is None and len(acked) > 50
    reader = StreamReader(tiny_fs, "s1")
    assert reader.read(START, max_records=1 << 30) == acked
    filler.unlink()
    time.sleep(0.15)  # the guard's cached free space expires
    pos = w.append(b"space came back")
    w.close()
    assert reader.read(START, max_records=1 << 30) == acked + [(pos, b"space came back")]


# --- kill -9 --------------------------------------------------------------------------------

CHILD = r"""
import sys
from pathlib import Path
from audit.wal import WalWriter

w = WalWriter(Path(sys.argv[2]), "child", sync=sys.argv[3], segment_bytes=16384,
              interval_ms=20, min_free_bytes=0)
i = 0
while True:
    head = f"record-{i}-".encode()
    pos = w.append((head * (500 // len(head) + 1))[:500])
    print(i, pos.segment, pos.offset, flush=True)
    i += 1
"""


@pytest.mark.parametrize("sync", ["always", "batch", "interval"])
def test_kill_9_loses_nothing_acknowledged(tmp_path: Path, sync: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT), str(tmp_path), sync],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    lines = []
    for line in child.stdout:
        lines.append(line)
        if len(lines) == 300:
            break
    reader = StreamReader(tmp_path, "child")
    assert reader.writer_alive()
    os.kill(child.pid, signal.SIGKILL)
    lines += child.stdout.readlines()  # acknowledged before it died
    child.wait()
    lines = [ln for ln in lines if ln.endswith("\n")]  # the kill may cut the last print
    assert not reader.writer_alive()
    acked = [(Position(int(s), int(o)), payload(int(i)))
             for i, s, o in (line.split() for line in lines)]
    assert len(reader.segments()) > 5  # it rolled segments while appending
    last = reader.path(reader.segments()[-1])
    with open(last, "ab") as f:  # a crash in the middle of a write leaves this
        f.write(encode_record(b"never acknowledged" * 10)[:60])
    end = reader.recover()
    assert end is not None and last.stat().st_size == end.offset  # the tail was cut
    got = reader.read(START, max_records=1 << 30, max_bytes=1 << 40)
    assert got[:len(acked)] == acked
    assert len(got) <= len(acked) + 1  # at most one written and not yet acknowledged
    assert reader.read(end) == [] and reader.read(got[-1][0]) == []  # the same end
    assert got[-1][0] == end or end == Position(got[-1][0].segment + 1, 160)
