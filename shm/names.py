"""Where segments live: one private directory per namespace under ``/dev/shm``.

Usage: everything takes a segment name; the directory is found (or made) from it::

    with opened_dir("falcon.digits.1.ab12", create=True) as dfd:   # a checked directory fd
        fd = os.open("falcon.digits.1.ab12", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
    segment_path("falcon.digits.1.ab12")  # /dev/shm/falcon.d/falcon.digits.1.ab12 (to show)
    list_segments("falcon")               # names in falcon's directory
    sweep_temp("falcon"); remove_dir("falcon")

Layout (``/dev/shm`` is tmpfs on Linux: the memory of POSIX shared memory)::

    /dev/shm/<ns>.d/                 mode 0700, owned by the daemon's user
        <name>                       a published segment, mode 0600 (shm.store)
        .<name>.<pid>.<hex>.tmp      a segment being written (never listed or attached)

The namespace ``<ns>`` of a name is its first dot-separated part (the daemon's
``shm_prefix``): ``falcon.digits.1.ab12`` lives in ``falcon``'s directory. This
package opens the files with ``os.open`` + ``mmap`` instead of using
``multiprocessing.shared_memory``, whose Python 3.11 implementation registers every
segment it *attaches* to with the resource tracker, which then unlinks the segment
when that process exits.

APPSEC: why a directory. ``/dev/shm`` is world-writable (mode 1777) and segment
names are predictable, so anyone can take a name first: with a file holding a valid
header, their own weights and a matching digest (the digest proves integrity, not
origin), a FIFO that blocks ``open``, an empty file, or a symlink. Inside a directory
that only the service user (and root) can enter, nobody else can create, replace, rename or
even list a name, so every name there is the daemon's own. (Attach still checks each file:
:mod:`shm.store`.) Only the directory's own name is in the shared namespace, so it is
chosen like this: the candidates are ``<ns>.d`` and ``<ns>.d.<16 hex>``; each is opened
with ``O_DIRECTORY|O_NOFOLLOW|O_NONBLOCK`` and ``fstat``-ed; a directory owned by our
effective uid with no group or other permission is ours; anything else (a symlink, a
FIFO, a file, another user's directory, a loosened mode) is skipped: never entered,
never removed, never fatal. The first of ours, in name order, is used; with none,
``<ns>.d`` is made (``mkdir`` 0700), or ``<ns>.d.<random>`` if that name is taken.
A squatter therefore costs a name, never the start, and never gets read. The directory
survives a crash (kill -9), so the same search finds it after a restart and the daemon
re-attaches to its segments; unlinking its last segment removes it (:func:`unlink`).
``/dev/shm``'s sticky bit stops others from renaming or removing it.

APPSEC: the directory is checked and used through one descriptor. Every open, link,
unlink and listing in it goes through the fd :func:`opened_dir` checked (``dir_fd=``),
never through its path again: the daemon itself removes the directory when its last
segment goes, and from then on anyone may make that name a symlink to a directory of
theirs, so a path re-resolved after the check could lead there (a segment published
into it, or names swapped in it). Through the fd, a directory removed meanwhile makes
a create fail (ENOENT; :func:`shm.publish` searches again) and never leads elsewhere.
:func:`segment_path` is for display and tests only.

Not ``RuntimeDirectory=``: ``/run`` is a small tmpfs (10-20 % of RAM) and outside
systemd ``paths.run_dir`` need not be tmpfs at all (then weights would be page
cache, not shared memory). ``/dev/shm`` is tmpfs everywhere and sized for this.

Names are checked before they touch the filesystem: 1 to MAX_NAME_LEN characters from
``[A-Za-z0-9_.-]``, first one not ``.`` or ``-``: no separators, no ``..``, and the
dot-names stay free for temp files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import threading
from collections.abc import Iterator

SHM_DIR = "/dev/shm"
MAX_NAME_LEN = 128
# NOTE: the highest pid Linux can hand out (kernel/pid.c PID_MAX_LIMIT on 64-bit).
PID_MAX_LIMIT = 1 << 22
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_TEMP = re.compile(r"\.(?P<name>[A-Za-z0-9_][A-Za-z0-9_.-]*)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_making = threading.Lock()


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid segment name; raise ValueError if not."""
    if not isinstance(name, str) or len(name) > MAX_NAME_LEN or not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid segment name {name!r}: want 1-{MAX_NAME_LEN} chars of "
            "[A-Za-z0-9_.-], not starting with '.' or '-'"
        )
    return name


def namespace(name: str) -> str:
    """The namespace of a segment name (or prefix): its first dot-separated part."""
    return check_name(name).partition(".")[0]


def _open_private(path: str) -> int | None:
    """An fd of ``path`` if it is a directory (not a link to one) owned by our
    effective uid that no group or other user may enter, else None; never blocks,
    never follows a link. The check is on the fd: use the fd, not ``path``."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError:
        return None
    st = os.fstat(fd)
    if (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
            and stat.S_IMODE(st.st_mode) & 0o077 == 0):
        return fd
    os.close(fd)
    return None


def is_private_dir(path: str) -> bool:
    """True if ``path`` is, right now, a private directory of ours (see
    :func:`_open_private`); a check only, for display and tests."""
    fd = _open_private(path)
    if fd is None:
        return False
    os.close(fd)
    return True


def _find(name: str) -> tuple[int, str] | None:
    """The fd and path of the private directory of ``name``'s namespace, or None."""
    ns = namespace(name)
    pattern = re.compile(re.escape(ns) + r"\.d(\.[0-9a-f]{16})?")
    for entry in sorted(e for e in os.listdir(SHM_DIR) if pattern.fullmatch(e)):
        path = os.path.join(SHM_DIR, entry)
        fd = _open_private(path)
        if fd is not None:
            return fd, path
    return None


