"""An edge believes HAProxy's headers only from HAProxy (issue 15 item 3).

A client that reaches an edge directly (multi-host: ``edge.bind`` on a LAN
address) must not choose its audit row's key (``X-Falcon-Request-Key``) and time
(``X-Request-Start``): naming an existing row's, its own prediction's row would
be dropped by ``ON CONFLICT DO NOTHING``. HAProxy proves itself with the secret
in ``edge.proxy_secret_file`` (``X-Falcon-Proxy-Secret``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.httpx_lite import post_json, request

ROW = {"instances": [[0.0] * 64]}
PREDICT = "/v1/models/digits/predict"


def forged(name: str) -> dict[str, str]:
    """A client's copy of one of HAProxy's headers."""
    return {name: {"X-Falcon-Request-Key": "front-someone-elses-key",
                   "X-Request-Start": f"t={int(time.time() * 1e6)}",
                   "X-Forwarded-For": "10.9.9.9"}[name]}


@pytest.mark.parametrize("name", ["X-Falcon-Request-Key", "X-Request-Start", "X-Forwarded-For"])
def test_haproxys_headers_sent_straight_to_an_edge_are_refused(stack, name):
    edge = stack.settings.edge.bind
    answer = post_json(edge, PREDICT, ROW, forged(name))
    assert answer.status == 403, (answer.status, answer.body[:200])
    assert b"HAProxy" in answer.body


def test_a_wrong_secret_is_refused_and_the_right_one_accepted(stack):
    edge = stack.settings.edge.bind
    secret = Path(stack.settings.proxy_secret_file).read_text().strip()
    headers = {**forged("X-Falcon-Request-Key"), "X-Falcon-Proxy-Secret": "x" * len(secret)}
    assert post_json(edge, PREDICT, ROW, headers).status == 403
    headers["X-Falcon-Proxy-Secret"] = secret
    assert post_json(edge, PREDICT, ROW, headers).status == 200


def test_requests_without_them_and_through_haproxy_are_served(stack):
    s = stack.settings
    assert post_json(s.edge.bind, PREDICT, ROW).status == 200  # an edge reached directly
    assert request(s.edge.bind, "GET", "/metrics").status == 200  # Prometheus
    # through HAProxy, whatever the client sent: HAProxy replaces them
    for name in ("X-Falcon-Request-Key", "X-Request-Start", "X-Forwarded-For"):
        answer = post_json(s.haproxy.bind, PREDICT, ROW,
                           {**forged(name), "X-Falcon-Proxy-Secret": "guess"})
        assert answer.status == 200, (name, answer.status, answer.body[:200])
        assert answer.headers["x-request-id"] != "front-someone-elses-key"
