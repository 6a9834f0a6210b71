"""A hostile local user against the daemon's shared memory (issue 15, items 1 and 2).

The neighbour is a real second user: a fresh uid with no groups, through
``setpriv``. Before the daemon starts it squats ``/dev/shm``: under the names
the segments would have (computed as the daemon computes them: they derive from
the model file's path, size, mtime and inode, all readable by anyone), and under
the daemon's segment directory's names, it puts a valid segment holding *other*
weights with a matching digest, a FIFO, an empty file or a symlink; and it leaves
publication temp files with an out-of-range pid and with a dead pid. The daemon
must start, serve the real model's answers (compared with ONNX Runtime running
the model file in-process), never map or touch the neighbour's files, re-attach
to its own segments after kill -9 and leave nothing after a clean stop.
"""

from __future__ import annotations

import os
import pwd
import random
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import shm
from daemon import loader
from daemon.repository import scan
from wire import frames, messages

ROOT = Path(__file__).resolve().parents[2]
ROWS = np.load(ROOT / "tests" / "data" / "digits_test.npz")["X"][:40].astype(np.float32)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="a second local user needs root and setpriv")


def fresh_uid() -> int:
    while True:
        uid = random.randint(200_000, 299_999)
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid


class Neighbour:
    """Another local user (a fresh uid, no groups) making files in ``/dev/shm``.
    Everything it made is removed by :meth:`cleanup` (as root)."""

    def __init__(self) -> None:
        self.uid = fresh_uid()
        self.made: list[str] = []

    def argv(self, *argv: str) -> list[str]:
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups", *argv]

    def sh(self, script: str, stdin: bytes | None = None) -> None:
        subprocess.run(self.argv("sh", "-ec", f"umask 022; {script}"), input=stdin, check=True,
                       timeout=30, cwd="/")

    def make(self, path: str, kind: str, data: bytes = b"", target: str = "") -> str:
        q = shlex.quote(path)
        script = {"file": f"cat > {q}", "empty": f": > {q}", "fifo": f"mkfifo {q}",
                  "symlink": f"ln -s {shlex.quote(target)} {q}", "dir": f"mkdir -m 0777 {q}",
                  "private-dir": f"mkdir -m 0700 {q}"}[kind]
        self.made.append(path)
        self.sh(script, data if kind == "file" else None)
        return path

    def cleanup(self) -> None:
        for path in reversed(self.made):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.unlink(path)


