"""Byte layout of a weights segment, layout version 1.

A segment is one file in ``/dev/shm`` (Linux's POSIX shared memory is a tmpfs
there), written once by :func:`shm.publish` and never modified afterwards. All
integers are little-endian; the header is 64 bytes so that what follows it can
be 64-byte aligned::

    offset  size  field
    ------  ----  ------------------------------------------------------------
         0     8  magic           b"FALCNSHM"
         8     2  layout_version  u16, = 1 (LAYOUT_VERSION)
        10     2  reserved        u16, = 0; readers reject anything else
        12     4  manifest_len    u32, bytes of UTF-8 JSON manifest,
                                  at most MAX_MANIFEST_BYTES (16 MiB)
        16     8  data_offset     u64, = align64(64 + manifest_len)
        24     8  data_len        u64, bytes in the data region
        32    32  digest          SHA-256 over bytes [0, 32) and
                                  [64, data_offset + data_len): everything
                                  but the digest field itself
        64     M  manifest        JSON, below
      64+M     .  zero padding up to data_offset
    data_offset   data region: every tensor and blob starts at a multiple of
                  64 bytes from data_offset (so from the page-aligned mapping
                  start too); zero padding in between
    -- end of file: file size == data_offset + data_len, exactly --

The manifest (``offset`` counts from ``data_offset``; ``dtype`` is numpy's
``dtype.str``: ``<`` for multi-byte types, ``|`` for one-byte ones; only bool,
signed/unsigned integers and floats)::

    {"arrays": [{"name": "fc1.weight", "dtype": "<f4", "shape": [256, 784],
                 "offset": 0, "nbytes": 802816}, ...],
     "blobs":  [{"name": "graph.onnx", "offset": 802816, "nbytes": 5123}],
     "meta":   {"model": "mnist", "version": 3}}

There is no "complete" flag: a segment is never visible half-written because
the publisher writes it under a temporary name and links it to its final name
only when it is whole (see :mod:`shm.store`).

PERF: the digest is SHA-256, not BLAKE2b. Measured here with hashlib (OpenSSL
3.0, x86-64 with SHA-NI) over 250 MB in 16 MiB updates: sha256 ~1700 MB/s,
blake2b ~880 MB/s, so attach(verify=True) of 250 MB takes ~0.16 s. On CPUs
without SHA extensions BLAKE2b is usually the faster one (not measured here);
re-measure if the hosts change: the algorithm is fixed by the layout version.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from shm.errors import SegmentCorrupt

MAGIC = b"FALCNSHM"
LAYOUT_VERSION = 1
ALIGN = 64
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
ALLOWED_KINDS = "biuf"  # bool, signed int, unsigned int, float

HEADER = struct.Struct("<8sHHIQQ32s")
DIGEST_OFFSET = 32
assert HEADER.size == 64 and HEADER.size % ALIGN == 0

_T = TypeVar("_T")


@dataclass(frozen=True)
class ArrayEntry:
    """Where one tensor lives in the data region."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class BlobEntry:
    """Where one opaque byte string lives in the data region."""

    name: str
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Manifest:
    """Decoded manifest: every entry already checked against the data region."""

    arrays: tuple[ArrayEntry, ...]
    blobs: tuple[BlobEntry, ...]
    meta: dict[str, Any]

    @property
    def data_len(self) -> int:
        ends = [e.offset + e.nbytes for e in self.arrays]
        ends += [e.offset + e.nbytes for e in self.blobs]
        return max(ends, default=0)


@dataclass(frozen=True)
class Header:
    """The fixed 64-byte header, decoded and checked against the file size."""

    manifest_len: int
    data_offset: int
    data_len: int
    digest: bytes

    @property
    def total(self) -> int:
        return self.data_offset + self.data_len


