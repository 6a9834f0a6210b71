"""Publishing and attaching segments.

Usage::

    seg = publish("falcon.digits.1.ab12", {"w": weights}, {"graph": graph_bytes}, meta)
    seg = attach("falcon.digits.1.ab12")          # verify=True: digest recomputed
    seg.close(); seg.unlink()

Publication is atomic. :func:`publish` creates ``.<name>.<pid>.<hex>.tmp`` in the
namespace's private directory (:mod:`shm.names`; every call here acts in it through
the directory fd that was checked, ``dir_fd=``) with ``O_EXCL|O_NOFOLLOW``, mode
0600, reserves its full size with ``posix_fallocate`` (a full tmpfs fails here with
ENOSPC instead of killing the process with SIGBUS on a later page fault), writes
manifest, data and finally the digest, then ``os.link``\\s it to ``<name>`` and
unlinks the temp name. ``link`` is atomic and, unlike ``rename``, never replaces an
existing segment: a second publisher of the same name gets :class:`SegmentExists`. A
reader therefore sees either no segment or a complete one. A publisher that crashes
mid-write leaves only the temp file, which is never attached or listed (its name is
not a valid segment name); :func:`shm.sweep_temp` removes those of dead pids.

APPSEC: :func:`attach` proves the file is ours before reading a byte of it: it opens
with ``O_NOFOLLOW|O_NONBLOCK`` (a symlink fails, a FIFO does not block) and checks
on the open descriptor (``fstat``, so nothing can be swapped in between) that it is a
regular file, owned by our effective uid, that neither group nor others may write;
anything else is :class:`SegmentForeign`. The directory already keeps other users
out; this check holds even if the directory were not ours.

A segment must not be modified or truncated once published: a mapping whose
file shrinks under it faults with SIGBUS. Attach checks the size only once.
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import os
import stat
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from shm import layout
from shm.errors import SegmentCorrupt, SegmentExists, SegmentForeign, SegmentNotFound
from shm.layout import HEADER, ArrayEntry, Header, Manifest
from shm.names import check_name, opened_dir, temp_name
from shm.segment import Segment

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def publish(
    name: str,
    arrays: Mapping[str, npt.ArrayLike],
    blobs: Mapping[str, bytes] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Segment:
    """Write ``arrays``, ``blobs`` and ``meta`` into a new segment ``name`` and
    return it attached (read-only, digest already known).

    Arrays are stored C-contiguous and little-endian (big-endian input is
    byte-swapped). Raises SegmentExists if ``name`` exists (nothing written),
    ValueError for a bad name or an oversized manifest, TypeError for an
    unsupported dtype or non-JSON meta, OSError (ENOSPC) if ``/dev/shm`` is
    full. On any error no segment and no temp file is left behind.
    """
    check_name(name)
    sources = {_key(k): np.asarray(a) for k, a in arrays.items()}
    blob_views = {_key(k): memoryview(b).cast("B") for k, b in (blobs or {}).items()}
    manifest = layout.build_manifest(
        {k: (layout.storage_dtype(a.dtype), a.shape) for k, a in sources.items()},
        {k: v.nbytes for k, v in blob_views.items()},
        meta or {},
    )
    raw = layout.encode_manifest(manifest)
    dfd, tmp, fd = _create_temp(name)
    try:
        header = _write(fd, manifest, raw, sources, blob_views)
        _link(dfd, tmp, name)
        mapping = mmap.mmap(fd, header.total, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
        os.unlink(tmp, dir_fd=dfd)
        os.close(dfd)
    return Segment(name, mapping, header, manifest)


def attach(name: str, *, verify: bool = True) -> Segment:
    """Map the existing segment ``name`` read-only.

    Checks magic, layout version, manifest and sizes; with ``verify`` (the
    default) also recomputes the content digest, which reads every byte
    (~0.16 s for 250 MB, measured). Raises SegmentNotFound, SegmentForeign (not
    provably ours: see the module docstring), SegmentCorrupt, or ValueError for an
    invalid name. Leaves nothing mapped on error.
    """
    fd = _open_own(name)
    try:
        header = _read_header(fd, name)
        mapping = mmap.mmap(fd, header.total, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    try:
        manifest = _read_manifest(mapping, header, name)
        if verify:
            _verify(mapping, header, name)
        return Segment(name, mapping, header, manifest)
    except BaseException:
        mapping.close()
        raise


def _create_temp(name: str) -> tuple[int, str, int]:
    """The directory's fd (the caller closes it), a fresh temp name in it and the
    temp file's fd (0600, O_EXCL). Raises SegmentExists if the segment exists."""
    attempts = 0
    while True:
        with opened_dir(name, create=True) as checked:
            dfd = os.dup(checked)
        try:
            if _exists(dfd, name):
                raise SegmentExists(f"segment {name!r} already exists")
            tmp = temp_name(name)
            return dfd, tmp, os.open(tmp, _CREATE_FLAGS, 0o600, dir_fd=dfd)
        except FileNotFoundError:  # the directory's last segment was just unlinked
            os.close(dfd)
            attempts += 1
            if attempts == 3:
                raise
        except BaseException:
            os.close(dfd)
            raise


