"""What the public HAProxy frontend refuses to pass on (issue 15, item 7):
``/metrics`` in every spelling the edge's router would still serve, while the
edge itself and HAProxy's own exporter (where Prometheus scrapes) keep serving it."""

from __future__ import annotations

import socket

import pytest
from httpx_lite import request

from falconctl.stack import split_hostport

# Each of these reaches the edge's /metrics resource when sent to the edge.
SPELLINGS = ["/metrics", "/metrics/", "//metrics", "/%6detrics", "/%6Detrics", "/metrics?x=1",
             "/metrics%2f", "http://falcon/metrics"]


def raw_get(addr: str, target: str) -> tuple[int, bytes]:
    """GET with the request target exactly as given (no client-side normalising)."""
    host, port = split_hostport(addr)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: falcon\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize("target", SPELLINGS)
def test_metrics_are_not_served_on_the_public_frontend(stack, target):
    edge, public = stack.settings.edge.bind, stack.settings.haproxy.bind
    status, body = raw_get(edge, target)
    assert status == 200 and b"falcon_" in body, "the edge no longer serves this spelling"
    status, body = raw_get(public, target)
    assert status == 404 and b"falcon_" not in body, (status, body[:200])


def test_the_api_and_the_scrape_targets_are_untouched(stack):
    public = stack.settings.haproxy.bind
    assert request(public, "GET", "/v2/health/ready").status == 200
    assert request(public, "GET", "/openapi.json").status == 200
    assert request(stack.settings.edge.bind, "GET", "/metrics").status == 200
    exporter = request(stack.settings.haproxy.stats_bind, "GET", "/metrics")
    assert exporter.status == 200 and b"haproxy_" in exporter.body
