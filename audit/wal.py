"""The audit write-ahead log: the one module the edge, the shipper and ``falconctl`` import.

Each edge worker process appends to its own *stream* with a :class:`WalWriter`; the
shipper reads every stream with a :class:`StreamReader`. The byte layout (stream
directories, segment header, record framing, torn tail versus corruption) is documented
in :mod:`audit.segment`; the sync policies and failure rules in :mod:`audit.writer`; the
reading, liveness, recovery and removal rules in :mod:`audit.reader`.

Errors: :class:`WalError` is the root; :class:`WalFailed` (the writer stopped for good),
:class:`WalFull` (disk-space guard; retry later), :class:`WalCorrupt` (bad bytes that are
not a torn tail), :class:`WalLocked` (a live writer holds the stream), :class:`WalClosed`.
"""

from __future__ import annotations

from audit.reader import StreamReader, list_streams
from audit.segment import (
    MAX_RECORD,
    START,
    Position,
    WalClosed,
    WalCorrupt,
    WalError,
    WalFailed,
    WalFull,
    WalLocked,
)
from audit.writer import SYNC_POLICIES, WalWriter

__all__ = [
    "MAX_RECORD", "START", "SYNC_POLICIES", "Position", "StreamReader", "WalClosed",
    "WalCorrupt", "WalError", "WalFailed", "WalFull", "WalLocked", "WalWriter", "list_streams",
]
