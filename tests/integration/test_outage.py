"""The daemon down or hung: fast 503/504 within the deadline, never a hang or a
500; predictions resume when it is back."""

from __future__ import annotations

import json
import signal
import time

from tests.httpx_lite import request

ROW = json.dumps({"instances": [[0.0] * 64]})
DEADLINE_MS = 1000


def predict(addr: str) -> tuple[int, float, dict[str, str], bytes]:
    started = time.monotonic()
    ans = request(addr, "POST", "/v1/models/digits/predict", ROW,
                  {"Content-Type": "application/json"}, timeout=DEADLINE_MS / 1000 + 10)
    return ans.status, time.monotonic() - started, ans.headers, ans.body


def wait_for_200(addr: str, timeout: float = 15.0, streak: int = 20) -> float:
    """Seconds until ``streak`` predictions in a row succeed (every worker's
    breaker closed again, HAProxy's health check up)."""
    started = time.monotonic()
    run = 0
    while time.monotonic() - started < timeout:
        run = run + 1 if predict(addr)[0] == 200 else 0
        if run >= streak:
            return time.monotonic() - started
        if run == 0:
            time.sleep(0.1)
    raise AssertionError(f"not {streak} 200s in a row within {timeout}s")


def test_daemon_killed_gives_503_then_predictions_resume(make_stack):
    stack = make_stack(FALCON_EDGE_DEADLINE_MS=str(DEADLINE_MS))
    addr = stack.settings.haproxy.bind
    assert predict(addr)[0] == 200
    stack.procs["daemon"].stop(signal.SIGKILL)
    stop_at = time.monotonic() + 3
    seen = 0
    while time.monotonic() < stop_at:
        status, elapsed, headers, body = predict(addr)
        assert status == 503, (status, body)
        assert int(headers["retry-after"]) >= 1
        assert "error" in json.loads(body)
        assert elapsed < DEADLINE_MS / 1000 + 0.5
        seen += 1
    assert seen >= 5
    stack.start_daemon()
    assert wait_for_200(addr) < 10


def test_hung_daemon_gives_504_or_503_within_the_deadline(make_stack):
    stack = make_stack(FALCON_EDGE_DEADLINE_MS=str(DEADLINE_MS))
    addr = stack.settings.haproxy.bind
    assert predict(addr)[0] == 200
    daemon = stack.procs["daemon"].popen
    daemon.send_signal(signal.SIGSTOP)
    try:
        statuses = []
        stop_at = time.monotonic() + 4
        while time.monotonic() < stop_at:
            status, elapsed, _, body = predict(addr)
            assert status in (503, 504), (status, body)
            assert elapsed < DEADLINE_MS / 1000 + 0.5
            statuses.append(status)
        assert 504 in statuses  # the edge gave up at its deadline
        assert statuses[-1] == 503  # then HAProxy saw the edge not ready
    finally:
        daemon.send_signal(signal.SIGCONT)
    assert wait_for_200(addr) < 10


def test_client_can_lower_the_deadline(make_stack):
    stack = make_stack(FALCON_EDGE_DEADLINE_MS="5000")
    addr = stack.settings.haproxy.bind
    stack.procs["daemon"].popen.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        ans = request(addr, "POST", "/v1/models/digits/predict", ROW,
                      {"X-Request-Timeout-Ms": "300"})
        assert ans.status == 504, ans.body
        assert time.monotonic() - started < 1.0
        assert "deadline" in ans.json()["error"]
    finally:
        stack.procs["daemon"].popen.send_signal(signal.SIGCONT)
