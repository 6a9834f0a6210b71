"""The golden WAL segments (tests/data/wal/) and the ``falconctl wal`` functions.

The golden files are segment 0 of stream ``golden``: the writer must still produce
``good.wal`` byte for byte, and the reader's verdict on each file is fixed: three
records; two records and a torn tail that recovery cuts to exactly good.wal's first two
records; corruption at the second record's offset, which recovery refuses to touch.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import io
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit import walcli
from audit.record import AuditRecord
from audit.segment import LOCK_NAME, segment_name
from audit.wal import START, Position, StreamReader, WalCorrupt, WalWriter
from tests.data.wal import make_golden

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "wal"


OFFSETS = make_golden.record_offsets()  # where records 1..3 start in good.wal
GOOD = (GOLDEN_DIR / "good.wal").read_bytes()


def install(tmp_path: Path, name: str) -> StreamReader:
    """A WAL dir whose stream ``golden`` holds the golden file ``name`` as segment 0."""
    stream = tmp_path / "golden"
    stream.mkdir()
    shutil.copyfile(GOLDEN_DIR / name, stream / segment_name(0))
    (stream / LOCK_NAME).touch()
    return StreamReader(tmp_path, "golden")


def lines(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines()]


class WalWriterLock:
    """Hold the stream's writer lock as a live writer process would."""

    def __init__(self, reader: StreamReader) -> None:
        self.path = reader.lock_path

    def __enter__(self) -> None:
        self.f = open(self.path, "rb")
        fcntl.flock(self.f, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        self.f.close()


# --- the reader's verdicts ------------------------------------------------------------------

def test_the_writer_still_produces_the_golden_bytes() -> None:
    for name, data in make_golden.golden().items():
        assert (GOLDEN_DIR / name).read_bytes() == data, f"{name}: run make_golden.py"


def test_good(tmp_path: Path) -> None:
    r = install(tmp_path, "good.wal")
    ends = OFFSETS[1:] + [len(GOOD)]
    assert r.read(START) == [(Position(0, e), p) for e, p in zip(ends, make_golden.PAYLOADS,
                                                                  strict=True)]
    assert AuditRecord.from_payload(r.read(START)[1][1]).request_id == "req-2"
    assert r.recover() == Position(0, len(GOOD))
    assert r.path(0).read_bytes() == GOOD


def test_records_written_before_the_request_key_read_back_with_an_empty_one() -> None:
    """The golden records predate ``request_key``: they decode with "", and a
    record that has one round-trips it."""
    old = AuditRecord.from_payload(make_golden.PAYLOADS[0])
    assert old.request_key == ""
    keyed = dataclasses.replace(old, request_key="front-1234")
    assert AuditRecord.from_payload(keyed.to_payload()) == keyed
    assert keyed.to_payload() != make_golden.PAYLOADS[0]


def test_torn(tmp_path: Path) -> None:
    r = install(tmp_path, "torn.wal")
    assert [pos for pos, _ in r.read(START)] == [Position(0, OFFSETS[1]), Position(0, OFFSETS[2])]
    assert r.recover() == Position(0, OFFSETS[2])
    assert r.path(0).read_bytes() == GOOD[:OFFSETS[2]]
    assert len(r.read(START)) == 2


def test_torn_while_the_writer_lives_is_left_alone(tmp_path: Path) -> None:
    r = install(tmp_path, "torn.wal")
    with WalWriterLock(r):
        assert len(r.read(START)) == 2  # "not written yet"
        assert r.recover() is None
    assert r.path(0).read_bytes() == (GOLDEN_DIR / "torn.wal").read_bytes()


def test_corrupt(tmp_path: Path) -> None:
    r = install(tmp_path, "corrupt.wal")
    first = [(Position(0, OFFSETS[1]), make_golden.PAYLOADS[0])]
    assert r.read(START) == first  # what precedes the corruption
    with pytest.raises(WalCorrupt, match=rf"'golden' segment 0 .*offset {OFFSETS[1]}\b"):
        r.read(first[0][0])
    with pytest.raises(WalCorrupt):
        r.recover()
    assert r.path(0).read_bytes() == (GOLDEN_DIR / "corrupt.wal").read_bytes()


# --- dump and verify ------------------------------------------------------------------------

@pytest.mark.parametrize("name, status, records, last", [
    ("good.wal", 0, 3, None),
    ("torn.wal", 0, 2, "torn_tail_at"),
    ("corrupt.wal", 1, 1, "corrupt"),
])
def test_dump_a_segment_file(name: str, status: int, records: int, last: str | None) -> None:
    out = io.StringIO()
    assert walcli.dump(GOLDEN_DIR / name, out) == status
    docs = lines(out.getvalue())
    assert docs[0]["stream"] == "golden" and docs[0]["segment"] == 0
    recs = [d for d in docs if "request_id" in d]
    assert [d["offset"] for d in recs] == OFFSETS[:records]
    assert recs[0]["inputs_bytes"] == 16 and "inputs" not in recs[0]
    if last:
        assert last in docs[-1]
    if name == "torn.wal":
        assert docs[-1]["torn_tail_at"] == OFFSETS[2]


def test_dump_with_bytes_and_a_stream_dir(tmp_path: Path) -> None:
    install(tmp_path, "good.wal")
    out = io.StringIO()
    assert walcli.dump(tmp_path / "golden", out, include_bytes=True) == 0
    recs = [d for d in lines(out.getvalue()) if "request_id" in d]
    assert recs[0]["inputs"] == "AQIDBAUGBwgJCgsMDQ4PEA=="  # base64 of bytes 1..16


@pytest.mark.parametrize("name, status, word", [
    ("good.wal", 0, "ok"), ("torn.wal", 0, "torn"), ("corrupt.wal", 1, "CORRUPT")])
def test_verify(tmp_path: Path, name: str, status: int, word: str) -> None:
    install(tmp_path, name)
    out = io.StringIO()
    assert walcli.verify(tmp_path, out) == status
    assert out.getvalue().startswith(word)


def test_verify_finds_a_missing_segment(tmp_path: Path) -> None:
    with WalWriter(tmp_path, "s1", segment_bytes=400, min_free_bytes=0) as w:
        for _ in range(10):
            w.append(b"x" * 100)
    r = StreamReader(tmp_path, "s1")
    r.path(2).unlink()
    out = io.StringIO()
    assert walcli.verify(tmp_path, out) == 1
    assert "missing from the sequence: [2]" in out.getvalue()


# --- tail -----------------------------------------------------------------------------------

def record(i: int, ts: float) -> bytes:
    return AuditRecord(request_id=f"r{i}", ts=ts, host="h", model="m", version="1", face="v1",
                       input_digest="0" * 64, input_meta=[], outputs={}, labels=None,
                       cached=False, latency_ms=1.0, inputs=b"abc").to_payload()


def test_tail_merges_streams_in_time_order(tmp_path: Path) -> None:
    n = walcli.READ_BATCH + 100  # more than one read per stream: a k-way merge is needed
    with WalWriter(tmp_path, "a", min_free_bytes=0, sync="interval") as a, \
            WalWriter(tmp_path, "b", min_free_bytes=0, sync="interval") as b:
        for i in range(n):
            a.append(record(i, 1000.0 + 2 * i))          # even seconds
        for i in range(n):
            b.append(record(n + i, 1000.0 + 2 * i + 1))  # odd seconds, written later
    out = io.StringIO()
    assert walcli.tail(tmp_path, False, out) == 0
    docs = lines(out.getvalue())
    assert [d["ts"] for d in docs] == [1000.0 + k for k in range(2 * n)]
    assert {d["stream"] for d in docs[:2]} == {"a", "b"}
    assert docs[0]["inputs_bytes"] == 3 and docs[0]["offset"] > 0


def test_tail_max_records(tmp_path: Path) -> None:
    with WalWriter(tmp_path, "a", min_free_bytes=0) as a:
        for i in range(10):
            a.append(record(i, float(i)))
    out = io.StringIO()
    walcli.tail(tmp_path, False, out, max_records=4)
    assert [d["request_id"] for d in lines(out.getvalue())] == ["r0", "r1", "r2", "r3"]


def test_tail_follows_new_records_and_new_streams(tmp_path: Path) -> None:
    a = WalWriter(tmp_path, "a", min_free_bytes=0)
    a.append(record(0, 1.0))  # there before tail starts: not printed
    out = io.StringIO()
    stop = threading.Event()
    t = threading.Thread(target=walcli.tail, args=(tmp_path, True, out),
                         kwargs={"poll_s": 0.02, "stop": stop})
    t.start()
    time.sleep(0.2)  # tail has taken the current ends
    a.append(record(1, 2.0))
    b = WalWriter(tmp_path, "b", min_free_bytes=0)
    b.append(record(2, 3.0))  # a stream born after tail started: read from its start
    deadline = time.monotonic() + 5
    while out.getvalue().count("\n") < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    t.join(5)
    a.close()
    b.close()
    assert [d["request_id"] for d in lines(out.getvalue())] == ["r1", "r2"]


def test_tail_prints_a_payload_that_is_not_a_record(tmp_path: Path) -> None:
    with WalWriter(tmp_path, "a", min_free_bytes=0) as a:
        a.append(b"not msgpack \xc1")
    out = io.StringIO()
    walcli.tail(tmp_path, False, out)
    doc = lines(out.getvalue())[0]
    assert doc["payload_bytes"] == len(b"not msgpack \xc1") and "error" in doc


def test_falconctl_subcommands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    install(tmp_path, "good.wal")
    parser = argparse.ArgumentParser()
    walcli.add_subcommands(parser.add_subparsers(dest="command"), lambda s: tmp_path)
    for argv, status in ((["wal", "verify"], 0), (["wal", "dump", "golden"], 0),
                         (["wal", "tail", "--once", "--max", "2"], 0)):
        args = parser.parse_args(argv)
        assert args.func(None, args) == status
    printed = capsys.readouterr().out
    assert "1 streams, no corruption" in printed
    assert printed.count('"request_id":"req-1"') == 2  # once by dump, once by tail


def test_tail_reports_a_corrupt_stream_once_and_goes_on(tmp_path: Path) -> None:
    install(tmp_path, "corrupt.wal")
    with WalWriter(tmp_path, "other", min_free_bytes=0) as w:
        w.append(record(1, 5.0))
    out = io.StringIO()
    stop = threading.Event()
    t = threading.Thread(target=walcli.tail, args=(tmp_path, True, out),
                         kwargs={"from_start": True, "poll_s": 0.01, "stop": stop})
    t.start()
    time.sleep(0.2)  # many polls
    stop.set()
    t.join(5)
    docs = lines(out.getvalue())
    assert [d.get("request_id") for d in docs if "error" not in d] == ["r1", "req-1"]  # by ts
    assert [d["stream"] for d in docs if "error" in d] == ["golden"]