def _exists(dfd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"array and blob names must be str, not {type(key).__name__}")
    return key


def _write(
    fd: int,
    manifest: Manifest,
    raw: bytes,
    sources: Mapping[str, npt.NDArray[Any]],
    blobs: Mapping[str, memoryview],
) -> Header:
    header = layout.new_header(len(raw), manifest.data_len)
    os.posix_fallocate(fd, 0, header.total)
    with mmap.mmap(fd, header.total) as mapping:
        mapping[HEADER.size : HEADER.size + len(raw)] = raw
        for entry in manifest.arrays:
            _copy_array(mapping, header.data_offset + entry.offset, entry, sources[entry.name])
        for blob in manifest.blobs:
            start = header.data_offset + blob.offset
            mapping[start : start + blob.nbytes] = blobs[blob.name]
        mapping[: HEADER.size] = layout.pack_header(header)
        with memoryview(mapping) as buf:
            digest = layout.content_digest(buf, header.total)
        mapping[layout.DIGEST_OFFSET : HEADER.size] = digest
    return dataclasses.replace(header, digest=digest)


def _copy_array(mapping: mmap.mmap, offset: int, entry: ArrayEntry, src: npt.NDArray[Any]) -> None:
    """Copy (byte-swapping if needed) ``src`` into its place in ``mapping``."""
    dst = np.frombuffer(mapping, entry.dtype, math.prod(entry.shape), offset)
    np.copyto(dst.reshape(entry.shape), src, casting="equiv")


def _link(dfd: int, tmp: str, name: str) -> None:
    try:
        os.link(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
    except FileExistsError:
        raise SegmentExists(f"segment {name!r} was published concurrently") from None


def _open_own(name: str) -> int:
    """Open segment ``name`` read-only, never following a link or blocking; raise
    SegmentForeign unless it is a regular file of ours that only we may write."""
    try:
        with opened_dir(name) as dfd:
            fd = os.open(name, _OPEN_FLAGS, dir_fd=dfd)
    except FileNotFoundError:
        raise SegmentNotFound(f"no segment named {name!r}") from None
    except OSError as exc:  # ELOOP: a symlink; ENXIO: a socket; EACCES: not ours
        raise SegmentForeign(f"segment {name!r} cannot be opened as ours: {exc.strerror}") from None
    st = os.fstat(fd)
    why = ("not a regular file" if not stat.S_ISREG(st.st_mode)
           else f"owned by uid {st.st_uid}, not {os.geteuid()}" if st.st_uid != os.geteuid()
           else f"mode {stat.S_IMODE(st.st_mode):04o} lets others write" if st.st_mode & 0o022
           else "")
    if why:
        os.close(fd)
        raise SegmentForeign(f"segment {name!r} is not ours: {why}")
    return fd


def _read_header(fd: int, name: str) -> Header:
    st = os.fstat(fd)
    try:
        return layout.unpack_header(os.pread(fd, HEADER.size, 0), st.st_size)
    except SegmentCorrupt as exc:
        raise SegmentCorrupt(f"segment {name!r}: {exc}") from None


def _read_manifest(mapping: mmap.mmap, header: Header, name: str) -> Manifest:
    try:
        raw = mapping[HEADER.size : HEADER.size + header.manifest_len]
        return layout.decode_manifest(raw, header.data_len)
    except SegmentCorrupt as exc:
        raise SegmentCorrupt(f"segment {name!r}: {exc}") from None


def _verify(mapping: mmap.mmap, header: Header, name: str) -> None:
    with memoryview(mapping) as buf:
        actual = layout.content_digest(buf, header.total)
    if actual != header.digest:
        raise SegmentCorrupt(
            f"segment {name!r}: content digest {actual.hex()[:16]}... does not match "
            f"the stored {header.digest.hex()[:16]}...: memory overwritten or torn"
        )
