"""What the public HAProxy frontend refuses to pass on (issue 15): ``/metrics`` in
every spelling the edge's router would still serve, while the edge itself and
HAProxy's own exporter (where Prometheus scrapes) keep serving it (item 7); bodies
over the limit however they are framed, bodies that do not arrive, and the server
timeout of a model load (item 15)."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from falconctl.stack import split_hostport
from tests.httpx_lite import request

# Each of these reaches the edge's /metrics resource when sent to the edge.
SPELLINGS = ["/metrics", "/metrics/", "//metrics", "/%6detrics", "/%6Detrics", "/metrics?x=1",
             "/metrics%2f", "/%2fmetrics", "/metrics?", "http://falcon/metrics"]


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


# -- bodies and timeouts (issue 15, item 15) ------------------------------------------

LIMIT = 4096
ROW = {"instances": [[0.0] * 64]}


@pytest.fixture(scope="module")
def limited(module_stacks):
    """A stack whose HAProxy body limit (4 kB) is below the edge's (16 MB)."""
    return module_stacks(FALCON_HAPROXY_MAX_BODY_BYTES=str(LIMIT))


def send_chunked(addr: str, path: str, chunks: list[bytes],
                 extra: dict[str, str] | None = None) -> tuple[int, bytes]:
    host, port = split_hostport(addr)
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("POST", path, body=iter(chunks), encode_chunked=True,
                     headers={"Content-Type": "application/json",
                              "Transfer-Encoding": "chunked", **(extra or {})})
        ans = conn.getresponse()
        return ans.status, ans.read()
    except (BrokenPipeError, ConnectionResetError):  # refused while still sending
        ans = conn.getresponse()
        return ans.status, ans.read()
    finally:
        conn.close()


def test_chunked_bodies_are_held_to_the_limit(limited):
    addr = limited.settings.haproxy.bind
    small = json.dumps(ROW).encode()
    # under the limit: passed on, and the edge reads the chunked body
    status, body = send_chunked(addr, "/v1/models/digits/predict", [small[:10], small[10:]])
    assert status == 200 and json.loads(body)["predictions"][0]["label"] is not None, body
    # over HAProxy's limit, under the edge's: used to reach the edge (400 or 200)
    padded = small[:-1] + b" " * (2 * LIMIT) + b"}"
    status, body = send_chunked(addr, "/v1/models/digits/predict",
                                [padded[i:i + 512] for i in range(0, len(padded), 512)])
    assert (status, json.loads(body)) == (413, {"error": "body: larger than the limit"})
    # a declared length over the limit, as before
    ans = request(addr, "POST", "/v1/models/digits/predict", padded,
                  {"Content-Type": "application/json"})
    assert ans.status == 413


