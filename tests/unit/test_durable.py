"""service.durable: the one atomic, durable file replacement. Its fsync seam records
what each fsync saw, so the order (file fsynced before the rename, directory fsynced
after it) is checked, not assumed; a failing fsync is never retried and leaves the
old file whole."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from service.durable import fsync_dir, write_atomically


class Seam:
    """Records, for every fsync, whether the fd is a directory and what the target
    held at that moment; fails the call numbered ``fail_at`` (0-based) with EIO."""

    def __init__(self, target: Path, fail_at: int | None = None) -> None:
        self.target, self.fail_at = target, fail_at
        self.calls: list[tuple[str, bytes | None]] = []

    def __call__(self, fd: int) -> None:
        st = os.fstat(fd)
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        if kind == "dir":
            assert st.st_ino == os.stat(self.target.parent).st_ino
        seen = self.target.read_bytes() if self.target.exists() else None
        self.calls.append((kind, seen))
        if len(self.calls) - 1 == self.fail_at:
            raise OSError(errno.EIO, "injected fsync failure")
        os.fsync(fd)


def leftovers(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if n.endswith(".tmp")]


def test_replaces_with_mode_file_fsync_before_rename_then_directory(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    seam = Seam(target)
    write_atomically(target, b"new", mode=0o640, fsync=seam)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    # the file was fsynced while the target still held the old bytes (before the
    # rename), the directory after it: the new name is durable too
    assert seam.calls == [("file", b"old"), ("dir", b"new")]
    assert leftovers(tmp_path) == []


def test_str_data_new_file_and_missing_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "up.toml"
    seam = Seam(target)
    write_atomically(target, "ü\n", mode=0o600, fsync=seam)
    assert target.read_text() == "ü\n" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [kind for kind, _ in seam.calls] == ["file", "dir"]


def test_a_failed_file_fsync_raises_is_not_retried_and_keeps_the_old_file(
        tmp_path: Path) -> None:
    target = tmp_path / "keys.json"
    target.write_bytes(b"old")
    seam = Seam(target, fail_at=0)
    with pytest.raises(OSError) as info:
        write_atomically(target, b"new", mode=0o600, fsync=seam)
    assert info.value.errno == errno.EIO
    assert seam.calls == [("file", b"old")]  # one fsync: never retried, no rename
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_a_failed_directory_fsync_raises(tmp_path: Path) -> None:
    target = tmp_path / "traffic.json"
    seam = Seam(target, fail_at=1)
    with pytest.raises(OSError):
        write_atomically(target, b"new", mode=0o644, fsync=seam)
    assert [kind for kind, _ in seam.calls] == ["file", "dir"]  # not retried either
    assert leftovers(tmp_path) == []


def test_no_replace_keeps_what_exists(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    seam = Seam(target)
    write_atomically(target, b"first", mode=0o600, replace=False, fsync=seam)
    assert [kind for kind, _ in seam.calls] == ["file", "dir"]
    with pytest.raises(FileExistsError):
        write_atomically(target, b"second", mode=0o600, replace=False)
    assert target.read_bytes() == b"first" and leftovers(tmp_path) == []
    assert target.stat().st_nlink == 1  # the temp name is gone, not a second link


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_owner_of_dir_as_root(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    os.chown(folder, 4321, 4322)
    write_atomically(folder / "keys.json", b"{}", mode=0o600, owner_of_dir=True)
    write_atomically(folder / "other", b"{}", mode=0o600)
    st = (folder / "keys.json").stat()
    assert (st.st_uid, st.st_gid) == (4321, 4322)
    assert (folder / "other").stat().st_uid == 0


def test_readers_see_old_or_new_whole(tmp_path: Path) -> None:
    target = tmp_path / "map"
    old, new = b"a" * 200_000, b"b" * 300_000
    write_atomically(target, old, mode=0o644)
    seen: set[bytes] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(target.read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(20):
        write_atomically(target, new if i % 2 == 0 else old, mode=0o644)
    stop.set()
    reader.join()
    assert seen <= {old, new}


def test_fsync_dir_uses_the_seam_on_the_directory(tmp_path: Path) -> None:
    seen: list[int] = []
    fsync_dir(tmp_path, lambda fd: seen.append(os.fstat(fd).st_ino))
    assert seen == [os.stat(tmp_path).st_ino]
