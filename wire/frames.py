"""Framing of the edge <-> daemon protocol over a Unix stream socket.

Every message is one frame::

     0       2       3       4               8
    +-------+-------+-------+---------------+=========================+
    | magic | ver   | kind  | length (u32,  |  msgpack payload        |
    | 'FW'  | 0x01  |       | big-endian)   |  (``length`` bytes)     |
    +-------+-------+-------+---------------+=========================+

- ``magic`` is ``b"FW"``; anything else is a :class:`BadFrame` (wrong peer,
  or a desynchronised stream) and the connection must be dropped.
- ``ver`` is :data:`VERSION`. A peer speaking another version gets
  :class:`BadFrame` naming both versions.
- ``kind`` is :data:`REQUEST` or :data:`RESPONSE`.
- ``length`` is checked against the receiver's ``max_frame`` *before* the
  payload is read, so a hostile length cannot make it allocate.
- The payload is one msgpack map (see :mod:`wire.messages`). Tensors travel
  inside it as msgpack ``bin`` (raw little-endian bytes), never as lists.

A stream that ends exactly on a frame boundary is a clean close
(:class:`ConnectionClosed`); one that ends inside a frame is a torn frame
(:class:`TornFrame`).
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import msgpack

MAGIC = b"FW"
VERSION = 1
REQUEST = 1
RESPONSE = 2
KINDS = (REQUEST, RESPONSE)

HEADER = struct.Struct(">2sBBI")
DEFAULT_MAX_FRAME = 64 << 20


class WireError(Exception):
    """Root of the protocol errors. The connection that raised it is unusable."""


class BadFrame(WireError):
    """The bytes are not a frame of this protocol: wrong magic, version, kind,
    an oversized length, or a payload that is not a msgpack map. Likely cause: a
    peer of another version, or a bug that desynchronised the stream."""


class ConnectionClosed(WireError):
    """The peer closed the connection cleanly, between frames."""


class TornFrame(WireError):
    """The stream ended inside a frame: the peer died or reset mid-write."""


def encode(kind: int, payload: dict[str, Any]) -> bytes:
    """One frame for ``payload``; raises :class:`BadFrame` if it exceeds 4 GiB."""
    if kind not in KINDS:
        raise BadFrame(f"unknown frame kind {kind}")
    body = msgpack.packb(payload, use_bin_type=True)
    if len(body) > 0xFFFFFFFF:
        raise BadFrame(f"payload of {len(body)} bytes does not fit a frame")
    return HEADER.pack(MAGIC, VERSION, kind, len(body)) + body


def decode_header(header: bytes, max_frame: int) -> tuple[int, int]:
    """Check an 8-byte header; return ``(kind, length)``."""
    magic, version, kind, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise BadFrame(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise BadFrame(f"protocol version {version}, this side speaks {VERSION}")
    if kind not in KINDS:
        raise BadFrame(f"unknown frame kind {kind}")
    if length > max_frame:
        raise BadFrame(f"frame of {length} bytes exceeds the limit of {max_frame}")
    return kind, length


def decode_payload(body: bytes) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated classes
        raise BadFrame(f"payload is not valid msgpack: {exc}") from None
    if not isinstance(obj, dict):
        raise BadFrame(f"payload is a {type(obj).__name__}, expected a map")
    return obj


def _recv_exactly(sock: socket.socket, n: int, started: bool) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            if got == 0 and not started:
                raise ConnectionClosed("peer closed the connection")
            raise TornFrame(f"stream ended after {got} of {n} bytes")
        got += k
    return bytes(buf)


def read_frame(sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME) -> tuple[int, dict[str, Any]]:
    """Read one whole frame from a blocking socket."""
    kind, length = decode_header(_recv_exactly(sock, HEADER.size, started=False), max_frame)
    return kind, decode_payload(_recv_exactly(sock, length, started=True))


class FrameReader:
    """Reads frames from a blocking socket through one receive buffer.

    PERF: :func:`read_frame` costs two ``recv`` calls per frame (header, then
    payload), and a thread gives up the GIL in each. A peer that answers several
    requests at once sends their frames back to back. Here one ``recv`` of up to
    ``chunk`` bytes takes all of them, and :meth:`read` hands them out one by one
    from the buffer. Frames are checked exactly as :func:`read_frame` checks them
    (header, then ``max_frame``, then the payload). Not thread-safe: one reader per
    socket.
    """

    def __init__(self, sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME,
                 chunk: int = 256 << 10) -> None:
        self.sock = sock
        self.max_frame = max_frame
        self.chunk = chunk
        self._buf = bytearray()
        self._pos = 0

    def read(self) -> tuple[int, dict[str, Any]]:
        """The next frame; raises :class:`ConnectionClosed`, :class:`TornFrame`,
        :class:`BadFrame` or ``OSError`` like :func:`read_frame`."""
        self._fill(HEADER.size)
        kind, length = decode_header(bytes(self._buf[self._pos:self._pos + HEADER.size]),
                                     self.max_frame)
        self._fill(HEADER.size + length)
        start = self._pos + HEADER.size
        body = bytes(self._buf[start:start + length])
        self._pos = start + length
        return kind, decode_payload(body)

    def _fill(self, n: int) -> None:
        """Make ``n`` unread bytes available, receiving as much as is there."""
        while len(self._buf) - self._pos < n:
            if self._pos:  # drop what was read before growing
                del self._buf[:self._pos]
                self._pos = 0
            data = self.sock.recv(max(self.chunk, n - len(self._buf)))
            if not data:
                if not self._buf:
                    raise ConnectionClosed("peer closed the connection")
                raise TornFrame(f"stream ended after {len(self._buf)} of {n} bytes of a frame")
            self._buf += data


async def read_frame_async(reader: Any, max_frame: int = DEFAULT_MAX_FRAME) -> tuple[int, dict[str, Any]]:
    """Read one whole frame from an ``asyncio.StreamReader``."""
    import asyncio

    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise ConnectionClosed("peer closed the connection") from None
        raise TornFrame(f"stream ended inside a header ({len(exc.partial)} bytes)") from None
    kind, length = decode_header(header, max_frame)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise TornFrame(f"stream ended after {len(exc.partial)} of {length} bytes") from None
    return kind, decode_payload(body)
