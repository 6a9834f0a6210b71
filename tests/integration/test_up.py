"""``falconctl up``: the whole stack in the foreground, a working curl line,
and a clean stop on Ctrl-C (SIGINT) that leaves no process and no segment."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, stack_env
from httpx_lite import request
from pg_fixture import make_root

import shm


def test_up_serves_the_printed_curl_line_and_stops_cleanly_on_ctrl_c():
    root = make_root("falcon-up-")  # the embedded PostgreSQL runs as 'postgres': not under a 0700 dir
    try:
        run_up(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_up(tmp_path: Path) -> None:
    env = stack_env(tmp_path, ROOT / "models")
    env.pop("FALCON_CONFIG")  # exercise the embedded defaults path of `up`
    env.pop("FALCON_DAEMON_MODEL_REPOSITORY")
    env.pop("FALCON_AUTH_ENABLED")  # the default: on, with a demo key in the curl line
    proc = subprocess.Popen([sys.executable, "-m", "falconctl", "up", "--root", str(ROOT)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "falconctl up exited:\n" + "".join(lines)
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        output = "".join(lines)
        bind = env["FALCON_HAPROXY_BIND"]
        assert f"http://{bind}" in output
        curl = next(ln.strip() for ln in lines if ln.strip().startswith("curl "))
        argv = shlex.split(curl)
        body = argv[argv.index("-d") + 1]
        url = next(a for a in argv if a.startswith("http://"))
        path = url.split(bind, 1)[1]
        headers = dict(argv[i + 1].split(": ", 1) for i, a in enumerate(argv) if a == "-H")
        assert headers["Authorization"].startswith("Bearer fk_"), curl
        assert request(bind, "POST", path, body, {"Content-Type": "application/json"}).status == 401
        ans = request(bind, "POST", path, body, headers)
        assert ans.status == 200, ans.body
        expected = json.loads((ROOT / "models/digits/example.json").read_text())["expected_labels"]
        assert [p["label"] for p in ans.json()["predictions"]] == expected
        children = _descendants(proc.pid)
        # daemon, gunicorn arbiter + workers, haproxy, shipper, memcached
        assert len(children) >= 6
        cache = re.search(r"prediction cache:  memcached (127\.0\.0\.1:\d+)", output)
        assert cache, output
        host, port = cache.group(1).split(":")
        socket.create_connection((host, int(port)), timeout=5).close()  # it is up
        assert _wait_for_audit_row(env, ans.json()["request_id"])
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0
        rest = proc.stdout.read()
        assert "stopped:" in rest and "daemon exit 0" in rest and "shipper exit 0" in rest, rest
        assert "memcached exit 0" in rest, rest
        assert [p for p in children if Path(f"/proc/{p}").exists() and not _zombie(p)] == []
        assert shm.list_segments(env["FALCON_DAEMON_SHM_PREFIX"]) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_for_audit_row(env: dict[str, str], request_id: str) -> bool:
    """The embedded PostgreSQL that `up` started received the prediction's audit row."""
    out = subprocess.run([sys.executable, "-m", "falconctl", "wal", "tail", "--once",
                          "--from-start"], env=env, capture_output=True, text=True, timeout=60)
    assert request_id in out.stdout, out.stdout + out.stderr
    log = Path(env["FALCON_PATHS_STATE_DIR"]) / "logs" / "shipper.log"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if "shipped 1 records" in log.read_text():
            return True
        time.sleep(0.2)
    return False


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            kids = [int(x) for x in task.read_text().split()]
            out += kids
            todo += kids
    return out


def _zombie(pid: int) -> bool:
    try:
        return re.search(r"\) Z ", Path(f"/proc/{pid}/stat").read_text()) is not None
    except OSError:
        return False
