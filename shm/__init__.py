"""Named POSIX shared-memory segments holding a model version's weights.

One segment per loaded model version: its tensors (ONNX initializers) as
64-byte-aligned little-endian arrays, opaque blobs (the weight-stripped ONNX
graph) and a small JSON ``meta`` dict, behind a 64-byte header with a content
digest. Any number of processes attach to it and get zero-copy, read-only numpy
views, so the weights are paid for once per host. Byte layout: :mod:`shm.layout`;
atomic publication and the ownership check on attach: :mod:`shm.store`; the
private directory the segments live in, naming and the resource-tracker problem:
:mod:`shm.names`.

Imports only the standard library and numpy.
"""

from shm.errors import (
    SegmentCorrupt,
    SegmentExists,
    SegmentForeign,
    SegmentNotFound,
    ShmError,
)
from shm.names import list_segments, remove_dir, segment_path, sweep_temp, unlink
from shm.segment import Segment
from shm.store import attach, publish

__all__ = [
    "Segment",
    "SegmentCorrupt",
    "SegmentExists",
    "SegmentForeign",
    "SegmentNotFound",
    "ShmError",
    "attach",
    "list_segments",
    "publish",
    "remove_dir",
    "segment_path",
    "sweep_temp",
    "unlink",
]
