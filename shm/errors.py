"""Errors of the shared-memory segment store.

One root (:class:`ShmError`), one subclass per cause. Mistakes in the call
itself (an invalid segment name, an unsupported dtype, meta that is not JSON)
are ``ValueError``/``TypeError``, not ``ShmError``: they are bugs in the caller,
not states of the host. Other OS failures (``PermissionError``, ``ENOSPC`` when
``/dev/shm`` is full) propagate as ``OSError``.
"""

from __future__ import annotations


class ShmError(Exception):
    """Root of every error the ``shm`` package raises on purpose."""


class SegmentNotFound(ShmError):
    """No segment of that name exists: it was never published, was unlinked
    (model version unloaded), or the host rebooted (``/dev/shm`` is tmpfs)."""


class SegmentExists(ShmError):
    """A segment of that name already exists. Likely causes: the version is
    already loaded (attach to it instead), or a previous daemon left it behind
    (attach with ``verify=True`` to reuse it, or unlink it first)."""


class SegmentCorrupt(ShmError):
    """The segment exists but is not a valid, complete segment of this layout:
    wrong magic (not ours, or a different program's segment of the same name),
    unknown layout version (written by a newer or older release), a size that
    does not match its header (truncated), an unreadable manifest, or a content
    digest mismatch (memory overwritten). Unlink it and publish again."""


class SegmentForeign(SegmentCorrupt):
    """The name holds something that is not provably this process's segment: a
    symlink, a FIFO or other non-regular file, a file owned by another user, or one
    that group or others may write. Never opened for reading, never trusted.
    Likely cause: something other than this package wrote into the segment
    directory (root, or another program of the service user). Unlink it and
    publish again."""
