"""audit.wal: writer and reader on real files in tmp_path.

Nothing is mocked but the ``fsync`` seam, which the sync-policy tests wrap to count calls
(it still calls the real ``os.fdatasync``). Torn tails and corruption are made by writing
bytes into the segment files, as a crash or a bad disk would. Fault injection (failing
fsync, a full filesystem, kill -9) is in test_wal_faults.py; the golden segments and the
``falconctl wal`` functions in test_wal_golden.py.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from audit.segment import HEADER, RECORD, decode_header, encode_header, encode_record
from audit.wal import (
    START,
    Position,
    StreamReader,
    WalClosed,
    WalCorrupt,
    WalFull,
    WalLocked,
    WalWriter,
    list_streams,
)
from tests.seams import CountingFsync


def writer(tmp_path: Path, stream: str = "s1", **kw: object) -> WalWriter:
    kw.setdefault("min_free_bytes", 0)
    return WalWriter(tmp_path, stream, **kw)  # type: ignore[arg-type]


def payload(i: int, size: int = 100) -> bytes:
    head = f"record-{i}-".encode()
    return (head * (size // len(head) + 1))[:size]


def read_all(reader: StreamReader, start: Position = START) -> list[tuple[Position, bytes]]:
    return reader.read(start, max_records=1 << 30, max_bytes=1 << 40)


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# --- round trip, positions, segments ------------------------------------------------------

def test_round_trip_positions_match_the_writer(tmp_path: Path) -> None:
    payloads = [b"", b"x", payload(1, 500), payload(2, 100_000), os.urandom(3000)]
    with writer(tmp_path) as w:
        positions = [w.append(p) for p in payloads]
    got = read_all(StreamReader(tmp_path, "s1"))
    assert [p for _, p in got] == payloads
    assert [pos for pos, _ in got] == positions
    expected = HEADER.size
    for pos, p in zip(positions, payloads, strict=True):
        expected += RECORD.size + len(p)
        assert pos == Position(0, expected)


def test_read_from_a_position_and_limits(tmp_path: Path) -> None:
    with writer(tmp_path) as w:
        positions = [w.append(payload(i)) for i in range(10)]
    r = StreamReader(tmp_path, "s1")
    assert [p for _, p in r.read(positions[3])] == [payload(i) for i in range(4, 10)]
    assert r.read(positions[-1]) == []
    assert r.read(Position(0, 0)) == r.read(Position(0, HEADER.size))
    assert len(r.read(START, max_records=4)) == 4
    assert len(r.read(START, max_bytes=250)) == 2          # whole records only
    assert len(r.read(START, max_bytes=1)) == 1            # never zero: no record blocks
    assert r.read(positions[2], max_records=1)[0] == (positions[3], payload(3))


def test_segments_roll_and_records_never_span(tmp_path: Path) -> None:
    limit = 1000
    with writer(tmp_path, segment_bytes=limit) as w:
        positions = [w.append(payload(i, 150)) for i in range(40)]
        big = w.append(payload(99, 3000))  # larger than a segment: gets one of its own
        after = w.append(payload(100, 10))
    r = StreamReader(tmp_path, "s1")
    segs = r.segments()
    assert segs == list(range(len(segs))) and len(segs) > 5
    for seg in segs:
        data = r.path(seg).read_bytes()
        header = decode_header(data, "test")
        assert (header.stream, header.segment) == ("s1", seg)
        if seg != big.segment:
            assert len(data) <= limit
    assert big == Position(after.segment - 1, HEADER.size + RECORD.size + 3000)
    assert after == Position(big.segment + 1, HEADER.size + RECORD.size + 10)
    got = read_all(r)
    assert [pos for pos, _ in got] == positions + [big, after]
    assert [p for _, p in got[:40]] == [payload(i, 150) for i in range(40)]


def test_a_reader_follows_a_live_writer(tmp_path: Path) -> None:
    w = writer(tmp_path, segment_bytes=4096)
    r = StreamReader(tmp_path, "s1")
    seen: list[bytes] = []
    pos = START
    done = threading.Event()

    def produce() -> None:
        for i in range(500):
            w.append(payload(i, 50))
        done.set()

    t = threading.Thread(target=produce)
    t.start()
    while not (done.is_set() and len(seen) == 500):
        batch = r.read(pos, max_records=37)
        if batch:
            pos = batch[-1][0]
            seen += [p for _, p in batch]
    t.join()
    w.close()
    assert seen == [payload(i, 50) for i in range(500)]


def test_oversized_payload_is_refused_and_the_writer_goes_on(tmp_path: Path) -> None:
    with writer(tmp_path) as w:
        with pytest.raises(ValueError):
            w.append(b"x" * ((16 << 20) + 1))
        w.append(b"fine")
    assert [p for _, p in read_all(StreamReader(tmp_path, "s1"))] == [b"fine"]


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "a/b", "a" * 129, "é"])
def test_stream_names_are_checked(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        WalWriter(tmp_path, name)
    with pytest.raises(ValueError):
        StreamReader(tmp_path, name)


# --- sync policies --------------------------------------------------------------------------

def test_always_fsyncs_once_per_append(tmp_path: Path) -> None:
    fsync = CountingFsync()
    w = writer(tmp_path, sync="always", fsync=fsync)
    before = fsync.calls  # the first segment's header
    for i in range(50):
        w.append(payload(i))
        assert fsync.calls == before + i + 1
    w.close()


def test_batch_groups_fsyncs_under_concurrency(tmp_path: Path) -> None:
    fsync = CountingFsync()
    w = writer(tmp_path, sync="batch", fsync=fsync)
    before = fsync.calls
    acked: list[Position] = []

    def work(t: int) -> None:
        for i in range(200):
            acked.append(w.append(payload(t * 1000 + i)))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fsyncs = fsync.calls - before
    w.close()
    print(f"batch: 1600 appends, {fsyncs} fsyncs ({1600 / fsyncs:.1f} appends per fsync)")
    assert fsyncs < 1600 / 2
    got = read_all(StreamReader(tmp_path, "s1"))
    assert sorted(acked) == [pos for pos, _ in got]


def test_before_sync_lets_appenders_that_run_meanwhile_share_the_leaders_fsync(
        tmp_path: Path) -> None:
    """``before_sync`` runs in a leader before it takes the bytes its fsync covers (the
    edge yields to the other greenlets there): what is appended during it is covered
    by that one fsync, and those appends return after it, durable."""
    fsync = CountingFsync()
    others: list[threading.Thread] = []
    acked: list[Position] = []

    def before_sync() -> None:
        if others:  # only the first leader lets five others write first
            return
        others.extend(threading.Thread(target=lambda i=i: acked.append(w.append(payload(i))))
                      for i in range(1, 6))
        for t in others:
            t.start()
        while w._commit.waiting < 5:  # each wrote its record and waits for an fsync
            time.sleep(0.001)

    w = writer(tmp_path, sync="batch", fsync=fsync, before_sync=before_sync)
    before = fsync.calls  # the first segment's header
    acked.append(w.append(payload(0)))
    for t in others:
        t.join()
    assert fsync.calls - before == 1  # one fsync for six appends (each would lead its own)
    assert len(acked) == 6
    w.close()
    assert sorted(acked) == [pos for pos, _ in read_all(StreamReader(tmp_path, "s1"))]


def test_batch_returns_only_once_an_fsync_covered_the_record(tmp_path: Path) -> None:
    """The group commit's contract, checked at every return under contention: a slow
    fsync records how many bytes of the file it made durable (the size when it began)."""
    durable = {"bytes": 0}
    guard = threading.Lock()

    def slow_fsync(fd: int) -> None:
        size = os.fstat(fd).st_size
        time.sleep(0.002)
        os.fdatasync(fd)
        with guard:
            durable["bytes"] = max(durable["bytes"], size)

    w = writer(tmp_path, sync="batch", fsync=slow_fsync)
    late: list[tuple[Position, int]] = []

    def work(t: int) -> None:
        for i in range(60):
            pos = w.append(payload(t * 1000 + i))
            with guard:
                covered = durable["bytes"]
            if pos.segment != 0 or covered < pos.offset:
                late.append((pos, covered))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "an appender never returned (a lost wake-up)"
    w.close()
    assert late == []
    assert len(read_all(StreamReader(tmp_path, "s1"))) == 16 * 60


def test_batch_single_thread_is_durable_per_append(tmp_path: Path) -> None:
    fsync = CountingFsync()
    w = writer(tmp_path, sync="batch", fsync=fsync)
    before = fsync.calls
    for i in range(20):
        w.append(payload(i))
        assert fsync.calls == before + i + 1  # alone, each append leads its own fsync
    w.close()


def test_interval_fsyncs_in_the_background(tmp_path: Path) -> None:
    fsync = CountingFsync()
    w = writer(tmp_path, sync="interval", interval_ms=30, fsync=fsync)
    before = fsync.calls
    t0 = time.perf_counter()
    for i in range(100):
        w.append(payload(i))
    assert time.perf_counter() - t0 < 1.0
    assert wait_for(lambda: fsync.calls > before)  # the background thread synced
    calls = fsync.calls
    time.sleep(0.15)
    assert fsync.calls == calls  # nothing new written: no more fsyncs
    w.close()
    assert [p for _, p in read_all(StreamReader(tmp_path, "s1"))] == [
        payload(i) for i in range(100)]


def test_interval_append_does_not_wait_for_fsync(tmp_path: Path) -> None:
    fsync = CountingFsync()
    w = writer(tmp_path, sync="interval", interval_ms=60_000, fsync=fsync)
    before = fsync.calls
    for i in range(20):
        w.append(payload(i))
    assert fsync.calls == before
    # written with os.write already: another reader sees every record before any fsync
    assert len(read_all(StreamReader(tmp_path, "s1"))) == 20
    w.close()
    assert fsync.calls == before + 1  # close flushes


# --- liveness, reopening, closing -----------------------------------------------------------

def test_writer_alive_and_the_lock(tmp_path: Path) -> None:
    r = StreamReader(tmp_path, "s1")
    assert not r.writer_alive()  # no stream yet
    w = writer(tmp_path)
    assert r.writer_alive()
    assert r.writer_alive()  # the probe let go of the lock
    with pytest.raises(WalLocked):
        writer(tmp_path)
    assert r.recover() is None  # refuses to touch a live stream
    w.close()
    assert not r.writer_alive()
    with pytest.raises(WalClosed):
        w.append(b"late")
    w.close()  # idempotent


def test_reopening_a_dead_stream_continues_in_a_new_segment(tmp_path: Path) -> None:
    with writer(tmp_path) as w:
        first = [w.append(payload(i)) for i in range(3)]
    with open(StreamReader(tmp_path, "s1").path(0), "ab") as f:
        f.write(encode_record(b"torn by a crash")[:10])
    with writer(tmp_path) as w:
        second = w.append(payload(3))
    r = StreamReader(tmp_path, "s1")
    assert r.segments() == [0, 1]
    assert second.segment == 1
    assert read_all(r) == list(zip(first + [second], [payload(i) for i in range(4)],
                                   strict=True))
    assert r.path(0).stat().st_size == first[-1].offset  # the torn tail was cut


def test_list_streams_skips_half_built_ones(tmp_path: Path) -> None:
    for name in ("b", "a"):
        writer(tmp_path, name).close()
    (tmp_path / ".tmp-c-1234").mkdir()
    (tmp_path / "stray-file").write_text("x")
    assert list_streams(tmp_path) == ["a", "b"]
    assert list_streams(tmp_path / "missing") == []


# --- torn tails, corruption, recovery -------------------------------------------------------

def tail_bytes(kind: str) -> bytes:
    frame = encode_record(payload(7, 300))
    return {
        "short header": frame[:5],
        "short payload": frame[:100],
        "bad crc": frame[:-1] + bytes([frame[-1] ^ 0xFF]),
        "huge length": b"\xff\xff\xff\xff\x00\x00\x00\x00",
        "zeros": bytes(4096),
    }[kind]


@pytest.mark.parametrize("kind", ["short header", "short payload", "bad crc", "huge length",
                                  "zeros"])
def test_a_torn_tail_is_not_read_and_is_cut_once_the_writer_is_dead(tmp_path: Path,
                                                                   kind: str) -> None:
    w = writer(tmp_path)
    acked = [w.append(payload(i)) for i in range(5)]
    r = StreamReader(tmp_path, "s1")
    with open(r.path(0), "ab") as f:
        f.write(tail_bytes(kind))
    assert [pos for pos, _ in read_all(r)] == acked  # alive: "not written yet"
    assert r.recover() is None
    w._release()  # the process "dies": its lock goes, nothing more is written
    assert [pos for pos, _ in read_all(r)] == acked  # dead: a torn tail
    assert r.recover() == acked[-1]
    assert r.path(0).stat().st_size == acked[-1].offset
    assert r.recover() == acked[-1]  # idempotent


def test_corruption_in_the_middle_is_an_error_not_a_tail(tmp_path: Path) -> None:
    with writer(tmp_path) as w:
        acked = [w.append(payload(i)) for i in range(5)]
    r = StreamReader(tmp_path, "s1")
    data = bytearray(r.path(0).read_bytes())
    data[acked[1].offset + RECORD.size + 10] ^= 0x40  # inside record 2's payload
    r.path(0).write_bytes(bytes(data))
    assert [pos for pos, _ in read_all(r)] == acked[:2]  # the records before it
    with pytest.raises(WalCorrupt, match=rf"'s1' segment 0 .*offset {acked[1].offset}"):
        read_all(r, acked[1])  # a read that starts at it
    with pytest.raises(WalCorrupt):
        r.end()
    with pytest.raises(WalCorrupt):
        r.recover()
    assert r.path(0).read_bytes() == bytes(data)  # recovery changed nothing


def test_a_flipped_length_is_corruption_even_at_the_end_of_the_file(tmp_path: Path) -> None:
    with writer(tmp_path) as w:
        acked = [w.append(payload(i)) for i in range(5)]
    r = StreamReader(tmp_path, "s1")
    data = bytearray(r.path(0).read_bytes())
    data[acked[1].offset + 1] ^= 0x10  # record 3 now claims to run past the end of the file
    r.path(0).write_bytes(bytes(data))
    assert [pos for pos, _ in read_all(r)] == acked[:2]
    with pytest.raises(WalCorrupt, match="incomplete, yet a valid record follows"):
        read_all(r, acked[1])
    with pytest.raises(WalCorrupt):
        r.recover()


def test_a_torn_tail_in_an_earlier_segment_does_not_block_the_next(tmp_path: Path) -> None:
    with writer(tmp_path, segment_bytes=600) as w:
        acked = [w.append(payload(i)) for i in range(8)]
    r = StreamReader(tmp_path, "s1")
    assert len(r.segments()) >= 2
    with open(r.path(0), "ab") as f:  # as a power loss can leave it (interval mode)
        f.write(tail_bytes("short payload"))
    assert [pos for pos, _ in read_all(r)] == acked


@pytest.mark.parametrize("damage", ["magic", "crc", "name", "number", "short"])
def test_a_bad_segment_header_is_corruption(tmp_path: Path, damage: str) -> None:
    with writer(tmp_path) as w:
        w.append(b"one")
    r = StreamReader(tmp_path, "s1")
    data = bytearray(r.path(0).read_bytes())
    if damage == "magic":
        data[0:4] = b"XWAL"
    elif damage == "crc":
        data[150] ^= 1
    elif damage == "short":
        data = data[:100]
    else:  # a well-formed header, of another stream or another segment number
        data[:HEADER.size] = encode_header("s2", 0, 0) if damage == "name" \
            else encode_header("s1", 1, 0)
    r.path(0).write_bytes(bytes(data))
    with pytest.raises(WalCorrupt):
        r.read(START)
    with pytest.raises(WalCorrupt):
        r.recover()


# --- removal and lag ------------------------------------------------------------------------

def test_remove_through_and_pending_bytes(tmp_path: Path) -> None:
    w = writer(tmp_path, segment_bytes=600)
    acked = [w.append(payload(i)) for i in range(12)]
    r = StreamReader(tmp_path, "s1")
    segs = r.segments()
    total = sum(r.path(s).stat().st_size - HEADER.size for s in segs)
    assert r.pending_bytes(START) == total
    assert r.pending_bytes(acked[-1]) == 0
    mid = acked[5]
    assert r.pending_bytes(mid) == sum(RECORD.size + 100 for _ in acked[6:])
    removed = r.remove_through(mid)
    assert removed == [r.path(s) for s in segs if s < mid.segment]
    assert r.segments() == [s for s in segs if s >= mid.segment]
    assert [pos for pos, _ in read_all(r, mid)] == acked[6:]
    assert r.remove_through(acked[-1]) and r.segments() == [segs[-1]]  # never the last
    assert r.remove_through(Position(segs[-1] + 5, 0)) == []
    assert list_streams(tmp_path) == ["s1"]  # alive: kept, even when all is shipped
    w.close()
    assert r.remove_through(acked[-3]) == []  # dead but not shipped to the end: kept
    removed = r.remove_through(acked[-1])
    assert r.dir in removed and not r.dir.exists()
    assert list_streams(tmp_path) == [] and r.segments() == [] and not r.writer_alive()


def test_remove_through_a_dead_stream_with_an_empty_last_segment(tmp_path: Path) -> None:
    with writer(tmp_path) as w:
        last = w.append(b"only")
    writer(tmp_path).close()  # reopened and closed: segment 1 holds no record
    r = StreamReader(tmp_path, "s1")
    assert r.segments() == [0, 1]
    assert r.recover() == Position(1, HEADER.size)
    assert r.pending_bytes(last) == 0
    assert r.dir in r.remove_through(last)


# --- the disk-space guard -------------------------------------------------------------------

def test_the_guard_refuses_without_failing_the_writer(tmp_path: Path) -> None:
    w = WalWriter(tmp_path, "s1", min_free_bytes=1 << 62)
    with pytest.raises(WalFull, match="below the guard"):
        w.append(b"refused")
    assert w.failed is None
    w.min_free_bytes = 0  # as if space had come back
    pos = w.append(b"accepted")
    w.close()
    assert read_all(StreamReader(tmp_path, "s1")) == [(pos, b"accepted")]
