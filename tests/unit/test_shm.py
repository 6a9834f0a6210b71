"""Tests of shm/: real segments in /dev/shm, each under a unique name, removed
afterwards (temp files included). Damage is done at the byte boundary, with
os.pwrite/os.truncate on the segment file, never by patching the package."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import shm

ROOT = Path(__file__).resolve().parents[2]
SHM_DIR = Path("/dev/shm")
PATTERN = b"ZERO-COPY-PATTERN-0123456789abcdef"

pytestmark = pytest.mark.skipif(not SHM_DIR.is_dir(), reason="needs Linux /dev/shm")


@pytest.fixture
def new_name() -> Iterator[Callable[[str], str]]:
    """Unique segment names; every segment and temp file under them is removed after."""
    made: list[str] = []

    def make(prefix: str = "falcon-test") -> str:
        name = f"{prefix}.{uuid.uuid4().hex}"
        made.append(name)
        return name

    yield make
    for name in made:
        shm.unlink(name)
        for leftover in seg_dir(name).glob(f".{name}.*"):
            leftover.unlink()
        shm.remove_dir(name)


def seg_dir(name: str) -> Path:
    """The private directory segment ``name`` lives in (made if missing)."""
    return Path(shm.segment_path(name, create=True)).parent


def seg_path(name: str) -> Path:
    return seg_dir(name) / name


@pytest.fixture
def name(new_name: Callable[[str], str]) -> str:
    return new_name("falcon-test")


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60
    )


def pwrite(name: str, data: bytes, offset: int) -> None:
    fd = os.open(seg_path(name), os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def publish_pattern(name: str) -> shm.Segment:
    return shm.publish(
        name,
        {"pattern": np.frombuffer(PATTERN, np.uint8), "w": np.arange(10, dtype=np.float32)},
        {"graph": b"onnx-graph-bytes"},
        {"model": "m", "version": 1},
    )


# -- round trips ---------------------------------------------------------------------

DTYPES = [
    "bool", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64",
]  # fmt: skip
SHAPES = [(), (0,), (3, 0, 2), (7,), (3, 5), (2, 3, 4)]


def sample(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    values = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape) * 37 - 5
    return (values % 2 == 0) if dtype == "bool" else values.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_and_shape_round_trips(name: str, dtype: str) -> None:
    arrays = {f"a{shape}": sample(dtype, shape) for shape in SHAPES}
    with shm.publish(name, arrays) as published, shm.attach(name) as attached:
        for seg in (published, attached):
            assert seg.arrays.keys() == arrays.keys()
            for key, want in arrays.items():
                got = seg.arrays[key]
                assert got.dtype == want.dtype and got.shape == want.shape
                np.testing.assert_array_equal(got, want)
                assert got.flags.c_contiguous and not got.flags.writeable
                assert got.ctypes.data % 64 == 0


def test_big_endian_and_strided_inputs_are_stored_little_endian_c_order(name: str) -> None:
    big = np.arange(12, dtype=">f8").reshape(3, 4)
    fortran = np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4))
    strided = np.arange(20, dtype=np.uint16)[::3]
    with shm.publish(name, {"big": big, "f": fortran, "s": strided}), shm.attach(name) as seg:
        assert seg.arrays["big"].dtype.str == "<f8"
        for key, want in (("big", big), ("f", fortran), ("s", strided)):
            np.testing.assert_array_equal(seg.arrays[key], want)
            assert seg.arrays[key].flags.c_contiguous


def test_blobs_meta_digest_and_size(name: str) -> None:
    meta = {"model": "mnist", "version": 3, "source": {"path": "/m/3/model.onnx", "mtime_ns": 1}}
    with shm.publish(name, {}, {"graph": b"\x00graph\xff", "empty": b""}, meta) as pub:
        with shm.attach(name) as seg:
            assert bytes(seg.blobs["graph"]) == b"\x00graph\xff"
            assert bytes(seg.blobs["empty"]) == b""
            assert seg.blobs["graph"].readonly
            assert seg.meta == meta
            assert seg.digest == pub.digest and len(seg.digest) == 64
            assert seg.nbytes == pub.nbytes == os.path.getsize(seg_path(name))


def test_empty_segment(name: str) -> None:
    with shm.publish(name, {}), shm.attach(name) as seg:
        assert seg.arrays == {} and seg.blobs == {} and seg.meta == {}


# -- zero copy -------------------------------------------------------------------------


def test_attachments_share_the_segment_memory(name: str) -> None:
    with publish_pattern(name) as pub, shm.attach(name) as one, shm.attach(name) as two:
        at = (seg_path(name)).read_bytes().find(PATTERN)
        assert at > 0
        pwrite(name, b"#", at)
        for seg in (pub, one, two):
            assert seg.arrays["pattern"][0] == ord("#")


def test_onnxruntime_wraps_the_views_without_copying(name: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    with publish_pattern(name), shm.attach(name) as seg:
        arr = seg.arrays["w"]
        value = ort.OrtValue.ortvalue_from_numpy(arr)
        assert value.data_ptr() == arr.ctypes.data


# -- damage ---------------------------------------------------------------------------


def test_changed_content_fails_the_digest_unless_verify_is_off(name: str) -> None:
    publish_pattern(name).close()
    pwrite(name, b"#", (seg_path(name)).read_bytes().find(PATTERN))
    with pytest.raises(shm.SegmentCorrupt, match="digest"):
        shm.attach(name)
    with shm.attach(name, verify=False) as seg:
        assert seg.arrays["pattern"][0] == ord("#")


def test_changed_digest_field_fails(name: str) -> None:
    publish_pattern(name).close()
    pwrite(name, b"\x00" * 32, 32)
    with pytest.raises(shm.SegmentCorrupt, match="digest"):
        shm.attach(name)


HEADER_DAMAGE = {
    "magic": (0, b"NOTFALCN"),
    "version": (8, struct.pack("<H", 2)),
    "reserved": (10, struct.pack("<H", 1)),
    "huge manifest_len": (12, struct.pack("<I", 2**31)),
    "manifest_len vs data_offset": (12, struct.pack("<I", 1)),
    "data_len": (24, struct.pack("<Q", 10**12)),
    "manifest json": (64, b"["),
}


@pytest.mark.parametrize("damage", HEADER_DAMAGE.values(), ids=HEADER_DAMAGE.keys())
def test_damaged_header_or_manifest_is_corrupt_even_without_verify(
    name: str, damage: tuple[int, bytes]
) -> None:
    publish_pattern(name).close()
    pwrite(name, damage[1], damage[0])
    for verify in (True, False):
        with pytest.raises(shm.SegmentCorrupt):
            shm.attach(name, verify=verify)


def test_manifest_pointing_outside_the_data_is_corrupt(name: str) -> None:
    publish_pattern(name).close()
    raw = (seg_path(name)).read_bytes()
    mlen = struct.unpack_from("<I", raw, 12)[0]
    doc = json.loads(raw[64 : 64 + mlen])
    assert doc["blobs"][0]["offset"] == 128
    doc["blobs"][0]["offset"] = 960  # aligned, but past the end of the data region
    bad = json.dumps(doc, separators=(",", ":")).encode()
    assert len(bad) == mlen  # same digit count, so the header stays consistent
    pwrite(name, bad, 64)
    with pytest.raises(shm.SegmentCorrupt, match="outside"):
        shm.attach(name, verify=False)


@pytest.mark.parametrize("keep", [0, 10, 63, 64, -1])
def test_truncated_file_is_corrupt(name: str, keep: int) -> None:
    publish_pattern(name).close()
    path = seg_path(name)
    os.truncate(path, keep if keep >= 0 else path.stat().st_size + keep)
    with pytest.raises(shm.SegmentCorrupt):
        shm.attach(name, verify=False)


def test_not_a_regular_file_is_corrupt(name: str) -> None:
    (seg_path(name)).mkdir()
    try:
        with pytest.raises(shm.SegmentCorrupt, match="regular"):
            shm.attach(name)
    finally:
        (seg_path(name)).rmdir()


# -- namespace -------------------------------------------------------------------------


def test_missing_segment_is_not_found(name: str) -> None:
    with pytest.raises(shm.SegmentNotFound):
        shm.attach(name)


def test_publishing_twice_raises_exists_and_keeps_the_first(name: str) -> None:
    with shm.publish(name, {"x": np.ones(3)}) as first:
        with pytest.raises(shm.SegmentExists):
            shm.publish(name, {"x": np.zeros(3)})
        with shm.attach(name) as seg:
            assert seg.digest == first.digest
            np.testing.assert_array_equal(seg.arrays["x"], np.ones(3))
    assert list(seg_dir(name).glob(f".{name}.*")) == []


def test_unlink_reports_whether_it_existed(name: str) -> None:
    seg = shm.publish(name, {"x": np.ones(3)})
    assert shm.unlink(name) is True
    assert shm.unlink(name) is False
    np.testing.assert_array_equal(seg.arrays["x"], np.ones(3))  # mapping outlives the name
    seg.unlink()  # already gone: no error
    seg.close()


def test_list_segments_by_prefix(new_name: Callable[[str], str]) -> None:
    group = f"falcon-test-{uuid.uuid4().hex[:8]}"
    mine = [new_name(group), new_name(group)]
    other = new_name("falcon-other")
    for n in (*mine, other):
        shm.publish(n, {}).close()
    assert shm.list_segments(group) == sorted(mine)
    assert other in shm.list_segments("falcon-other")
    shm.unlink(mine[0])
    assert shm.list_segments(group) == [mine[1]]


@pytest.mark.parametrize("bad", ["", "a/b", "..", ".hidden", "-x", "a b", "é", "x" * 129])
def test_invalid_names_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        shm.attach(bad)
    with pytest.raises(ValueError):
        shm.publish(bad, {})
    with pytest.raises(ValueError):
        shm.unlink(bad)


@pytest.mark.parametrize(
    ("arrays", "meta", "error"),
    [
        ({"o": np.array([object()])}, None, TypeError),
        ({"s": np.array(["text"])}, None, TypeError),
        ({"c": np.ones(2, np.complex64)}, None, TypeError),
        ({1: np.ones(2)}, None, TypeError),
        ({}, {"x": object()}, TypeError),
        ({}, {"x": float("nan")}, ValueError),
    ],
)
def test_bad_input_is_rejected_and_leaves_nothing(
    name: str, arrays: dict, meta: dict | None, error: type[Exception]
) -> None:
    with pytest.raises(error):
        shm.publish(name, arrays, meta=meta)
    assert not (seg_path(name)).exists()
    assert list(seg_dir(name).glob(f".{name}.*")) == []


# -- crashes and other processes ---------------------------------------------------------


def test_leftover_temp_file_is_neither_listed_nor_attachable(name: str) -> None:
    """A publisher killed after writing but before linking leaves its temp file."""
    publish_pattern(name).close()
    temp = seg_dir(name) / f".{name}.{os.getpid()}.deadbeef.tmp"
    temp.write_bytes((seg_path(name)).read_bytes())  # complete and valid, but unpublished
    shm.unlink(name)
    assert shm.list_segments(name) == []
    with pytest.raises(shm.SegmentNotFound):
        shm.attach(name)
    with pytest.raises(ValueError):
        shm.attach(temp.name)


CRASHING_PUBLISHER = """
import sys, numpy as np, shm
shm.publish(sys.argv[1], {"w": np.ones(32_000_000, np.float32)})
"""


def test_publisher_killed_mid_write_never_yields_a_torn_segment(name: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CRASHING_PUBLISHER, name], env=env)
    try:
        # Kill at the first sign of the segment under any name, temp or final.
        while child.poll() is None and not list(seg_dir(name).glob(f"*{name}*")):
            time.sleep(0.0005)
        seen_mid_publish = child.poll() is None
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    if not seen_mid_publish:
        pytest.skip("the publisher finished before it could be killed")
    try:  # killed between creating the temp file and removing it: all or nothing
        with shm.attach(name, verify=True) as seg:
            assert seg.arrays["w"].shape == (32_000_000,)
    except shm.SegmentNotFound:
        assert name not in shm.list_segments(name)


ATTACHING_CHILD = """
import sys, shm
seg = shm.attach(sys.argv[1])
print(seg.digest, float(seg.arrays["w"].sum()))
"""


def test_child_that_attaches_and_exits_leaves_the_segment(name: str) -> None:
    with publish_pattern(name) as seg:
        for _ in range(2):
            done = run_python(ATTACHING_CHILD, name)
            assert done.returncode == 0, done.stderr
            assert done.stdout.split() == [seg.digest, "45.0"]
            assert "leaked" not in done.stderr  # resource tracker warnings
            assert (seg_path(name)).exists()
        with shm.attach(name) as again:
            assert again.digest == seg.digest


# -- close -----------------------------------------------------------------------------


def test_close_keeps_held_views_valid_and_is_idempotent(name: str) -> None:
    seg = publish_pattern(name)
    arr, blob = seg.arrays["w"], seg.blobs["graph"]
    seg.close()
    seg.close()
    assert seg.closed and seg.arrays == {} and seg.blobs == {}
    assert float(arr.sum()) == 45.0 and bytes(blob) == b"onnx-graph-bytes"
    del arr, blob


def test_close_without_held_views_unmaps(name: str) -> None:
    seg = publish_pattern(name)
    seg.close()
    assert seg.closed and "closed" in repr(seg)


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_sweep_temp_removes_only_dead_publishers_temp_files(name: str):
    directory = seg_dir(name)
    pid = dead_pid()
    stale = str(directory / f".{name}.m.1.{pid}.deadbeef.tmp")
    huge = str(directory / f".{name}.x.99999999999999999999.deadbeef.tmp")  # no such pid
    zero = str(directory / f".{name}.z.0.deadbeef.tmp")  # kill(0) would probe our group
    live = str(directory / f".{name}.m.1.{os.getpid()}.cafebabe.tmp")
    other = str(directory / f".other{name}.{pid}.deadbeef.tmp")
    outside = f"/dev/shm/.{name}.m.1.{pid}.deadbeef.tmp"  # not in our directory: not ours
    for path in (stale, huge, zero, live, other, outside):
        open(path, "wb").close()
    try:
        assert sorted(shm.sweep_temp(name)) == sorted([stale, huge, zero])
        assert os.path.exists(live) and os.path.exists(other) and os.path.exists(outside)
    finally:
        for path in (live, other, outside):
            os.unlink(path)


# -- ownership: the segment directory and the files in it -----------------------------


def test_segment_directory_is_private_and_removed_once_empty(new_name) -> None:
    first, second = new_name("falcon-test-dir"), new_name("falcon-test-dir")
    with publish_pattern(first), publish_pattern(second):
        directory = seg_dir(first)
        st = directory.stat()
        assert st.st_uid == os.geteuid() and st.st_mode & 0o777 == 0o700
        assert seg_path(first).stat().st_mode & 0o777 == 0o600
        assert shm.remove_dir(first) is False  # not empty
    shm.unlink(first)
    assert directory.exists()  # the other segment is still there
    shm.unlink(second)  # the last one out removes the directory
    assert not directory.exists() and shm.list_segments("falcon-test-dir") == []
    directory.mkdir(0o700)
    assert shm.remove_dir("falcon-test-dir") is True and not directory.exists()


@pytest.mark.parametrize("kind", ["symlink", "fifo", "socket", "other-owner", "group-writable"])
def test_attach_refuses_what_is_not_provably_ours(name: str, tmp_path: Path, kind: str) -> None:
    """Never followed, never blocked on, never trusted: SegmentForeign at once."""
    valid = f"{name}-valid"
    with publish_pattern(valid):
        data = seg_path(valid).read_bytes()
    shm.unlink(valid)
    path = seg_path(name)
    if kind == "symlink":
        (tmp_path / "w").write_bytes(data)
        path.symlink_to(tmp_path / "w")
    elif kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "socket":
        import socket

        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    else:
        path.write_bytes(data)
        os.chmod(path, 0o620 if kind == "group-writable" else 0o600)
        if kind == "other-owner":
            if os.geteuid() != 0:
                pytest.skip("chown to another user needs root")
            os.chown(path, 54321, 54321)
    started = time.monotonic()
    with pytest.raises(shm.SegmentForeign):
        shm.attach(name)
    assert time.monotonic() - started < 5
    assert shm.unlink(name) is True  # ours to remove: it is in our directory


