"""KServe's V1 protocol through the whole stack (HAProxy -> gunicorn -> daemon), auth on:
KServe's liveness at ``/``, the model list a key may see, model ready (200, 503 known but not loaded, 404 unknown),
and ``:predict`` answering exactly what ``/predict`` answers, bad input included, audited
once per request, refused to a key limited to another model, counted against the same
rate limit; and HAProxy re-sending a ``:predict`` (never a management call) whose edge
died unanswered, as it does a ``/predict``."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from apikeys import parse
from tests.httpx_lite import Answer, post_json, request
from tests.stacks import create_key, wal_records

ROOT = Path(__file__).resolve().parents[2]
DIGITS = np.load(ROOT / "tests" / "data" / "digits_test.npz")
PER_KEY = 30  # requests per 10 s window and key (HAProxy)


def key(k: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {k}"}


@pytest.fixture(scope="module")
def kserve(module_stacks):
    stack = module_stacks(start=False, FALCON_AUTH_ENABLED="true",
                          FALCON_HAPROXY_RATE_PER_KEY=str(PER_KEY))
    keys = {"pred": create_key(stack, "pred"), "adm": create_key(stack, "adm", "--scope", "admin"),
            "digits": create_key(stack, "digits-only", "--model", "digits"),
            "same": create_key(stack, "same"), "bad": create_key(stack, "bad"),
            "audit": create_key(stack, "audit"),
            "limit": create_key(stack, "limit")}
    stack.start()
    return stack.settings.haproxy.bind, keys, stack


def test_the_list_names_the_models_the_key_may_use(kserve):
    addr, keys, _ = kserve
    ans = request(addr, "GET", "/v1/models", headers=key(keys["pred"]))
    assert ans.status == 200 and ans.json() == {"models": ["digits", "multi"]}
    limited = request(addr, "GET", "/v1/models", headers=key(keys["digits"]))
    assert limited.status == 200 and limited.json() == {"models": ["digits"]}
    assert request(addr, "GET", "/v1/models").status == 401
    live = request(addr, "GET", "/")  # KServe's liveness: open, like /v2/health/live
    assert live.status == 200 and live.json() == {"status": "alive"}
    assert request(addr, "GET", "/v1/models", headers=key(keys["adm"])).status == 403


def test_ready_is_200_when_loaded_503_when_not_and_404_when_unknown(kserve):
    addr, keys, _ = kserve
    pred = key(keys["pred"])
    ans = request(addr, "GET", "/v1/models/digits", headers=pred)
    assert ans.status == 200 and ans.json() == {"name": "digits", "ready": True}
    for name in ("nope", "x:y"):  # (a name holds no colon)
        ans = request(addr, "GET", f"/v1/models/{name}", headers=pred)
        assert ans.status == 404 and "not in the repository" in ans.json()["error"], ans.body
    assert request(addr, "POST", "/v2/repository/models/multi/unload",
                   headers=key(keys["adm"])).status == 200
    try:
        time.sleep(1.0)  # every worker's cached listing and metadata expire (0.5 s here)
        ans = request(addr, "GET", "/v1/models/multi", headers=pred)
        assert ans.status == 503 and ans.headers["retry-after"] == "1", ans.body
        assert ans.json() == {"error": "model 'multi' is not ready: it is in the repository "
                                       "but not loaded"}
        # still listed: KServe lists the models it knows, ready or not
        assert request(addr, "GET", "/v1/models", headers=pred).json()["models"] == \
            ["digits", "multi"]
    finally:
        assert request(addr, "POST", "/v2/repository/models/multi/load",
                       headers=key(keys["adm"])).status == 200
    time.sleep(1.0)
    assert request(addr, "GET", "/v1/models/multi", headers=pred).json()["ready"] is True


def both(addr: str, body: bytes | str, headers: dict[str, str]) -> tuple[Answer, Answer]:
    """The same request to ``/predict`` and to ``:predict``."""
    headers = {"Content-Type": "application/json", **headers}
    return (request(addr, "POST", "/v1/models/digits/predict", body, headers),
            request(addr, "POST", "/v1/models/digits:predict", body, headers))


def test_colon_predict_answers_exactly_what_predict_answers(kserve):
    addr, keys, _ = kserve
    for i, start in enumerate((0, 100, 200)):
        body = json.dumps({"instances": DIGITS["X"][start:start + 100].tolist()})
        simple, kserve_v1 = both(addr, body, {**key(keys["same"]), "X-Request-Id": f"rows-{i}"})
        assert simple.status == kserve_v1.status == 200, kserve_v1.body
        assert kserve_v1.json() == simple.json()  # (request_id: the client's, the same)
        assert kserve_v1.headers["content-type"] == simple.headers["content-type"]
        labels = [p["label"] for p in kserve_v1.json()["predictions"]]
        assert np.mean(np.asarray(labels) == DIGITS["y"][start:start + 100]) > 0.8
    body = json.dumps({"instances": [[0.0] * 64]})
    headers = {"Content-Type": "application/json", **key(keys["same"])}
    unknown = [request(addr, "POST", path, body, headers)
               for path in ("/v1/models/nope/predict", "/v1/models/nope:predict")]
    assert unknown[0].status == unknown[1].status == 404
    assert unknown[0].json() == unknown[1].json() == {"error": "model 'nope' is not loaded"}


@pytest.mark.parametrize("body, status, field", [
    ({"instances": [[0.0] * 63]}, 400, "instances[0]"),
    ({"instances": [[0.0] * 64], "inputs": []}, 400, "inputs: unknown field"),
    ({}, 400, "instances: missing"),
    ({"instances": "rows"}, 400, "instances"),
    ([[0.0] * 64], 400, "body: expected a JSON object"),
    ("{not json", 400, "body: malformed JSON"),
    ({"instances": [[0.0] * 64] * 2000}, 413, "instances"),
])
def test_bad_input_gets_the_same_answer_naming_the_field(kserve, body, status, field):
    addr, keys, _ = kserve
    raw = body if isinstance(body, str) else json.dumps(body)
    simple, kserve_v1 = both(addr, raw, key(keys["bad"]))
    assert simple.status == kserve_v1.status == status, (simple.body, kserve_v1.body)
    assert kserve_v1.json() == simple.json() and field in kserve_v1.json()["error"]


def test_every_colon_predict_is_audited_once(kserve):
    addr, keys, stack = kserve
    sent = {}
    for i in range(5):
        rid = f"kserve-audit-{i}"
        ans = post_json(addr, "/v1/models/digits:predict",
                        {"instances": DIGITS["X"][i:i + 2].tolist()},
                        {**key(keys["audit"]), "X-Request-Id": rid})
        assert ans.status == 200 and ans.json()["request_id"] == rid
        sent[rid] = ans.json()
    records = [r for r in wal_records(stack) if r.request_id in sent]
    assert Counter(r.request_id for r in records) == dict.fromkeys(sent, 1)
    for r in records:
        assert (r.model, r.version, r.face, r.cached) == ("digits", "1", "v1", False)
        assert r.api_key_id == parse(keys["audit"])
        assert r.labels == [p["label"] for p in sent[r.request_id]["predictions"]]


def test_a_key_limited_to_one_model_is_refused_the_other(kserve):
    addr, keys, _ = kserve
    digits_only = key(keys["digits"])
    row = {"instances": [[0.0] * 64]}
    assert post_json(addr, "/v1/models/digits:predict", row, digits_only).status == 200
    for method, path in (("POST", "/v1/models/multi:predict"), ("GET", "/v1/models/multi")):
        ans = request(addr, method, path, json.dumps(row), digits_only)
        assert ans.status == 403 and "may not use model 'multi'" in ans.json()["error"], ans.body


def test_both_paths_count_against_the_same_rate_limit(kserve):
    """HAProxy keys its limit by the API key, whatever the path: alternating paths buys
    no fresh allowance."""
    addr, keys, _ = kserve
    row = {"instances": [[0.0] * 64]}
    paths = ["/v1/models/digits/predict", "/v1/models/digits:predict"]
    answers = [post_json(addr, paths[i % 2], row, key(keys["limit"])) for i in range(2 * PER_KEY)]
    assert [a.status for a in answers] == [200] * PER_KEY + [429] * PER_KEY
    assert answers[-1].json() == {"error": "rate limited"}
    assert answers[-1].headers["retry-after"] == "10"


class FlakyEdge(socketserver.ThreadingTCPServer):
    """An edge that dies unanswered on the first request of each path (the connection
    closed with no response) and answers the next; health checks always answer."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int]) -> None:
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()
        super().__init__(addr, FlakyHandler)


