"""A mapped weights segment: zero-copy numpy views over a read-only mapping."""

from __future__ import annotations

import contextlib
import math
import mmap
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from shm import names
from shm.layout import ArrayEntry, Header, Manifest


class Segment:
    """One attached (or just published) segment, mapped read-only.

    ``arrays`` are read-only, C-contiguous numpy views into the shared mapping,
    each 64-byte aligned, with the dtype (little-endian) and shape that were
    published: ``onnxruntime.OrtValue.ortvalue_from_numpy`` wraps them without
    copying. ``blobs`` are read-only memoryviews into the same mapping. ``meta``
    is the JSON dict stored in the manifest. ``digest`` is the hex SHA-256
    stored in the header (checked against the content only if the segment was
    attached with ``verify=True`` or published by this process).

    :meth:`close` drops the segment's own references and unmaps the segment if
    nothing else uses it. Views the caller still holds stay valid: they keep
    the mapping alive, and it is unmapped when the last of them is dropped.
    Neither method raises ``ShmError``.
    """

    def __init__(self, name: str, mapping: mmap.mmap, header: Header, manifest: Manifest) -> None:
        self.name = name
        self.nbytes = len(mapping)
        self.digest = header.digest.hex()
        self.meta: dict[str, Any] = manifest.meta
        self._mapping: mmap.mmap | None = mapping
        self._buf = memoryview(mapping)
        base = header.data_offset
        self.arrays: dict[str, npt.NDArray[Any]] = {
            e.name: _array_view(self._buf, base + e.offset, e) for e in manifest.arrays
        }
        self.blobs: dict[str, memoryview] = {
            e.name: self._buf[base + e.offset : base + e.offset + e.nbytes] for e in manifest.blobs
        }

    @property
    def closed(self) -> bool:
        return self._mapping is None

    def close(self) -> None:
        """Drop this segment's views and unmap it; safe to call twice.

        If the caller still holds arrays or blobs from it, the mapping stays
        until those are dropped (``mmap.close`` would raise BufferError; that
        is expected and swallowed here).
        """
        self.arrays = {}
        self.blobs = {}
        mapping, self._mapping = self._mapping, None
        if mapping is None:
            return
        # NOTE: BufferError means views are still exported; the last one to go unmaps.
        with contextlib.suppress(BufferError):
            self._buf.release()
        with contextlib.suppress(BufferError):
            mapping.close()

    def unlink(self) -> None:
        """Remove the segment's name (see :func:`shm.unlink`); the mapping stays
        usable until closed. Does nothing if the name is already gone."""
        names.unlink(self.name)

    def __enter__(self) -> Segment:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.arrays)} arrays, {len(self.blobs)} blobs"
        return f"<Segment {self.name!r} {self.nbytes} bytes, {state}>"


def _array_view(buf: memoryview, offset: int, entry: ArrayEntry) -> npt.NDArray[Any]:
    # NOTE: np.frombuffer, not np.ndarray(buffer=...): frombuffer holds a buffer
    # export on the mapping, so mmap.close() refuses (BufferError) while the view
    # lives. np.ndarray(buffer=mmap) keeps only a reference, and closing the
    # mmap under it leaves a dangling pointer (segfault on the next read).
    count = math.prod(entry.shape)
    return np.frombuffer(buf, dtype=entry.dtype, count=count, offset=offset).reshape(entry.shape)
