"""``falconctl wal ...``: look at the audit WAL from a shell.

    falconctl wal tail [--once] [--from-start] [--max N] [--bytes] [--tensors]
        Follow every stream live, records merged in time order (the record's ``ts``), one
        JSON object per line. Starts at the current end of each stream (streams that
        appear later are read from their start); ``--from-start`` prints what is there
        first; ``--once`` prints everything there now, from the start, and exits.
    falconctl wal dump TARGET [--bytes] [--tensors]
        Every record of a segment file, a stream directory or a stream name, with its
        position, then what ends the segment (a torn tail, or corruption).
    falconctl wal verify
        Check every segment of every stream: header, record CRCs, consecutive segment
        numbers. Torn tails are reported as such; exit status 1 on any corruption.

Records print as :meth:`AuditRecord.to_row` plus ``stream``, ``segment`` and ``offset``
(the position after the record); the ``inputs`` bytes are replaced by their length
(``inputs_bytes``) unless ``--bytes`` asks for them in base64; ``--tensors`` adds them
decoded as ``input_tensors`` (``{name: {"dtype", "shape", "data"}}``, strings as
strings: :func:`audit.record.decode_inputs`). A payload that is not an
audit record prints as ``{"error": ..., "payload_bytes": n}``. The functions here write to
a text stream and return an exit status, so tests call them directly.
"""

from __future__ import annotations

import argparse
import base64
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NamedTuple

import orjson

from audit.reader import StreamReader, list_streams
from audit.record import AuditRecord, RecordError, decode_inputs
from audit.segment import (
    HEADER,
    SEGMENT_RE,
    START,
    Header,
    Position,
    WalCorrupt,
    check_bytes,
    decode_header,
    list_segments,
    scan,
)

READ_BATCH = 500
ALL = 1 << 62


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def record_doc(payload: bytes, *, include_bytes: bool = False,
               tensors: bool = False) -> dict[str, Any]:
    """What one record prints as (without its position)."""
    try:
        row = AuditRecord.from_payload(payload).to_row()
    except RecordError as exc:
        return {"error": str(exc), "payload_bytes": len(payload)}
    if tensors and row["inputs"] is not None:
        try:
            row["input_tensors"] = decode_inputs(row["inputs"])
        except RecordError as exc:
            row["input_tensors"] = {"error": str(exc)}
    if not include_bytes:
        inputs = row.pop("inputs")
        row["inputs_bytes"] = None if inputs is None else len(inputs)
    return row


def _emit(out: IO[str], doc: dict[str, Any]) -> None:
    out.write(orjson.dumps(doc, default=_default).decode() + "\n")


# --- tail ----------------------------------------------------------------------------------

class _Entry(NamedTuple):
    ts: float
    stream: str
    pos: Position
    doc: dict[str, Any]


class _Follower:
    """One stream being tailed: its position and the records read but not printed."""

    def __init__(self, reader: StreamReader, pos: Position, include_bytes: bool,
                 tensors: bool = False) -> None:
        self.reader, self.pos, self.include_bytes = reader, pos, include_bytes
        self.tensors = tensors
        self.buf: deque[_Entry] = deque()
        self.more = True
        self.corrupt = False

    def refill(self) -> None:
        if self.corrupt:  # reported once; the stream is not followed further
            self.more = False
            return
        try:
            got = self.reader.read(self.pos, max_records=READ_BATCH)
        except WalCorrupt as exc:
            got, self.corrupt = [], True
            self.buf.append(_Entry(float("-inf"), self.reader.stream, self.pos,
                                   {"error": str(exc)}))
        self.more = len(got) == READ_BATCH
        for pos, payload in got:
            doc = record_doc(payload, include_bytes=self.include_bytes, tensors=self.tensors)
            ts = doc.get("ts")
            self.buf.append(_Entry(ts if isinstance(ts, float | int) else 0.0,
                                   self.reader.stream, pos, doc))
        if got:
            self.pos = got[-1][0]


def _drain(followers: list[_Follower], out: IO[str], budget: int) -> int:
    """Print what every stream holds now, merged by ``ts`` (a k-way merge: a stream's
    next batch is read before any later record of another stream is printed)."""
    printed = 0
    for f in followers:
        f.more = True
    while printed < budget:
        for f in followers:
            if not f.buf and f.more:
                f.refill()
        heads = [f for f in followers if f.buf]
        if not heads:
            break
        entry = min(heads, key=lambda f: (f.buf[0].ts, f.buf[0].stream)).buf.popleft()
        _emit(out, {"stream": entry.stream, "segment": entry.pos.segment,
                    "offset": entry.pos.offset, **entry.doc})
        printed += 1
    out.flush()
    return printed