def _make(name: str) -> tuple[int, str]:
    """:func:`_find`, or a new private directory (0700) made for ``name``'s namespace.

    A name taken by anything not ours is skipped for ``<ns>.d.<random hex>``.
    Raises OSError only if ``/dev/shm`` itself refuses (ENOSPC, EACCES)."""
    with _making:
        found = _find(name)
        if found is not None:
            return found
        base = os.path.join(SHM_DIR, f"{namespace(name)}.d")
        for path in (base, *(f"{base}.{secrets.token_hex(8)}" for _ in range(8))):
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:  # ours if another thread or process of ours won
                pass
            fd = _open_private(path)  # 0700 & ~umask: never wider
            if fd is not None:
                return fd, path
        raise FileExistsError(errno.EEXIST, f"no free directory name for {base}")


@contextlib.contextmanager
def _opened(name: str, create: bool) -> Iterator[tuple[int, str]]:
    found = _make(name) if create else _find(name)
    if found is None:
        raise FileNotFoundError(errno.ENOENT, f"no segment directory for {name!r}")
    try:
        yield found
    finally:
        os.close(found[0])


@contextlib.contextmanager
def opened_dir(name: str, *, create: bool = False) -> Iterator[int]:
    """The private directory of ``name``'s namespace as a checked fd, for ``dir_fd=``
    (closed on exit). With ``create`` it is made if missing; without, a missing
    directory raises FileNotFoundError. Raises ValueError for an invalid name."""
    with _opened(name, create) as (dfd, _):
        yield dfd


def find_dir(name: str) -> str | None:
    """The path of the private directory of ``name``'s namespace, or None if there is
    none yet. For display and tests: use :func:`opened_dir` to act in it."""
    found = _find(name)
    if found is None:
        return None
    os.close(found[0])
    return found[1]


def segment_path(name: str, *, create: bool = False) -> str:
    """The path of segment ``name`` in its namespace's private directory, for display
    and tests (to act on the segment, use :func:`opened_dir`).

    With ``create``, the directory is made if missing; without, a missing directory
    raises FileNotFoundError. Raises ValueError for an invalid name."""
    check_name(name)
    found = _make(name) if create else _find(name)
    if found is None:
        raise FileNotFoundError(errno.ENOENT, f"no segment directory for {name!r}")
    os.close(found[0])
    return os.path.join(found[1], name)


def temp_name(name: str) -> str:
    """A fresh name, in segment ``name``'s directory, to write it under before publishing."""
    return f".{check_name(name)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _rmdir_if_empty(dfd: int, path: str) -> bool:
    """Remove the directory open as ``dfd`` (found at ``path``) if it is empty; True
    if removed.

    By name (rmdir takes no fd), but only while ``path`` is still that very
    directory (same device and inode, looked at without following a link). Nobody
    else can rename or remove our entry in sticky ``/dev/shm``; if it went (another
    thread of ours emptied and removed it) and someone else took the name, theirs
    is not ours to remove."""
    st = os.fstat(dfd)
    try:
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return False
        os.rmdir(path)
    except OSError:  # not empty (ENOTEMPTY), or gone
        return False
    return True


def unlink(name: str) -> bool:
    """Remove segment ``name``; True if it existed, False if it did not.

    Processes that have it attached keep their mapping; the memory is freed
    when the last of them closes it. The last segment out removes the directory
    too (a publisher racing it makes a new one: :func:`shm.publish` retries).
    Raises ValueError for an invalid name.
    """
    check_name(name)
    try:
        with _opened(name, False) as (dfd, path):
            os.unlink(name, dir_fd=dfd)
            _rmdir_if_empty(dfd, path)
    except FileNotFoundError:
        return False
    return True


def list_segments(prefix: str) -> list[str]:
    """Sorted names of the segments whose name starts with ``prefix``.

    Lists names only; it does not open the segments to check they are valid.
    Publication temp files are never listed.
    """
    try:
        with opened_dir(prefix) as dfd:
            entries = os.listdir(dfd)
    except FileNotFoundError:
        return []
    return sorted(
        entry
        for entry in entries
        if entry.startswith(prefix) and len(entry) <= MAX_NAME_LEN and _NAME.fullmatch(entry)
    )


def remove_dir(prefix: str) -> bool:
    """Remove ``prefix``'s namespace directory if it is empty; True if removed."""
    try:
        with _opened(prefix, False) as (dfd, path):
            return _rmdir_if_empty(dfd, path)
    except FileNotFoundError:
        return False


def sweep_temp(prefix: str) -> list[str]:
    """Remove publication temp files of segments starting with ``prefix`` whose
    writer process is gone (a publisher killed mid-write); return their paths.

    Looks only in the namespace's private directory (other users' files in
    ``/dev/shm`` are never seen). A temp file of a live process is left alone:
    it may still be publishing. Never raises for a file it cannot remove.
    """
    found = _find(prefix)
    if found is None:
        return []
    dfd, directory = found
    removed = []
    try:
        for entry in os.listdir(dfd):
            m = _TEMP.fullmatch(entry)
            if m is None or not m["name"].startswith(prefix) or pid_alive(int(m["pid"])):
                continue
            try:
                os.unlink(entry, dir_fd=dfd)
            except OSError:  # gone already, or not ours to remove: leave it
                continue
            removed.append(os.path.join(directory, entry))
    finally:
        os.close(dfd)
    return removed


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (signal 0 probe).

    A pid no process can have (0, negative, above the kernel's limit) is not alive:
    ``kill(0)`` would probe our own process group, a huge one raises OverflowError.
    """
    if not 0 < pid <= PID_MAX_LIMIT:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