def align_up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def storage_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The little-endian dtype a tensor of ``dtype`` is stored as.

    Raises TypeError for anything but bool, integers and floats.
    """
    if dtype.kind not in ALLOWED_KINDS:  # structured and subarray dtypes are kind "V"
        raise TypeError(f"unsupported dtype {dtype!r}: only bool, int*, uint*, float* are stored")
    return dtype.newbyteorder("<")


# -- writing ------------------------------------------------------------------------


def build_manifest(
    arrays: Mapping[str, tuple[np.dtype[Any], tuple[int, ...]]],
    blob_sizes: Mapping[str, int],
    meta: Mapping[str, Any],
) -> Manifest:
    """Lay the tensors (name -> stored dtype, shape) then blobs out back to back,
    each at the next 64-byte boundary of the data region."""
    cursor = 0
    array_entries = []
    for name, (dtype, shape) in arrays.items():
        offset, nbytes = align_up(cursor), math.prod(shape) * dtype.itemsize
        array_entries.append(ArrayEntry(name, dtype, shape, offset, nbytes))
        cursor = offset + nbytes
    blob_entries = []
    for name, nbytes in blob_sizes.items():
        offset = align_up(cursor)
        blob_entries.append(BlobEntry(name, offset, nbytes))
        cursor = offset + nbytes
    return Manifest(tuple(array_entries), tuple(blob_entries), dict(meta))


def encode_manifest(manifest: Manifest) -> bytes:
    """JSON-encode ``manifest``. Raises TypeError/ValueError if meta is not
    JSON (NaN included) or the result exceeds MAX_MANIFEST_BYTES."""
    doc = {
        "arrays": [
            {
                "name": e.name,
                "dtype": e.dtype.str,
                "shape": list(e.shape),
                "offset": e.offset,
                "nbytes": e.nbytes,
            }
            for e in manifest.arrays
        ],
        "blobs": [{"name": e.name, "offset": e.offset, "nbytes": e.nbytes} for e in manifest.blobs],
        "meta": manifest.meta,
    }
    raw = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ValueError(f"manifest is {len(raw)} bytes, more than {MAX_MANIFEST_BYTES}")
    return raw


def new_header(manifest_len: int, data_len: int) -> Header:
    """The header of a segment being written; its digest is still zeros."""
    return Header(manifest_len, align_up(HEADER.size + manifest_len), data_len, bytes(32))


def pack_header(h: Header) -> bytes:
    return HEADER.pack(
        MAGIC, LAYOUT_VERSION, 0, h.manifest_len, h.data_offset, h.data_len, h.digest
    )


def content_digest(buf: memoryview, total: int) -> bytes:
    """SHA-256 of everything in ``buf[:total]`` except the digest field."""
    h = hashlib.sha256()
    with buf[:DIGEST_OFFSET] as head, buf[HEADER.size : total] as rest:
        h.update(head)
        h.update(rest)  # hashlib drops the GIL for large updates
    return h.digest()


# -- reading ------------------------------------------------------------------------


def unpack_header(raw: bytes, file_size: int) -> Header:
    """Decode and check the header. ``raw`` is the first HEADER.size bytes of
    a file of ``file_size`` bytes. Raises SegmentCorrupt."""
    if file_size < HEADER.size or len(raw) < HEADER.size:
        raise SegmentCorrupt(f"{file_size} bytes is shorter than the {HEADER.size}-byte header")
    magic, version, reserved, mlen, doff, dlen, digest = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise SegmentCorrupt(f"bad magic {magic!r}, expected {MAGIC!r}: not a weights segment")
    if version != LAYOUT_VERSION or reserved != 0:
        raise SegmentCorrupt(f"layout version {version}.{reserved}, expected {LAYOUT_VERSION}.0")
    if mlen > MAX_MANIFEST_BYTES or doff != align_up(HEADER.size + mlen):
        raise SegmentCorrupt(f"manifest length {mlen} / data offset {doff} are inconsistent")
    if doff + dlen != file_size:
        raise SegmentCorrupt(f"file is {file_size} bytes, header says {doff + dlen}: truncated?")
    return Header(mlen, doff, dlen, digest)


def decode_manifest(raw: bytes, data_len: int) -> Manifest:
    """Parse and check the manifest against a data region of ``data_len``
    bytes. Raises SegmentCorrupt."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError both are
        raise SegmentCorrupt(f"manifest is not UTF-8 JSON: {exc}") from exc
    if not isinstance(doc, dict) or set(doc) != {"arrays", "blobs", "meta"}:
        raise SegmentCorrupt("manifest must be an object with arrays, blobs and meta")
    arrays = tuple(_array_entry(e, data_len) for e in _field(doc, "arrays", list))
    blobs = tuple(_blob_entry(e, data_len) for e in _field(doc, "blobs", list))
    for kind, entries in (("array", arrays), ("blob", blobs)):
        if len({e.name for e in entries}) != len(entries):
            raise SegmentCorrupt(f"manifest names a {kind} twice")
    return Manifest(arrays, blobs, _field(doc, "meta", dict))


def _field(entry: object, key: str, kind: type[_T]) -> _T:
    value = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SegmentCorrupt(f"manifest entry {entry!r:.200}: {key} missing or not {kind.__name__}")
    return value


def _span(entry: object, data_len: int) -> tuple[int, int]:
    offset, nbytes = _field(entry, "offset", int), _field(entry, "nbytes", int)
    if offset < 0 or nbytes < 0 or offset % ALIGN or offset + nbytes > data_len:
        raise SegmentCorrupt(f"manifest entry {entry!r:.200} lies outside the data region")
    return offset, nbytes


def _array_entry(entry: object, data_len: int) -> ArrayEntry:
    name, text = _field(entry, "name", str), _field(entry, "dtype", str)
    try:
        dtype = np.dtype(text)
    except (TypeError, ValueError) as exc:
        raise SegmentCorrupt(f"array {name!r}: unknown dtype {text!r}") from exc
    if dtype.str != text or dtype.kind not in ALLOWED_KINDS or dtype.byteorder == ">":
        raise SegmentCorrupt(f"array {name!r}: dtype {text!r} is not a stored dtype")
    shape = _shape(name, _field(entry, "shape", list))
    offset, nbytes = _span(entry, data_len)
    if nbytes != math.prod(shape) * dtype.itemsize:
        raise SegmentCorrupt(f"array {name!r}: shape {shape} does not fit {nbytes} bytes")
    return ArrayEntry(name, dtype, shape, offset, nbytes)


def _shape(name: str, dims: list[Any]) -> tuple[int, ...]:
    if not all(type(d) is int and d >= 0 for d in dims):
        raise SegmentCorrupt(f"array {name!r}: shape {dims!r:.200} is not a list of sizes")
    return tuple(dims)


def _blob_entry(entry: object, data_len: int) -> BlobEntry:
    name = _field(entry, "name", str)
    offset, nbytes = _span(entry, data_len)
    return BlobEntry(name, offset, nbytes)