def tail(wal_dir: Path, follow: bool, out: IO[str], *, from_start: bool = False,
         max_records: int | None = None, poll_s: float = 0.2, include_bytes: bool = False,
         stop: threading.Event | None = None, tensors: bool = False) -> int:
    """Print the records of every stream under ``wal_dir`` in time order. Without
    ``follow``, print everything there now (from the start) and return; with it, poll
    every ``poll_s`` until ``stop`` is set or ``max_records`` have been printed."""
    stop = stop or threading.Event()
    followers: dict[str, _Follower] = {}
    budget = ALL if max_records is None else max_records
    first = True
    while budget > 0:
        streams = list_streams(wal_dir)
        for name in streams:
            if name not in followers:
                reader = StreamReader(wal_dir, name)
                at_end = follow and not from_start and first
                followers[name] = _Follower(reader, reader.end() if at_end else START,
                                            include_bytes, tensors)
        for name in set(followers) - set(streams):
            if not followers[name].buf:
                del followers[name]  # shipped and removed
        first = False
        budget -= _drain(list(followers.values()), out, budget)
        if not follow or stop.wait(poll_s):
            break
    return 0


# --- dump and verify -----------------------------------------------------------------------

class SegmentReport(NamedTuple):
    """What one segment file holds. ``records`` are ``(start, end, payload)``;
    ``valid_end`` is the offset after the last valid record; bytes after it are a torn
    tail when ``error`` is None."""

    path: Path
    header: Header | None
    records: list[tuple[int, int, bytes]]
    valid_end: int
    size: int
    error: str | None


def inspect_segment(path: Path) -> SegmentReport:
    data = path.read_bytes()
    try:
        header = decode_header(data, str(path))
    except WalCorrupt as exc:
        return SegmentReport(path, None, [], 0, len(data), str(exc))
    found = scan(data[HEADER.size:], HEADER.size, max_records=ALL, max_bytes=ALL)
    error = None
    if found.state != "end":
        try:
            check_bytes(data[found.stop:], found.stop, str(path))
        except WalCorrupt as exc:
            error = str(exc)
    starts = [HEADER.size] + [end for end, _ in found.records[:-1]]
    records = [(s, end, p) for s, (end, p) in zip(starts, found.records, strict=True)]
    return SegmentReport(path, header, records, found.stop, len(data), error)


def _segment_problem(report: SegmentReport, stream: str | None, seg: int | None) -> str | None:
    if report.error is not None:
        return report.error
    h = report.header
    assert h is not None
    if stream is not None and h.stream != stream:
        return f"{report.path}: header names stream {h.stream!r}, the directory {stream!r}"
    if seg is not None and h.segment != seg:
        return f"{report.path}: header names segment {h.segment}, the file name {seg}"
    return None


def dump(target: Path, out: IO[str], *, include_bytes: bool = False,
         tensors: bool = False) -> int:
    """Print every record of a segment file or of a stream directory; 1 on corruption."""
    target = Path(target)
    if target.is_dir():
        paths = [target / f"{s:016x}.wal" for s in list_segments(target)]
        stream: str | None = target.name
    else:
        paths, stream = [target], None
    status = 0
    for path in paths:
        m = SEGMENT_RE.fullmatch(path.name)
        report = inspect_segment(path)
        h = report.header
        if h is not None:
            _emit(out, {"segment_file": str(path), "stream": h.stream, "segment": h.segment,
                        "created_ns": h.created_ns, "bytes": report.size})
        for start, end, payload in report.records:
            _emit(out, {"segment": h.segment if h else None, "offset": start, "end": end,
                        **record_doc(payload, include_bytes=include_bytes, tensors=tensors)})
        problem = _segment_problem(report, stream, int(m.group(1), 16) if m else None)
        if problem is not None:
            _emit(out, {"segment_file": str(path), "corrupt": problem})
            status = 1
        elif report.valid_end < report.size:
            _emit(out, {"segment_file": str(path), "torn_tail_at": report.valid_end,
                        "torn_bytes": report.size - report.valid_end})
    return status


def verify_stream(wal_dir: Path, stream: str, out: IO[str]) -> int:
    reader = StreamReader(wal_dir, stream)
    segs, alive = reader.segments(), reader.writer_alive()
    status, records = 0, 0
    if segs and segs != list(range(segs[0], segs[-1] + 1)):
        missing = sorted(set(range(segs[0], segs[-1] + 1)) - set(segs))
        out.write(f"CORRUPT {stream}: segments missing from the sequence: {missing}\n")
        status = 1
    for seg in segs:
        report = inspect_segment(reader.path(seg))
        records += len(report.records)
        problem = _segment_problem(report, stream, seg)
        if problem is not None:
            out.write(f"CORRUPT {stream}: {problem}\n")
            status = 1
        elif report.valid_end < report.size:
            what = ("being written (writer alive)" if alive and seg == segs[-1]
                    else "torn tail (cut by recovery, never shipped)")
            out.write(f"torn    {stream}: segment {seg} offset {report.valid_end}: "
                      f"{report.size - report.valid_end} bytes {what}\n")
    span = f"segments {segs[0]}..{segs[-1]}" if segs else "no segments"
    out.write(f"{'ok' if status == 0 else 'BAD':7} {stream}: {span}, {records} records, "
              f"writer {'alive' if alive else 'dead'}\n")
    return status