@pytest.fixture
def neighbour() -> Iterator[Neighbour]:
    user = Neighbour()
    yield user
    user.cleanup()


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A complete, valid segment (header, manifest, matching SHA-256) of the digits
    model with other weights: what a neighbour can make with the shipped code."""
    tmp = tmp_path_factory.mktemp("other-weights")
    model = onnx.load(str(ROOT / "models" / "digits" / "1" / "model.onnx"))
    for tensor in model.graph.initializer:
        if tensor.name == "coef":
            tensor.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(tensor), "coef"))
    (tmp / "repo" / "digits" / "1").mkdir(parents=True)
    onnx.save(model, str(tmp / "repo" / "digits" / "1" / "model.onnx"))
    [entry] = scan(tmp / "repo")
    prefix = f"fhostile{uuid.uuid4().hex[:8]}"
    lv = loader.load(entry, prefix=prefix, placeholder_dir=tmp / "placeholder")
    try:
        label, _ = lv.run({"input": ROWS}, ["label", "probabilities"])
        assert (label != reference(ROWS)[0]).mean() > 0.5, "the other weights answer the same"
        return Path(shm.segment_path(lv.segment.name)).read_bytes()
    finally:
        lv.close(unlink=True)
        shm.remove_dir(prefix)


def reference(rows: np.ndarray) -> list[np.ndarray]:
    ref = ort.InferenceSession(str(ROOT / "models" / "digits" / "1" / "model.onnx"),
                               providers=["CPUExecutionProvider"])
    return ref.run(["label", "probabilities"], {"input": rows})


def assert_serves_the_real_model(stack) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(stack.settings.daemon_socket)
        sock.sendall(frames.encode(frames.REQUEST, {
            "id": 1, "op": "infer", "model": "digits", "deadline_ms": 10000,
            "inputs": [messages.encode_tensor("input", ROWS)], "outputs": None}))
        _, resp = frames.read_frame(sock)
    assert resp["ok"], resp
    outs = dict(messages.decode_tensors(resp["result"]["outputs"], "outputs"))
    label, probs = reference(ROWS)
    np.testing.assert_array_equal(outs["label"], label)
    np.testing.assert_allclose(outs["probabilities"], probs, atol=1e-6)


def snapshot(paths: list[str]) -> dict[str, tuple[int, int, int, int]]:
    out = {}
    for path in paths:
        st = os.lstat(path)
        out[path] = (st.st_ino, st.st_mode, st.st_uid, st.st_size)
    return out


def mapped_shm_files(pid: int) -> set[str]:
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    paths = {fields[5] for fields in (line.split(None, 5) for line in maps) if len(fields) == 6}
    return {p for p in paths if p.startswith("/dev/shm/") and not p.startswith("/dev/shm/sem.")}


def squat(neighbour: Neighbour, kind: str, prefix: str, names: list[str], weights: bytes) -> None:
    """Take the segments' names (where the daemon used to put them: /dev/shm/<name>)
    and the segment directory's names, each with ``kind``."""
    tag = uuid.uuid4().hex[:8]
    lure = neighbour.make(f"/dev/shm/lure-{tag}", "file", weights)
    lure_dir = neighbour.make(f"/dev/shm/lure-{tag}.dir", "dir")
    for name in names:
        neighbour.make(f"{lure_dir}/{name}", "file", weights)
    for path in [f"/dev/shm/{n}" for n in names] + [f"/dev/shm/{prefix}.d"]:
        is_dir = path.endswith(".d")
        if kind == "weights" and is_dir:
            neighbour.make(path, "dir")
            for name in names:
                neighbour.make(f"{path}/{name}", "file", weights)
        elif kind == "weights":
            neighbour.make(path, "file", weights)
        elif kind == "symlink":
            neighbour.make(path, "symlink", target=lure_dir if is_dir else lure)
        else:
            neighbour.make(path, kind)
    # a fallback name too: another user's directory is never entered (root could)
    decoy = neighbour.make(f"/dev/shm/{prefix}.d.{'0' * 16}", "private-dir")
    for name in names:
        neighbour.make(f"{decoy}/{name}", "file", weights)


@pytest.mark.parametrize("kind", ["weights", "fifo", "empty", "symlink"])
def test_squatted_names_are_skipped_never_trusted(make_stack, neighbour, other_weights, kind):
    stack = make_stack(start=False)
    prefix = stack.env["FALCON_DAEMON_SHM_PREFIX"]
    entries = scan(Path(stack.settings.daemon.model_repository))
    names = [loader.segment_name(prefix, e) for e in entries if e.model == "digits"]
    squat(neighbour, kind, prefix, names, other_weights)
    theirs = snapshot(neighbour.made)

    daemon = stack.start_daemon(timeout=60)  # a FIFO used to hang this for ever
    assert_serves_the_real_model(stack)
    assert snapshot(neighbour.made) == theirs, "the neighbour's files were touched"
    mapped = mapped_shm_files(daemon.popen.pid)
    ours = shm.names.find_dir(prefix)
    assert ours is not None and ours != f"/dev/shm/{prefix}.d"
    assert mapped and all(os.path.dirname(p) == ours for p in mapped), mapped
    assert os.stat(ours).st_uid == os.geteuid() and os.stat(ours).st_mode & 0o777 == 0o700
    assert shm.list_segments(prefix) and all(n in shm.list_segments(prefix) for n in names)

    daemon.stop(signal.SIGKILL)  # a crash: the next daemon finds its own segments again
    daemon = stack.start_daemon(timeout=60)
    assert "re-attached" in daemon.tail()
    assert_serves_the_real_model(stack)
    assert all(os.path.dirname(p) == ours for p in mapped_shm_files(daemon.popen.pid))

    assert daemon.stop(signal.SIGTERM) == 0
    assert shm.list_segments(prefix) == [] and shm.names.find_dir(prefix) is None
    assert snapshot(neighbour.made) == theirs, "the neighbour's files were touched"


