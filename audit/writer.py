"""Appending to a WAL stream: one :class:`WalWriter` per process, shared by its threads.

Every append ``os.write``s the whole framed record to the segment file (no userspace
buffer) before it returns, so once ``append`` has returned, a kill -9 of the process loses
nothing. What the sync policy decides is when the bytes reach the disk:

- ``always``   — ``fdatasync`` inside every append, before it returns (under the write lock:
                 one fsync per record).
- ``batch``    — group commit (:class:`~audit.groupcommit.GroupCommit`, where the
                 protocol is written down). Appenders write under the lock, then wait
                 until one ``fdatasync`` covering their bytes has completed; the first to
                 find none in flight leads one, outside the lock, for every byte written
                 so far. One fsync serves many appends. ``before_sync`` (optional) runs in
                 the leader just before it takes the bytes its fsync covers: under
                 gevent, a yield, so that the greenlets made runnable with it (the other
                 answers of one daemon batch) append first and share its fsync.
- ``interval`` — append returns after the write; a background thread fdatasyncs every
                 ``interval_ms`` (a power loss may lose that long; a process crash loses
                 nothing).

A failed write or fsync (``OSError``, ENOSPC included) stops the writer for good: it
records the cause in :attr:`WalWriter.failed`, cuts the current segment back to the end
of the last record it acknowledged (a record whose fsync failed was answered 503: it
must not ship, audited but not served; issue 15 item 16. A shipper that read it in the
milliseconds before the fsync failed has shipped it: that window remains), closes its
file, releases its lock (so the shipper sees a dead writer and may cut the torn tail)
and raises
:class:`~audit.segment.WalFailed` then and on every later append. It never retries an
fsync: after a failed fsync the kernel may have dropped the dirty pages and a retry would
report success for data that is gone (PostgreSQL's fsync lesson).

The disk-space guard reads ``fstatvfs`` at most every :data:`GUARD_INTERVAL_S` and counts
the bytes written since; below ``min_free_bytes`` an append raises
:class:`~audit.segment.WalFull` and writes nothing.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from audit.groupcommit import GroupCommit
from audit.reader import StreamReader, recover_locked
from audit.segment import (
    HEADER,
    LOCK_NAME,
    Position,
    WalClosed,
    WalFailed,
    WalFull,
    WalLocked,
    check_stream_name,
    encode_header,
    encode_record,
    segment_name,
)
from service.durable import fsync_dir

SYNC_POLICIES = ("always", "batch", "interval")
GUARD_INTERVAL_S = 0.1
LOCK_TRIES = 50  # a reader's liveness probe holds the lock for microseconds; retry past it


class WalWriter:
    """Appends records to stream ``stream`` under ``wal_dir``, creating it (or, if a dead
    writer left it, cutting its torn tail and continuing in a new segment).

    Raises :class:`~audit.segment.WalLocked` if a live writer holds the stream,
    ``ValueError`` for a bad name or policy, and ``OSError`` if the directory cannot be
    made. Create it in the process that will use it (after ``fork()``): the lock belongs
    to the open file, which a forked child would share."""

    def __init__(self, wal_dir: Path, stream: str, *, sync: str = "batch",
                 interval_ms: int = 50, segment_bytes: int = 64 << 20,
                 min_free_bytes: int = 256 << 20,
                 fsync: Callable[[int], None] = os.fdatasync,
                 before_sync: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if sync not in SYNC_POLICIES:
            raise ValueError(f"WAL sync policy {sync!r}: expected one of {SYNC_POLICIES}")
        if interval_ms <= 0 or segment_bytes <= HEADER.size:
            raise ValueError("WAL interval_ms must be > 0 and segment_bytes > "
                             f"{HEADER.size} (the segment header)")
        self.stream = check_stream_name(stream)
        self.wal_dir = Path(wal_dir)
        self.dir = self.wal_dir / stream
        self.sync, self.interval_s = sync, interval_ms / 1000
        self.segment_bytes, self.min_free_bytes = segment_bytes, min_free_bytes
        self._fsync, self._clock = fsync, clock
        self._closed = False
        self._cond = threading.Condition(threading.Lock())
        # Tickets are bytes appended over all segments; a sync point is (fd, offset).
        self._commit: GroupCommit[tuple[int, int]] = GroupCommit(
            self._cond, point=lambda: (self._fd, self._offset),
            sync=lambda point: self._fsync(point[0]), durable=self._durable,
            stop=self._release, before_sync=before_sync, name=self.stream)
        self._acked = HEADER.size      # end of the last acknowledged record, this segment
        self._free, self._free_at = 0, -GUARD_INTERVAL_S
        self._fd = -1
        self._lock_fd, created = self._open_stream()
        try:
            segs = StreamReader(self.wal_dir, stream).segments()
            self._segment = 0 if created else (segs[-1] + 1 if segs else 0)
            if created:
                self._fd = os.open(self.dir / segment_name(0),
                                   os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            else:
                self._fd = self._new_segment(self._segment)
            self._offset = HEADER.size
        except BaseException:
            self._release()
            raise
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if sync == "interval":
            self._thread = threading.Thread(target=self._run_interval, daemon=True,
                                            name=f"wal-sync-{stream}")
            self._thread.start()

    @property
    def failed(self) -> BaseException | None:
        """Why the writer stopped for good (a write or fsync error), or None."""
        return self._commit.failed

    # --- the stream directory and its lock -----------------------------------------------

    def _open_stream(self) -> tuple[int, bool]:
        """Take the stream's lock: build a new stream directory atomically (segment 0
        included), or lock an existing one and recover what its dead writer left.
        Returns the lock's fd and whether the directory is new."""
        self.wal_dir.mkdir(parents=True, exist_ok=True)
        if not self.dir.exists():
            tmp = self.wal_dir / f".tmp-{self.stream}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            fd = _lock(tmp / LOCK_NAME)
            try:
                self._write_segment_file(tmp, 0)
                fsync_dir(tmp)
                os.rename(tmp, self.dir)  # fails if another writer made it meanwhile
                fsync_dir(self.wal_dir)
            except BaseException:
                os.close(fd)
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return fd, True
        fd = _lock(self.dir / LOCK_NAME)
        try:
            recover_locked(StreamReader(self.wal_dir, self.stream))
        except BaseException:
            os.close(fd)
            raise
        return fd, False

    def _write_segment_file(self, directory: Path, segment: int) -> None:
        """Write ``segment``'s header to a temp file, fsync it, rename it into place."""
        final = directory / segment_name(segment)
        tmp = final.with_name(final.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            _write_all(fd, encode_header(self.stream, segment, int(self._clock() * 1e9)))
            self._fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)

    def _new_segment(self, segment: int) -> int:
        self._write_segment_file(self.dir, segment)
        fsync_dir(self.dir)
        return os.open(self.dir / segment_name(segment),
                       os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    # --- appending ------------------------------------------------------------------------

    def append(self, payload: bytes) -> Position:
        """Append one record; return the position after it once it is durable per the
        sync policy. Thread-safe. Raises WalFull (nothing written, try later), WalFailed
        (the writer is dead), WalClosed, or ValueError (payload over 16 MiB)."""
        frame = encode_record(payload)
        with self._cond:
            self._check_usable()
            try:
                self._guard()
                while not self._room(len(frame)):
                    self._roll(len(frame))
                _write_all(self._fd, frame)
            except OSError as exc:
                raise self._commit.fail(exc) from exc
            self._offset += len(frame)
            self._free -= len(frame)
            pos, ticket = Position(self._segment, self._offset), self._commit.appended(len(frame))
            if self.sync == "always":
                self._commit.sync_locked()
            if self.sync != "batch":
                self._acked = self._offset
                return pos
        self._commit.wait(ticket)
        return pos

    def _durable(self, point: tuple[int, int]) -> None:
        """A sync covered the current segment up to ``point``'s offset (lock held)."""
        self._acked = max(self._acked, point[1])

    def _check_usable(self) -> None:
        self._commit.check()
        if self._closed:
            raise WalClosed(f"WAL stream {self.stream!r} is closed")

    def _guard(self) -> None:
        """Refuse the append if free space is below ``min_free_bytes`` (0: no guard).
        ``fstatvfs`` at most every GUARD_INTERVAL_S; bytes written since are subtracted."""
        if self.min_free_bytes <= 0:
            return
        now = time.monotonic()
        if now - self._free_at >= GUARD_INTERVAL_S:
            st = os.fstatvfs(self._fd)
            self._free, self._free_at = st.f_bavail * st.f_frsize, now
        if self._free < self.min_free_bytes:
            raise WalFull(f"WAL stream {self.stream!r}: {self._free} bytes free on "
                          f"{self.wal_dir}, below the guard of {self.min_free_bytes}")

    def _room(self, size: int) -> bool:
        """Whether a ``size``-byte frame goes into the current segment (an empty segment
        takes any record, so that one larger than the limit gets a segment of its own)."""
        return self._offset + size <= self.segment_bytes or self._offset <= HEADER.size

    def _roll(self, size: int) -> None:
        """fsync and close the full segment, open the next. Called with the lock held;
        first waits until no fsync is in flight on the old file."""
        while self._commit.syncing:
            self._cond.wait()
            self._check_usable()
        if self._room(size):  # another appender rolled while this one waited
            return
        if self._commit.written > self._commit.synced:
            self._commit.sync_locked()
        os.close(self._fd)
        self._fd = -1
        self._fd = self._new_segment(self._segment + 1)
        self._segment += 1
        self._offset = self._acked = HEADER.size

    def _run_interval(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._cond:
                if self.failed is not None or self._closed:
                    return
            try:
                self._commit.lead()  # (close waits for this thread before its last fsync)
            except WalFailed:
                return

    # --- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """fsync what was written, close the file and release the lock. Idempotent.
        Raises WalFailed if that last fsync fails."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._cond:
            while self._commit.syncing:
                self._cond.wait()
            if self.failed is None and self._fd >= 0:
                self._commit.sync_locked()
                self._cond.notify_all()
            self._release()

    def _release(self) -> None:
        if self.failed is not None and self._fd >= 0:
            try:  # what was never acknowledged must not ship (see the module docstring)
                os.ftruncate(self._fd, self._acked)
            except OSError:
                pass  # the shipper's torn-tail cut still applies to a partial record
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._lock_fd = -1

    def __enter__(self) -> WalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    for _ in range(LOCK_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                os.close(fd)
                raise
        time.sleep(0.002)
    os.close(fd)
    raise WalLocked(f"WAL stream {path.parent.name!r} is held by a live writer")


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``; a short write is continued, an error raised (the caller
    fails the writer: the bytes written so far are a torn tail)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n == 0:
            raise OSError(errno.EIO, "write returned 0")
        view = view[n:]
