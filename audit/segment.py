"""The WAL's bytes: stream directories, segment files, record framing, errors.

One *stream* per writer process, one directory per stream::

    <wal_dir>/<stream>/writer.lock                the writer holds flock(LOCK_EX) on it
    <wal_dir>/<stream>/0000000000000000.wal       segment 0
    <wal_dir>/<stream>/0000000000000001.wal       segment 1, ... (16 hex digits)

A stream directory appears atomically (built under ``.tmp-<stream>-*`` and renamed), so
a visible stream always has its lock file and a first segment with a whole header.
New segments are written as ``<name>.wal.tmp``, fsynced, renamed, and the directory
fsynced: a ``*.wal`` file always starts with a whole header.

Segment file (all integers big-endian)::

     0      4     5     6      8                                   136         144        152      156    160
    +------+-----+-----+------+-----------------------------------+-----------+----------+--------+------+
    |magic | ver |flags| name | stream name, UTF-8, NUL-padded    | segment   | created  |reserved| hdr  |
    |'FWAL'| 01  | 00  | len  | (128 bytes)                       | no. (u64) | (i64 ns) | (zero) | crc32|
    +------+-----+-----+------+-----------------------------------+-----------+----------+--------+------+
    then records, back to back, until the end of the file:
    +----------------+----------------+==================================+
    | length (u32)   | crc (u32)      | payload (``length`` bytes)       |
    +----------------+----------------+==================================+

- ``hdr crc32`` is ``zlib.crc32`` over the header's first 156 bytes. The header must match
  the file it is in: its stream name is the directory's name, its segment number the file's.
- ``crc`` is ``zlib.crc32`` over the 4 length bytes followed by the payload, so a flipped
  length is caught too. ``length`` is at most :data:`MAX_RECORD` (16 MiB); a reader checks
  it before reading the payload, so a garbage length cannot make it allocate.
- A record never spans segments. The writer rolls to segment ``n + 1`` when the next record
  would take segment ``n`` past its size limit (a record larger than the limit gets a
  segment of its own). Segment numbers of a stream are consecutive; the oldest ones may
  have been removed once shipped.
- A :class:`Position` names the byte after a record: ``(segment, offset)``. Reading from a
  position yields the records after it; ``Position(0, 0)`` is the start of any stream.

Torn tail versus corruption (see :func:`check_bytes`): when a record at offset X is
incomplete (the file ends inside it) or fails its CRC, the bytes from X to the end of the
file are searched for any valid record at a later offset. None: a *torn tail*, the
writer's last write cut short (or, while it lives, not finished yet); it is cut by
recovery and never read. One: :class:`WalCorrupt`, naming stream, segment and offset.
Appending writers only ever extend a file, so a reader's view is a prefix of what the
file will hold, and a valid record can never follow one that is still being written.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

MAGIC = b"FWAL"
VERSION = 1
NAME_BYTES = 128
HEADER = struct.Struct(">4sBBH128sQq4xI")
HEADER_BODY = struct.Struct(">4sBBH128sQq4x")  # the bytes the header crc covers
RECORD = struct.Struct(">II")
LENGTH = struct.Struct(">I")
MAX_RECORD = 16 << 20
SUFFIX = ".wal"
LOCK_NAME = "writer.lock"
STREAM_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
SEGMENT_RE = re.compile(r"([0-9a-f]{16})\.wal")

assert HEADER.size == 160 and HEADER_BODY.size == 156


class Position(NamedTuple):
    """Where a reader stands: ``offset`` is the next unread byte of ``segment``."""

    segment: int
    offset: int


START = Position(0, 0)


class WalError(Exception):
    """Root of every error the WAL raises on purpose. Bad arguments (an invalid stream
    name, an oversized payload) are ``ValueError``: bugs in the caller."""


class WalFailed(WalError):
    """A write or fsync of the WAL failed (disk full, I/O error). The writer has stopped
    for good and released its lock: it never retries an fsync, since a failed fsync may
    have dropped the dirty pages (PostgreSQL's fsync lesson). Every later append raises
    this; start a new writer (a new process) on a new stream. Records acknowledged
    before the failure stay readable; one being written may be left as a torn tail."""


class WalFull(WalError):
    """The disk-space guard refused the append: free space on the WAL's filesystem is
    below ``min_free_bytes``. Likely cause: the shipper cannot reach PostgreSQL and the
    WAL grows. Nothing was written; appends succeed again once space returns."""


class WalCorrupt(WalError):
    """A segment holds bytes that are neither valid records nor a torn tail: a bad segment
    header, or a record failing its length or CRC check with valid records after it.
    Likely cause: a disk or filesystem fault, or a file edited or copied by hand. The
    message names the stream, segment and offset; ``falconctl wal verify`` lists all."""


class WalLocked(WalError):
    """Another live writer holds the stream's lock. Likely cause: two processes given the
    same stream name, or a writer created before ``fork()`` (create it in the child)."""


class WalClosed(WalError):
    """The writer was closed; nothing more can be appended to it."""


class Header(NamedTuple):
    stream: str
    segment: int
    created_ns: int


def check_stream_name(stream: str) -> str:
    if not isinstance(stream, str) or not STREAM_RE.fullmatch(stream):
        raise ValueError(f"invalid WAL stream name {stream!r}: 1-128 of [A-Za-z0-9_.-], "
                         "not starting with '.'")
    return stream


def segment_name(segment: int) -> str:
    return f"{segment:016x}{SUFFIX}"


def list_segments(stream_dir: Path) -> list[int]:
    """The segment numbers present in ``stream_dir``, ascending ([] if it is missing)."""
    try:
        names = os.listdir(stream_dir)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1), 16) for m in map(SEGMENT_RE.fullmatch, names) if m)


def encode_header(stream: str, segment: int, created_ns: int) -> bytes:
    name = check_stream_name(stream).encode()
    body = HEADER_BODY.pack(MAGIC, VERSION, 0, len(name), name, segment, created_ns)
    return body + LENGTH.pack(zlib.crc32(body))


def decode_header(data: bytes, where: str) -> Header:
    """Check a segment header; ``where`` names the file in the :class:`WalCorrupt`."""
    if len(data) < HEADER.size:
        raise WalCorrupt(f"{where}: segment header is {len(data)} bytes, expected {HEADER.size}")
    magic, version, _flags, name_len, name, segment, created, crc = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WalCorrupt(f"{where}: bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise WalCorrupt(f"{where}: segment format version {version}, this reader knows {VERSION}")
    if zlib.crc32(data[:HEADER_BODY.size]) != crc:
        raise WalCorrupt(f"{where}: segment header CRC mismatch")
    if name_len > NAME_BYTES:
        raise WalCorrupt(f"{where}: stream name length {name_len} > {NAME_BYTES}")
    return Header(name[:name_len].decode("utf-8", "replace"), segment, created)


def encode_record(payload: bytes) -> bytes:
    """One framed record; ``ValueError`` if ``payload`` exceeds :data:`MAX_RECORD`."""
    if len(payload) > MAX_RECORD:
        raise ValueError(f"WAL payload of {len(payload)} bytes exceeds {MAX_RECORD}")
    length = LENGTH.pack(len(payload))
    return RECORD.pack(len(payload), zlib.crc32(payload, zlib.crc32(length))) + payload


def record_at(buf: bytes | memoryview, i: int) -> int:
    """The size of the valid record framed at ``buf[i:]``: > 0 if it is whole and its
    CRC matches, 0 if ``buf`` ends inside it, -1 if its length or CRC is bad."""
    if len(buf) - i < RECORD.size:
        return 0
    length, crc = RECORD.unpack_from(buf, i)
    if length > MAX_RECORD:
        return -1
    end = i + RECORD.size + length
    if end > len(buf):
        return 0
    mv = memoryview(buf)
    if zlib.crc32(mv[i + RECORD.size:end], zlib.crc32(mv[i:i + 4])) != crc:
        return -1
    return end - i


def next_valid(buf: bytes | memoryview, start: int) -> int | None:
    """The first offset >= ``start`` in ``buf`` where a whole valid record begins."""
    for i in range(start, len(buf) - RECORD.size + 1):
        if record_at(buf, i) > 0:
            return i
    return None


class Scan(NamedTuple):
    """Records found in a buffer and why the scan stopped.

    ``records`` holds ``(offset after the record, payload)``; ``stop`` is the offset
    (in the file) of the first byte not consumed; ``state`` is ``"end"`` (the buffer
    ended on a record boundary), ``"limit"`` (max_records or max_bytes reached),
    ``"short"`` (the buffer ends inside the record at ``stop``) or ``"bad"`` (the
    record at ``stop`` fails its length or CRC check). Readers add ``"torn"`` (a torn
    tail at ``stop``) and ``"corrupt"`` (``error`` says where and why)."""

    records: list[tuple[int, bytes]]
    stop: int
    state: str
    error: WalCorrupt | None = None


def scan(buf: bytes, base: int, *, max_records: int, max_bytes: int,
         have: int = 0, taken: int = 0) -> Scan:
    """Parse records from ``buf``, which holds the file's bytes from offset ``base``,
    until ``have`` (records already read) reaches ``max_records`` or ``taken`` (payload
    bytes already read) would pass ``max_bytes``. The first record of all is returned
    whatever its size, so that one larger than ``max_bytes`` cannot block a reader."""
    records: list[tuple[int, bytes]] = []
    i, mv = 0, memoryview(buf)
    while True:
        if have >= max_records or (have and taken >= max_bytes):
            return Scan(records, base + i, "limit")
        if i == len(buf):
            return Scan(records, base + i, "end")
        size = record_at(mv, i)
        if size <= 0:
            return Scan(records, base + i, "short" if size == 0 else "bad")
        payload = bytes(mv[i + RECORD.size:i + size])
        if have and taken + len(payload) > max_bytes:
            return Scan(records, base + i, "limit")
        i += size
        have += 1
        taken += len(payload)
        records.append((base + i, payload))


def check_bytes(rest: bytes, offset: int, where: str) -> None:
    """``rest`` holds a file from ``offset`` (where a record is short or bad) to its end.
    Return if that is a torn tail; raise :class:`WalCorrupt` if a valid record follows."""
    found = next_valid(rest, 1)
    if found is not None:
        state = "incomplete" if record_at(rest, 0) == 0 else "bad length or CRC"
        raise WalCorrupt(f"{where}: record at offset {offset} is {state}, yet a valid "
                         f"record follows at offset {offset + found}")


def read_all(fd: int, offset: int) -> bytes:
    """The file's bytes from ``offset`` to its end (a prefix of them if it grows)."""
    parts = []
    while chunk := os.pread(fd, 1 << 20, offset):
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)

