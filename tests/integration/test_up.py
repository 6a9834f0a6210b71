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

import shm
from tests.httpx_lite import request
from tests.pg_fixture import make_root
from tests.stacks import ROOT, descendants, stack_env, zombie


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
        curls = [ln.strip() for ln in lines if ln.strip().startswith("curl ")]
        request_ids = []
        assert len(curls) == 2, output  # one per demo model: digits, iris
        for curl, model in zip(curls, ("digits", "iris"), strict=True):
            argv = shlex.split(curl)
            body = argv[argv.index("-d") + 1]
            url = next(a for a in argv if a.startswith("http://"))
            path = url.split(bind, 1)[1]
            assert path == f"/v1/models/{model}/predict", curl
            headers = dict(argv[i + 1].split(": ", 1) for i, a in enumerate(argv) if a == "-H")
            assert headers["Authorization"].startswith("Bearer fk_"), curl
            denied = request(bind, "POST", path, body, {"Content-Type": "application/json"})
            assert denied.status == 401
            ans = request(bind, "POST", path, body, headers)
            assert ans.status == 200, ans.body
            example = json.loads((ROOT / "models" / model / "example.json").read_text())
            assert [p["label"] for p in ans.json()["predictions"]] == example["expected_labels"]
            request_ids.append(ans.json()["request_id"])
        children = descendants(proc.pid)
        # daemon, gunicorn arbiter + workers, haproxy, shipper, memcached
        assert len(children) >= 6
        cache = re.search(r"prediction cache:  memcached (127\.0\.0\.1:\d+)", output)
        assert cache, output
        host, port = cache.group(1).split(":")
        socket.create_connection((host, int(port)), timeout=5).close()  # it is up
        assert _wait_for_audit_rows(env, request_ids)
        # falconctl run in the same checkout, with nothing configured, finds this stack
        bare = {k: v for k, v in os.environ.items() if not k.startswith("FALCON_")}
        listed = subprocess.run([sys.executable, "-m", "falconctl", "models", "list"], cwd=ROOT,
                                env=bare, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0 and "digits" in listed.stdout, listed.stdout + listed.stderr
        assert (ROOT / "var" / "up.toml").stat().st_mode & 0o077 == 0
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0
        rest = proc.stdout.read()
        assert "stopped:" in rest and "daemon exit 0" in rest and "shipper exit 0" in rest, rest
        assert "memcached exit 0" in rest, rest
        assert [p for p in children if Path(f"/proc/{p}").exists() and not zombie(p)] == []
        assert shm.list_segments(env["FALCON_DAEMON_SHM_PREFIX"]) == []
        assert not (ROOT / "var" / "up.toml").exists()  # removed when `up` stops
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_for_audit_rows(env: dict[str, str], request_ids: list[str]) -> bool:
    """The embedded PostgreSQL that `up` started received the predictions' audit rows
    (the iris one with string labels and a string output)."""
    out = subprocess.run([sys.executable, "-m", "falconctl", "wal", "tail", "--once",
                          "--from-start"], env=env, capture_output=True, text=True, timeout=60)
    for request_id in request_ids:
        assert request_id in out.stdout, out.stdout + out.stderr
    assert '"labels":["setosa","versicolor","virginica"]' in out.stdout, out.stdout
    log = Path(env["FALCON_PATHS_STATE_DIR"]) / "logs" / "shipper.log"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if re.search(r"shipped [12] records", log.read_text()):  # digits' and iris' rows
            return True
        time.sleep(0.2)
    return False


