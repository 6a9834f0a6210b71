"""Durable file replacement: the one way every package replaces a file.

Usage::

    from service.durable import write_atomically
    write_atomically(Path(keys_file), data, mode=0o600, owner_of_dir=True)
    write_atomically(Path(secret_file), text, mode=0o600, replace=False)  # first one wins

A reader sees the old file or the new one, whole, never a mix; once the call returns
the new one survives a crash or a power loss. How (docs/conventions.md, "Durable
writes"):

1. write a temporary file ``.<name>.<random>.tmp`` in the target's directory (the same
   file system, so the rename is atomic), its mode (and owner) set before any byte;
2. fsync it;
3. rename it over the target (``replace=False``: link it to a name that must not exist
   yet, so that of two processes making the same file the first one wins);
4. fsync the directory, so that the new name itself is durable.

A failed fsync raises ``OSError`` and is fatal for that write: it is never retried
(after a failed fsync the kernel may have dropped the dirty pages, and a second fsync
could report success for data that is gone: PostgreSQL's fsync lesson). When anything
fails before the rename, the temporary file is removed and the old file is left as it
was. When the directory's fsync fails, the new file is in place but may not survive a
crash: the caller is told the write failed and must not report success.

:func:`fsync_dir` alone is for those who create, rename or remove names some other way
(the WAL's stream directories and segments, ``audit/writer.py``, ``audit/reader.py``).
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

Fsync = Callable[[int], None]


def fsync_dir(path: Path, fsync: Fsync | None = None) -> None:
    """fsync a directory, so that names created, renamed or removed in it are durable.
    Raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        (fsync or os.fsync)(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes | str, *, mode: int, replace: bool = True,
                     owner_of_dir: bool = False, fsync: Fsync | None = None) -> None:
    """Make ``path`` hold ``data`` (a ``str`` is written as UTF-8), durably.

    ``mode``: the file's permission bits (required: a secret must not get a default).
    ``replace=False``: raise ``FileExistsError`` (nothing written) if ``path`` exists.
    ``owner_of_dir``: when run as root, the file takes its directory's owner and group
    (a file an operator writes with sudo into a service's state directory stays
    readable by the service). ``fsync`` is the seam for both fsyncs (tests; default
    ``os.fsync``, looked up at each call).
    Missing parent directories are made. Raises OSError; see the module docstring for
    the state each failure leaves.
    """
    path, fsync = Path(path), fsync or os.fsync
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, mode)
            if owner_of_dir and os.geteuid() == 0:
                st = os.stat(path.parent)
                os.fchown(fd, st.st_uid, st.st_gid)
            view = memoryview(raw)
            while view:
                written = os.write(fd, view)
                if written == 0:
                    raise OSError(errno.EIO, f"{tmp}: write returned 0")
                view = view[written:]
            fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.rename(tmp, path)
        else:
            os.link(tmp, path)  # never replaces: FileExistsError if one was made meanwhile
            os.unlink(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent, fsync)
