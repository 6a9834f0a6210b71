"""Named POSIX shared-memory segments holding a model version's weights.

One segment per loaded model version: its tensors (ONNX initializers) as
64-byte-aligned little-endian arrays, opaque blobs (the weight-stripped ONNX
graph) and a small JSON ``meta`` dict, behind a 64-byte header with a content
digest. Any number of processes attach to it and get zero-copy, read-only numpy
views, so the weights are paid for once per host. Byte layout: :mod:`shm.layout`;
atomic publication: :mod:`shm.store`; naming and the resource-tracker
problem: :mod:`shm.names`.

Imports only the standard library and numpy.
"""

from shm.errors import SegmentCorrupt, SegmentExists, SegmentNotFound, ShmError
from shm.names import list_segments, sweep_temp, unlink
from shm.segment import Segment
from shm.store import attach, publish

__all__ = [
    "Segment",
    "SegmentCorrupt",
    "SegmentExists",
    "SegmentNotFound",
    "ShmError",
    "attach",
    "list_segments",
    "publish",
    "sweep_temp",
    "unlink",
]
