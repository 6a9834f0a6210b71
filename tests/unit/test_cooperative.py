"""edge.app's gevent helpers: under a gevent-patched process, an fsync runs in gevent's
thread pool and the group-commit leader yields; otherwise both leave things as they are
(each case in a fresh interpreter, since patching cannot be undone)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import os, sys, tempfile
{patch}
from edge.app import cooperative, greenlet_yield
fsync = cooperative(os.fdatasync)
with tempfile.TemporaryFile() as fh:
    fh.write(b"x")
    fsync(fh.fileno())  # works either way
hook = greenlet_yield()
if hook is not None:
    hook()
print(fsync is os.fdatasync, hook is None)
"""


def run(patch: str) -> str:
    done = subprocess.run([sys.executable, "-c", CHECK.format(patch=patch)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_without_gevent_both_are_no_ops() -> None:
    assert run("") == "True True"


def test_under_gevent_fsync_goes_to_the_pool_and_the_leader_yields() -> None:
    assert run("from gevent import monkey; monkey.patch_all()") == "False False"
