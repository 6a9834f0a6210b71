"""Segment names and the ``/dev/shm`` namespace they live in.

On Linux, POSIX shared memory (``shm_open``) is a tmpfs mounted at
``/dev/shm``: the segment named ``falcon.mnist.3`` is the file
``/dev/shm/falcon.mnist.3``. This package opens those files directly with
``os.open`` + ``mmap`` instead of using ``multiprocessing.shared_memory``,
whose Python 3.11 implementation registers every segment it *attaches* to with
the resource tracker, which then unlinks the segment when that process exits.
Other programs can still reach a segment through ``shm_open("/<name>")``.

APPSEC: names are checked before they touch the filesystem: 1 to
MAX_NAME_LEN characters from ``[A-Za-z0-9_.-]``, first one not ``.`` or ``-``.
That rules out path separators and ``..``, and leaves the dot-names free for
publication temp files (``.<name>.<pid>.<hex>.tmp``), which therefore can never
be attached or listed.
"""

from __future__ import annotations

import os
import re
import secrets

SHM_DIR = "/dev/shm"
MAX_NAME_LEN = 128
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid segment name; raise ValueError if not."""
    if not isinstance(name, str) or len(name) > MAX_NAME_LEN or not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid segment name {name!r}: want 1-{MAX_NAME_LEN} chars of "
            "[A-Za-z0-9_.-], not starting with '.' or '-'"
        )
    return name


def segment_path(name: str) -> str:
    return os.path.join(SHM_DIR, check_name(name))


def temp_path(name: str) -> str:
    """A fresh path to write segment ``name`` under before publishing it."""
    return os.path.join(SHM_DIR, f".{check_name(name)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def unlink(name: str) -> bool:
    """Remove segment ``name``; True if it existed, False if it did not.

    Processes that have it attached keep their mapping; the memory is freed
    when the last of them closes it. Raises ValueError for an invalid name.
    """
    try:
        os.unlink(segment_path(name))
    except FileNotFoundError:
        return False
    return True


def list_segments(prefix: str) -> list[str]:
    """Sorted names of the segments whose name starts with ``prefix``.

    Lists names only; it does not open the segments to check they are valid.
    Publication temp files are never listed.
    """
    return sorted(
        entry
        for entry in os.listdir(SHM_DIR)
        if entry.startswith(prefix) and len(entry) <= MAX_NAME_LEN and _NAME.fullmatch(entry)
    )


_TEMP = re.compile(r"\.(?P<name>[A-Za-z0-9_][A-Za-z0-9_.-]*)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")


def sweep_temp(prefix: str) -> list[str]:
    """Remove publication temp files of segments starting with ``prefix`` whose
    writer process is gone (a publisher killed mid-write); return their paths.

    A temp file of a live process is left alone: it may still be publishing.
    """
    removed = []
    for entry in os.listdir(SHM_DIR):
        m = _TEMP.fullmatch(entry)
        if m is None or not m["name"].startswith(prefix) or pid_alive(int(m["pid"])):
            continue
        path = os.path.join(SHM_DIR, entry)
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (signal 0 probe)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