def verify(wal_dir: Path, out: IO[str]) -> int:
    """Check every stream under ``wal_dir``; 0 if all are sound (torn tails included)."""
    status = 0
    streams = list_streams(wal_dir)
    for stream in streams:
        status |= verify_stream(wal_dir, stream, out)
    out.write(f"{len(streams)} streams, {'no corruption' if status == 0 else 'CORRUPTION'}\n")
    return status


# --- falconctl wiring ----------------------------------------------------------------------

def add_subcommands(subparsers: Any, wal_dir_getter: Callable[[Any], Path],
                    store_getter: Callable[[Any], Any] | None = None) -> None:
    """Add ``wal tail|dump|verify|reship`` to falconctl's subparsers. Each sets
    ``func(settings, args)``; ``wal_dir_getter(settings)`` names the WAL directory
    (``--wal-dir`` overrides it); ``store_getter(settings)`` opens the audit store."""

    def wal_dir(s: Any, args: argparse.Namespace) -> Path:
        return Path(args.wal_dir) if args.wal_dir else Path(wal_dir_getter(s))

    def run_tail(s: Any, args: argparse.Namespace) -> int:
        return tail(wal_dir(s, args), not args.once, sys.stdout, from_start=args.from_start,
                    max_records=args.max, include_bytes=args.bytes, tensors=args.tensors)

    def run_dump(s: Any, args: argparse.Namespace) -> int:
        target = Path(args.target)
        if not target.exists() and "/" not in args.target:
            target = wal_dir(s, args) / args.target  # a stream name
        return dump(target, sys.stdout, include_bytes=args.bytes, tensors=args.tensors)

    def run_verify(s: Any, args: argparse.Namespace) -> int:
        return verify(wal_dir(s, args), sys.stdout)

    wal = subparsers.add_parser("wal", help="tail, dump or verify the audit WAL")
    wal.add_argument("--wal-dir", help="WAL directory (default: from the configuration)")
    sub = wal.add_subparsers(dest="wal_command", required=True)
    t = sub.add_parser("tail", help="follow every stream live, in time order")
    t.add_argument("--once", action="store_true", help="print what is there and exit")
    t.add_argument("--from-start", action="store_true", help="begin at each stream's start")
    t.add_argument("--max", type=int, help="exit after this many records")
    t.add_argument("--bytes", action="store_true", help="print input bytes (base64)")
    t.add_argument("--tensors", action="store_true",
                   help="print the inputs decoded (input_tensors; strings as strings)")
    t.set_defaults(func=run_tail)
    d = sub.add_parser("dump", help="print every record of a segment or stream")
    d.add_argument("target", help="a segment file, a stream directory or a stream name")
    d.add_argument("--bytes", action="store_true", help="print input bytes (base64)")
    d.add_argument("--tensors", action="store_true",
                   help="print the inputs decoded (input_tensors; strings as strings)")
    d.set_defaults(func=run_dump)
    v = sub.add_parser("verify", help="check every segment; exit 1 on corruption")
    v.set_defaults(func=run_verify)
    if store_getter is not None:
        _add_reship(sub, wal_dir, store_getter)


def _add_reship(sub: Any, wal_dir: Callable[[Any, argparse.Namespace], Path],
                store_getter: Callable[[Any], Any]) -> None:
    from audit.shipper import ReshipPastPosition, Shipper
    from audit.wal import Position

    def run_reship(s: Any, args: argparse.Namespace) -> int:
        segment, _, offset = args.start.partition(":")
        if not (segment.isdigit() and offset.isdigit()):
            print(f"falconctl wal reship: --from takes SEGMENT:OFFSET, got {args.start!r}",
                  file=sys.stderr)
            return 2
        shipper = Shipper(wal_dir(s, args), store_getter(s))
        try:
            stats = shipper.reship(args.stream, Position(int(segment), int(offset)))
        except ReshipPastPosition as exc:
            print(f"falconctl wal reship: {exc}", file=sys.stderr)
            return 2
        print(orjson.dumps({"stream": args.stream, "read": stats.shipped,
                            "inserted": stats.inserted, "skipped": stats.skipped,
                            "errors": stats.errors}).decode())
        return 1 if stats.errors else 0

    r = sub.add_parser("reship", help="ship a stream again from a position (no duplicates)")
    r.add_argument("stream", help="stream name")
    r.add_argument("--from", dest="start", default="0:0", help="SEGMENT:OFFSET (default: start)")
    r.set_defaults(func=run_reship)