def test_neighbours_temp_files_do_not_stop_the_daemon(make_stack, neighbour):
    """An out-of-range pid used to crash the start (OverflowError); a dead pid
    made the daemon remove (or, not as root, fail to remove) another user's file."""
    stack = make_stack(start=False)
    prefix = stack.env["FALCON_DAEMON_SHM_PREFIX"]
    pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                             capture_output=True, text=True, check=True).stdout)
    neighbour.make(f"/dev/shm/.{prefix}.x.99999999999999999999.deadbeef.tmp", "empty")
    neighbour.make(f"/dev/shm/.{prefix}.digits.1.{pid}.deadbeef.tmp", "empty")
    theirs = snapshot(neighbour.made)
    daemon = stack.start_daemon(timeout=60)
    assert_serves_the_real_model(stack)
    assert daemon.stop(signal.SIGTERM) == 0
    assert snapshot(neighbour.made) == theirs


SWEEP = "import sys, shm; shm.sweep_temp(sys.argv[1]); print('swept')"


@pytest.mark.parametrize("pid", ["99999999999999999999", "dead"])
def test_sweep_as_a_service_user_survives_a_neighbours_temp_file(neighbour, pid):
    """The daemon as an unprivileged user (as under systemd): another user's temp
    file in sticky /dev/shm used to raise PermissionError on unlink, and an
    out-of-range pid OverflowError, out of the start-up sweep."""
    prefix = f"fsweep{uuid.uuid4().hex[:8]}"
    if pid == "dead":
        pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                             capture_output=True, text=True, check=True).stdout.strip()
    path = neighbour.make(f"/dev/shm/.{prefix}.m.1.{pid}.deadbeef.tmp", "empty")
    service = Neighbour()  # the daemon's user: yet another uid
    try:
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": "/"}
        done = subprocess.run(service.argv(sys.executable, "-c", SWEEP, prefix), env=env,
                              capture_output=True, text=True, timeout=60, cwd="/")
        assert done.returncode == 0 and "swept" in done.stdout, done.stderr
        assert os.path.exists(path)
    finally:
        service.cleanup()
        shutil.rmtree(f"/dev/shm/{prefix}.d", ignore_errors=True)


def test_a_directory_swapped_after_its_check_is_never_used(neighbour, monkeypatch):
    """The segment directory is checked (owner, mode, no link) and then used. It
    used to be used by path: if it went between the two -- the daemon removes it
    when its last segment goes, from another thread -- a neighbour could put a
    symlink to a directory of theirs under its name, and the segment was published
    there (where they may rename, swap or remove it). Now every call acts through
    the descriptor that was checked: the removed directory refuses the create, and
    the search starts again, skipping the neighbour's link."""
    prefix = f"fswap{uuid.uuid4().hex[:8]}"
    ours = f"/dev/shm/{prefix}.d"
    os.mkdir(ours, 0o700)  # the daemon's directory, empty: its last segment just went
    theirs = neighbour.make(f"/dev/shm/{prefix}-theirs", "dir")
    real_fstat = os.fstat
    swapped: list[str] = []

    def fstat_then_swap(fd: int):  # the check happens; then the directory changes
        st = real_fstat(fd)
        if not swapped and stat.S_ISDIR(st.st_mode) and \
                os.readlink(f"/proc/self/fd/{fd}") == ours:
            swapped.append(ours)
            os.rmdir(ours)  # (the daemon's other thread)
            neighbour.make(ours, "symlink", target=theirs)
        return st

    name = f"{prefix}.digits.1.ab12"
    monkeypatch.setattr(os, "fstat", fstat_then_swap)
    try:
        seg = shm.publish(name, {"w": np.arange(16, dtype=np.float32)})
    finally:
        monkeypatch.setattr(os, "fstat", real_fstat)
    try:
        assert swapped, "the swap never happened: the test no longer reaches the check"
        assert os.listdir(theirs) == [], "published into the neighbour's directory"
        directory = shm.names.find_dir(prefix)
        assert directory is not None and directory.startswith(f"{ours}.")
        assert os.path.isfile(os.path.join(directory, name))
        again = shm.attach(name)
        assert np.array_equal(again.arrays["w"], np.arange(16, dtype=np.float32))
        again.close()
    finally:
        seg.close()
        shm.unlink(name)
    assert shm.names.find_dir(prefix) is None  # removed with its last segment
    assert os.path.islink(ours)  # the neighbour's link: not ours to remove
