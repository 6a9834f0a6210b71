"""Restarts under steady load through HAProxy, counted by the load generator:
a rolling restart of the edge's workers (gunicorn HUP), a full stop/start of one
of two edges, a HAProxy reload — zero failed requests; a daemon restart —
nothing but 200s and 503s, and 503s only while it is down."""

from __future__ import annotations

import http.client
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from tests.httpx_lite import post_json, request
from tests.loadgen import LoadGen
from tests.stacks import free_port

ROOT = Path(__file__).resolve().parents[2]
DIGITS = np.load(ROOT / "tests" / "data" / "digits_test.npz")


def statuses(outcomes) -> dict[int, int]:
    out: dict[int, int] = {}
    for o in outcomes:
        out[o.status] = out.get(o.status, 0) + 1
    return out


def under_load(stack, action, settle: float = 1.5) -> dict[int, int]:
    load = LoadGen(stack.settings.haproxy.bind, DIGITS["X"], threads=4).start()
    try:
        time.sleep(1.0)
        action()
        time.sleep(settle)
    finally:
        outcomes = load.stop()
    counts = statuses(outcomes)
    assert counts.get(200, 0) > 100, counts
    return counts


def test_gunicorn_hup_rolling_restart_loses_nothing(make_stack):
    stack = make_stack(FALCON_EDGE_WORKERS="2")
    edge = stack.procs["edge"].popen

    def hup_twice() -> None:
        edge.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        edge.send_signal(signal.SIGHUP)

    assert set(under_load(stack, hup_twice, settle=2.0)) == {200}


def test_haproxy_reload_loses_nothing(make_stack):
    stack = make_stack()

    def reload_twice() -> None:
        stack.reload_haproxy()
        time.sleep(1.0)
        stack.reload_haproxy()

    assert set(under_load(stack, reload_twice)) == {200}


def test_stopping_and_starting_one_of_two_edges_loses_nothing(make_stack):
    """The stopping edge reports not-ready for edge.drain_s first: HAProxy moves
    its traffic to the other edge before it stops accepting."""
    second = f"127.0.0.1:{free_port()}"
    stack = make_stack(start=False, FALCON_HAPROXY_EDGE2=second, FALCON_EDGE_DRAIN_S="2.5")
    stack.start_daemon()
    stack.start_edge()
    stack.start_edge(name="edge2", bind=second)
    stack.start_haproxy()

    def restart_first_edge() -> None:
        stack.procs["edge"].stop(signal.SIGTERM)
        time.sleep(1.0)
        stack.start_edge()

    assert set(under_load(stack, restart_first_edge, settle=2.0)) == {200}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_daemon_restart_gives_only_503s_and_only_while_down(make_stack, sig):
    stack = make_stack()

    def restart_daemon() -> None:
        stack.procs["daemon"].stop(sig)
        stack.start_daemon()

    load = LoadGen(stack.settings.haproxy.bind, DIGITS["X"], threads=4)
    load.start()
    try:
        time.sleep(1.0)
        restart_daemon()
        time.sleep(4.0)
    finally:
        load.stop()
    counts = statuses(load.outcomes)
    assert set(counts) <= {200, 503, 504}, counts
    assert all(o.seconds < 2.5 for o in load.outcomes)  # within the 2 s deadline, no hang
    # after the daemon is back, a few seconds at most (breaker reset, HAProxy's
    # health check) before every request is a 200 again
    tail = [o for o in load.outcomes[-50:]]
    assert all(o.status == 200 for o in tail), statuses(tail)


def test_sigterm_makes_the_edge_not_ready_while_it_still_serves(make_stack):
    stack = make_stack(FALCON_EDGE_DRAIN_S="3")
    edge = stack.settings.edge.bind
    assert request(edge, "GET", "/v2/health/ready").status == 200
    stack.procs["edge"].popen.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert request(edge, "GET", "/v2/health/ready").status == 503
    ans = post_json(edge, "/v1/models/digits/predict", {"instances": DIGITS["X"][:1].tolist()})
    assert ans.status == 200  # still finishing work during the drain
    assert stack.procs["edge"].popen.wait(30) == 0


def test_sigterm_closes_idle_keepalive_connections_and_exits_soon(make_stack):
    """An idle keep-alive connection (HAProxy keeps them for reuse) must not hold the
    edge's stop for the keep-alive timeout: the edge ends it (EOF to the client) and
    exits within drain_s plus a few seconds. (gunicorn's stock gevent worker waited for
    every connection to close: 30 s here.)"""
    stack = make_stack(FALCON_EDGE_DRAIN_S="1")
    host, _, port = stack.settings.edge.bind.rpartition(":")
    idle = http.client.HTTPConnection(host, int(port), timeout=20)
    idle.request("GET", "/v2/health/live")
    first = idle.getresponse()
    first.read()
    assert first.status == 200 and not first.will_close  # kept alive, now idle
    started = time.monotonic()
    stack.procs["edge"].popen.send_signal(signal.SIGTERM)
    assert stack.procs["edge"].popen.wait(15) == 0
    assert time.monotonic() - started < 1 + 5
    assert idle.sock.recv(1) == b""  # the edge ended the idle connection (end-of-file)
    idle.close()
