"""Reading WAL streams: what the shipper and ``falconctl wal`` use.

A :class:`StreamReader` holds no open files and no state between calls; positions are
the caller's to keep (the shipper commits them with the rows: docs/conventions.md,
"Position and data"). Any number of readers, in any processes, may read a stream while
its writer appends.

Whether the writer lives is learnt from its lock file: the writer holds
``flock(LOCK_EX)`` on ``writer.lock`` for its whole life (the kernel drops the lock when
the process dies, kill -9 included); a reader probes with ``LOCK_EX | LOCK_NB`` and lets go
at once. Only a dead writer's stream may be repaired (:meth:`StreamReader.recover`) or
deleted whole (:meth:`StreamReader.remove_through`); both hold the lock while they work, so
a writer cannot reopen the stream under them.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from audit.segment import (
    HEADER,
    LOCK_NAME,
    RECORD,
    START,
    STREAM_RE,
    Position,
    Scan,
    WalCorrupt,
    check_bytes,
    check_stream_name,
    decode_header,
    list_segments,
    read_all,
    scan,
    segment_name,
)
from service.durable import fsync_dir

CHUNK = 1 << 20  # bytes read per pread while scanning


def list_streams(wal_dir: Path) -> list[str]:
    """The streams under ``wal_dir``, sorted (half-built ``.tmp-*`` directories excluded)."""
    try:
        entries = list(os.scandir(wal_dir))
    except FileNotFoundError:
        return []
    return sorted(e.name for e in entries if STREAM_RE.fullmatch(e.name) and e.is_dir())


class StreamReader:
    """Reads one stream's segments. Raises :class:`~audit.segment.WalCorrupt` for bytes
    that are neither records nor a torn tail; reading changes nothing on disk, only
    :meth:`recover` and :meth:`remove_through` do."""

    def __init__(self, wal_dir: Path, stream: str) -> None:
        self.stream = check_stream_name(stream)
        self.dir = Path(wal_dir) / stream
        self.lock_path = self.dir / LOCK_NAME

    def segments(self) -> list[int]:
        return list_segments(self.dir)

    def path(self, segment: int) -> Path:
        return self.dir / segment_name(segment)

    def read(self, start: Position, *, max_records: int = 1000,
             max_bytes: int = 8 << 20) -> list[tuple[Position, bytes]]:
        """Records after ``start``, each with the position after it, crossing segments.

        Stops at ``max_records``, before ``max_bytes`` of payload (but returns at least one
        record), or at the stream's end. A record still being written by a live writer is
        not returned yet; a torn tail of an earlier segment is skipped. At corruption it
        returns the records before it; a read that starts there raises WalCorrupt."""
        return self._read(start, max_records, max_bytes, self.writer_alive)

    def _read(self, start: Position, max_records: int, max_bytes: int,
              alive: Callable[[], bool]) -> list[tuple[Position, bytes]]:
        out: list[tuple[Position, bytes]] = []
        taken = 0
        segs = [s for s in self.segments() if s >= start.segment]
        for seg in segs:
            offset = start.offset if seg == start.segment else 0
            found = self._scan_segment(seg, offset, last=seg == segs[-1], alive=alive,
                                       max_records=max_records, max_bytes=max_bytes,
                                       have=len(out), taken=taken)
            out.extend((Position(seg, end), payload) for end, payload in found.records)
            taken += sum(len(payload) for _, payload in found.records)
            if found.error is not None and not out:
                raise found.error
            if found.state in ("limit", "corrupt"):
                break
        return out

    def _scan_segment(self, seg: int, offset: int, *, last: bool, alive: Callable[[], bool],
                      max_records: int, max_bytes: int, have: int = 0, taken: int = 0) -> Scan:
        """Scan one segment from ``offset``. ``state`` is ``"limit"``, ``"end"``, ``"torn"``
        (a torn tail, or a record a live writer has not finished, at ``stop``) or
        ``"corrupt"`` (with the records before it). A bad header raises WalCorrupt."""
        where = f"WAL stream {self.stream!r} segment {seg} ({self.path(seg)})"
        try:
            fd = os.open(self.path(seg), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # removed since it was listed: shipped already
            return Scan([], offset, "end")
        records: list[tuple[int, bytes]] = []
        try:
            if offset < HEADER.size:
                self._check_header(fd, seg, where)
                offset = HEADER.size
            want = CHUNK
            while True:
                buf = os.pread(fd, want, offset)
                found = scan(buf, offset, max_records=max_records, max_bytes=max_bytes,
                             have=have + len(records), taken=taken)
                records += found.records
                taken += sum(len(p) for _, p in found.records)
                eof = len(buf) < want
                if found.state == "limit" or (found.state == "end" and eof):
                    return Scan(records, found.stop, found.state)
                if found.state == "bad" or (found.state == "short" and eof):
                    still_writing = found.state == "short" and last and alive()
                    if not still_writing:  # torn tail or corruption: which?
                        try:
                            check_bytes(read_all(fd, found.stop), found.stop, where)
                        except WalCorrupt as exc:
                            return Scan(records, found.stop, "corrupt", exc)
                    return Scan(records, found.stop, "torn")
                want = max(CHUNK, _record_size(buf, found.stop - offset))
                offset = found.stop
        finally:
            os.close(fd)

    def _check_header(self, fd: int, seg: int, where: str) -> None:
        header = decode_header(os.pread(fd, HEADER.size, 0), where)
        if header.stream != self.stream or header.segment != seg:
            raise WalCorrupt(f"{where}: header names stream {header.stream!r} segment "
                             f"{header.segment}")

    def end(self) -> Position:
        """The end of the last segment's whole records (``START`` without segments); reads
        that segment. NOTE: if it holds no record yet, that is ``(last, 160)``, which is
        equivalent to the previous segment's end though not equal to it: to ask whether
        anything follows a position, use ``read(pos, max_records=1)`` or ``pending_bytes``."""
        segs = self.segments()
        if not segs:
            return START
        found = self._scan_segment(segs[-1], 0, last=True, alive=self.writer_alive,
                                   max_records=1 << 62, max_bytes=1 << 62)
        if found.error is not None:
            raise found.error
        return Position(segs[-1], max(found.stop, HEADER.size))

    def pending_bytes(self, start: Position) -> int:
        """Bytes of the stream's files after ``start`` (record framing and any torn tail
        included, segment headers not): how far a shipper at ``start`` lags."""
        total = 0
        for seg in self.segments():
            if seg < start.segment:
                continue
            begin = max(start.offset, HEADER.size) if seg == start.segment else HEADER.size
            try:
                total += max(0, os.stat(self.path(seg)).st_size - begin)
            except FileNotFoundError:
                pass
        return total

    def writer_alive(self) -> bool:
        """True while the process that writes this stream lives and has not failed."""
        with self._exclusive() as dead:
            return not dead

    @contextmanager
    def _exclusive(self) -> Iterator[bool]:
        """Yield True, holding the stream's lock, if no writer holds it; else yield False."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # no lock file: no stream, or one half removed
            yield True
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    raise
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock, if taken

    def recover(self) -> Position | None:
        """If the writer is dead, cut a torn tail off the last segment (truncate, fsync)
        and return the stream's end position (as :meth:`end` defines it); if the writer
        lives, do nothing and return None. Raises :class:`WalCorrupt` (and changes
        nothing) if the tail is corrupt rather than torn."""
        with self._exclusive() as dead:
            return recover_locked(self) if dead else None

    def remove_through(self, pos: Position) -> list[Path]:
        """Delete the segments wholly before ``pos.segment`` (never the last one, which a
        writer may be appending to). If the writer is dead and nothing follows ``pos``,
        delete the whole stream directory. Returns the paths removed."""
        segs = self.segments()
        with self._exclusive() as dead:
            if dead and not self._read(pos, 1, 1, lambda: True):
                return self._remove_stream()
        removed = [self.path(s) for s in segs[:-1] if s < pos.segment]
        for path in removed:
            path.unlink(missing_ok=True)
        if removed:
            fsync_dir(self.dir)
        return removed

    def _remove_stream(self) -> list[Path]:
        try:
            names = sorted(os.listdir(self.dir), key=lambda n: n == LOCK_NAME)
        except FileNotFoundError:
            return []
        removed = [self.dir / n for n in names]
        for path in removed:
            path.unlink(missing_ok=True)
        self.dir.rmdir()
        fsync_dir(self.dir.parent)
        return removed + [self.dir]


def _record_size(buf: bytes, i: int) -> int:
    """Bytes needed to hold the whole record framed at ``buf[i:]`` (its header at least)."""
    if len(buf) - i < RECORD.size:
        return RECORD.size
    return RECORD.size + int(RECORD.unpack_from(buf, i)[0])


def recover_locked(reader: StreamReader) -> Position:
    """:meth:`StreamReader.recover`'s work, for a caller that holds the stream's lock:
    drop half-made ``*.tmp`` segments, truncate the last segment's torn tail."""
    names = os.listdir(reader.dir) if reader.dir.is_dir() else []
    for name in names:
        if name.endswith(".tmp"):
            os.unlink(reader.dir / name)
    segs = reader.segments()
    if not segs:
        return START
    last = segs[-1]
    found = reader._scan_segment(last, 0, last=True, alive=lambda: False,
                                 max_records=1 << 62, max_bytes=1 << 62)
    if found.error is not None:
        raise found.error
    if found.state == "torn":
        fd = os.open(reader.path(last), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, found.stop)
            os.fsync(fd)
        finally:
            os.close(fd)
    return Position(last, max(found.stop, HEADER.size))