class FlakyHandler(socketserver.StreamRequestHandler):
    server: FlakyEdge

    def handle(self) -> None:
        line = self.rfile.readline().decode("latin-1")
        if not line:
            return
        path = line.split(" ")[1]
        length = 0
        while (header := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = header.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        self.rfile.read(length)
        if path != "/v2/health/ready":
            with self.server.lock:
                self.server.seen[path] += 1
                first = self.server.seen[path] == 1
            if first:
                self.connection.shutdown(socket.SHUT_RDWR)  # dies before answering
                return
        body = json.dumps({"path": path}).encode()
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


@pytest.fixture
def flaky(make_stack) -> Iterator[tuple[str, FlakyEdge]]:
    stack = make_stack(start=False)
    host, _, port = stack.settings.edge.bind.rpartition(":")
    edge = FlakyEdge((host, int(port)))
    thread = threading.Thread(target=edge.serve_forever, daemon=True)
    thread.start()
    try:
        stack.start_haproxy()
        yield stack.settings.haproxy.bind, edge
    finally:
        edge.shutdown()
        edge.server_close()
        thread.join(5)


def test_haproxy_resends_a_colon_predict_whose_edge_died_as_it_does_a_predict(flaky):
    addr, edge = flaky
    row = {"instances": [[0.0] * 64]}
    for path in ("/v1/models/digits:predict", "/v1/models/digits/predict"):
        ans = post_json(addr, path, row)
        assert ans.status == 200 and ans.json() == {"path": path}, (path, ans.status, ans.body)
        assert edge.seen[path] == 2, path  # the one that died, then the retry
    # a management call is never re-sent: its first try was its only one
    ans = request(addr, "POST", "/v2/repository/models/digits/load")
    assert ans.status == 502 and edge.seen["/v2/repository/models/digits/load"] == 1