def big_headers(total: int) -> dict[str, str]:
    """Headers of about ``total`` bytes, in 2 kB values (under gunicorn's 8 kB per field)."""
    return {f"X-Pad-{i}": "p" * 2000 for i in range(total // 2000)}


def test_chunked_bodies_beside_large_headers_are_held_to_the_limit(limited):
    """The buffer holds headers and body: with 12 kB of headers only ~3 kB of a
    chunked body fit, which is all req.body_len/req.body_size measured, so a body
    five times the limit used to reach the edge (200). Now a request HAProxy
    cannot hold whole is a 413, and one it can is still served."""
    addr = limited.settings.haproxy.bind
    small = json.dumps(ROW).encode()
    padded = small[:-1] + b" " * (5 * LIMIT) + b"}"
    status, body = send_chunked(addr, "/v1/models/digits/predict",
                                [padded[i:i + 512] for i in range(0, len(padded), 512)],
                                big_headers(12000))
    assert (status, json.loads(body)) == (413, {"error": "body: larger than the limit"})
    # a small chunked body beside large (but not too large) headers is served
    status, body = send_chunked(addr, "/v1/models/digits/predict", [small[:10], small[10:]],
                                big_headers(6000))
    assert status == 200 and json.loads(body)["predictions"], body
    # what cannot be measured is refused even under the limit's byte count: 12 kB of
    # headers and a 2 kB chunked body (under the 4 kB limit) do not fit in 12 kB
    under = small[:-1] + b" " * 2000 + b"}"
    status, body = send_chunked(addr, "/v1/models/digits/predict",
                                [under[i:i + 512] for i in range(0, len(under), 512)],
                                big_headers(12000))
    assert status == 413, body


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl (HTTP/2 prior knowledge)")
def test_an_http2_body_without_length_is_held_to_the_limit(limited):
    """HTTP/2 frames a body without Content-Length and without Transfer-Encoding:
    a rule keyed on Transfer-Encoding never saw it. Sent by curl (h2 prior
    knowledge, the body from stdin, so no length is declared)."""
    small = json.dumps(ROW).encode()
    padded = small[:-1] + b" " * (5 * LIMIT) + b"}"

    def post(body: bytes) -> tuple[int, bytes]:
        for _ in range(5):
            done = subprocess.run(
                ["curl", "-sS", "--http2-prior-knowledge", "-X", "POST", "-T", "-",
                 "-H", "Content-Type: application/json", "-w", "\n%{http_version} %{http_code}",
                 f"http://{limited.settings.haproxy.bind}/v1/models/digits/predict"],
                input=body, capture_output=True, timeout=30)
            # 92: HAProxy answered 413 and reset the stream the client was still sending
            # on, and curl, busy sending, read the reset first (a race on a busy machine):
            # ask again until an answer is read whole.
            if done.returncode != 92:
                break
        assert done.returncode == 0, (done.returncode, done.stderr)
        answer, _, tail = done.stdout.rpartition(b"\n")
        version, code = tail.split()
        assert version == b"2", tail  # it was HTTP/2
        return int(code), answer
    status, body = post(padded)
    assert (status, json.loads(body)) == (413, {"error": "body: larger than the limit"})
    status, body = post(small)
    assert status == 200 and json.loads(body)["predictions"], body


def test_a_withheld_body_never_reaches_an_edge(limited):
    """Headers on time, then the body stalls: 408 from HAProxy after
    ``timeout http-request`` (10 s); it used to hold an edge slot until the
    server timeout."""
    host, port = split_hostport(limited.settings.haproxy.bind)
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: falcon\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inst")
        data = sock.recv(65536)
    assert data.split()[1] == b"408", data[:200]
    assert 9 < time.monotonic() - started < 20


def test_a_model_load_may_take_longer_than_a_prediction(limited):
    """The daemon held still for 9 s (SIGSTOP) while a load is in flight: HAProxy
    waits for the edge (which allows a load 120 s) instead of answering 504 after
    the predictions' server timeout (deadline + 5 s = 7 s)."""
    daemon = limited.procs["daemon"].popen
    daemon.send_signal(signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(1) as pool:
            load = pool.submit(request, limited.settings.haproxy.bind, "POST",
                               "/v2/repository/models/multi/load", b"{}",
                               {"Content-Type": "application/json"}, 60)
            time.sleep(9)
            daemon.send_signal(signal.SIGCONT)
            ans = load.result()
    finally:
        daemon.send_signal(signal.SIGCONT)
    assert ans.status == 200, (ans.status, ans.body)


def test_a_malformed_or_cut_short_chunked_body_is_a_400_naming_the_body(limited):
    """Straight to the edge (HAProxy would refuse these itself): a bad chunk size, or a
    body that ends before its last chunk, is the client's error, never a 500."""
    host, port = split_hostport(limited.settings.edge.bind)
    head = (b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    for body, close in ((b"zz\r\n{}\r\n0\r\n\r\n", False), (b"10\r\n{\"instances\"", True)):
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(head + body)
            if close:
                sock.shutdown(socket.SHUT_WR)  # the body is cut short
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        status = answer.split(b" ", 2)[1]
        assert status == b"400", answer
