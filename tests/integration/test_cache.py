"""The prediction cache: hits never reach the daemon, are audited, never cross
versions, and Memcached going away never fails a request."""

from __future__ import annotations

import signal
import socket
import time
import urllib.parse
from pathlib import Path

import msgpack
import numpy as np
import onnxruntime as ort
from pymemcache.client.base import Client

from audit.record import AuditRecord
from audit.wal import START, StreamReader, list_streams
from edge.audit import canonical, input_digest
from edge.cache import cache_key, rendezvous
from edge.daemon_client import DaemonClient
from tests.httpx_lite import post_json, request
from tests.loadgen import LoadGen
from tests.modelfactory import write_mlp_model
from tests.stacks import Memcached
from wire import messages, ops

WIDTH = 16


def small_mlp(repo: Path, version: str, seed: int) -> Path:
    return write_mlp_model(repo, "mlp", input_dim=WIDTH, hidden=32, layers=2, classes=4,
                           seed=seed, version=version)


def reference(model: Path, rows: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return sess.run(["probabilities"], {"input": rows})[0]


def predict(addr: str, rows: np.ndarray) -> dict:
    ans = post_json(addr, "/v1/models/mlp/predict", {"instances": rows.tolist()})
    assert ans.status == 200, ans.body
    return ans.json()


def probs(doc: dict) -> np.ndarray:
    return np.array([[p["probabilities"][str(c)] for c in range(4)] for p in doc["predictions"]])


def test_hits_skip_the_daemon_are_audited_and_never_cross_versions(make_stack, memcached,
                                                                     tmp_path):
    repo = tmp_path / "repo"
    v1 = small_mlp(repo, "1", seed=1)
    stack = make_stack(repo=repo, FALCON_CACHE_SERVERS=memcached.addr, FALCON_EDGE_WORKERS="1")
    addr = stack.settings.haproxy.bind
    rows = np.random.default_rng(0).normal(size=(3, WIDTH)).astype(np.float32)
    first, second = predict(addr, rows), predict(addr, rows)
    assert (first["cached"], second["cached"]) == (False, True)
    np.testing.assert_allclose(probs(second), reference(v1, rows), rtol=1e-5)
    assert first["predictions"] == second["predictions"]

    # a hit never reaches the daemon: with the daemon stopped, the hit is still served
    stack.procs["daemon"].popen.send_signal(signal.SIGSTOP)
    try:
        assert predict(addr, rows)["cached"] is True
    finally:
        stack.procs["daemon"].popen.send_signal(signal.SIGCONT)

    # version 2 appears: the same input must be answered by version 2, not from the cache
    stack.procs["daemon"].stop()
    v2 = small_mlp(repo, "2", seed=2)
    stack.start_daemon()
    time.sleep(0.6)  # the edge's metadata TTL in tests
    third = predict(addr, rows)
    assert (third["version"], third["cached"]) == ("2", False)
    np.testing.assert_allclose(probs(third), reference(v2, rows), rtol=1e-5)
    assert not np.allclose(probs(third), probs(first))
    assert predict(addr, rows)["cached"] is True
    # version 1 pinned: its own cached answer, not version 2's
    pinned = post_json(addr, "/v1/models/mlp/versions/1/predict", {"instances": rows.tolist()})
    assert (pinned.json()["version"], pinned.json()["cached"]) == ("1", True)
    np.testing.assert_allclose(probs(pinned.json()), reference(v1, rows), rtol=1e-5)

    wal = Path(stack.settings.wal_dir)
    records = [AuditRecord.from_payload(p) for s in list_streams(wal)
               for _, p in StreamReader(wal, s).read(START, max_records=1000)]
    assert [(r.version, r.cached) for r in records] == [
        ("1", False), ("1", True), ("1", True), ("2", False), ("2", True), ("1", True)]


def test_memcached_killed_mid_load_only_200s(make_stack, memcached, tmp_path):
    repo = tmp_path / "repo"
    small_mlp(repo, "1", seed=1)
    stack = make_stack(repo=repo, FALCON_CACHE_SERVERS=memcached.addr)
    addr = stack.settings.haproxy.bind
    pool = np.random.default_rng(1).normal(size=(20, WIDTH)).astype(np.float32)
    load = LoadGen(addr, pool, threads=4, model="mlp").start()
    try:
        time.sleep(1.0)
        memcached.stop(signal.SIGKILL)
        time.sleep(2.0)
        memcached.start()
        time.sleep(1.5)
    finally:
        outcomes = load.stop()
    assert {o.status for o in outcomes} == {200}, {o.status for o in outcomes}
    assert sum(o.doc["cached"] for o in outcomes) > 0
    metrics = request(stack.settings.edge.bind, "GET", "/metrics").body.decode()
    assert 'falcon_cache_requests_total{model="mlp",result="error"}' in metrics or \
        'result="bypass"' in metrics
    assert f'falcon_breaker_state{{breaker="memcached:{memcached.addr}"}}' in metrics


def test_losing_one_server_of_a_pool_loses_only_its_keys_and_it_rejoins(make_stack, tmp_path):
    """Three memcached servers: kill -9 one, and exactly the keys rendezvous
    hashing puts on it become misses (all answers 200, the other keys still
    hit); restarted on its port, it takes its keys back without an edge restart."""
    pool = [Memcached().start() for _ in range(3)]
    try:
        repo = tmp_path / "repo"
        small_mlp(repo, "1", seed=1)
        stack = make_stack(repo=repo, FALCON_CACHE_SERVERS=",".join(m.addr for m in pool),
                           FALCON_EDGE_WORKERS="1")
        addr = stack.settings.haproxy.bind
        rows = [r[None, :] for r in np.random.default_rng(2).normal(size=(30, WIDTH))
                .astype(np.float32)]
        names = [m.addr for m in pool]
        content = DaemonClient(stack.settings.daemon_socket).call(
            ops.Metadata(model="mlp", version="1"), time.monotonic() + 5).content_digest
        home = [rendezvous(cache_key("mlp", content, input_digest(canonical([("input", r)])[0])),
                           names) for r in rows]
        victim = pool[0]
        on_victim = [h == victim.addr for h in home]
        assert 0 < sum(on_victim) < len(rows)  # the test means something: keys on every side
        assert not any(predict(addr, r)["cached"] for r in rows)   # fill
        assert all(predict(addr, r)["cached"] for r in rows)

        victim.stop(signal.SIGKILL)
        after_kill = [predict(addr, r)["cached"] for r in rows]
        assert after_kill == [not v for v in on_victim]

        victim.start()  # empty, same port
        time.sleep(2.5)  # the server's breaker trial (reset timeout 2 s)
        for _ in range(3):  # the trial call, then misses that fill it
            for r, v in zip(rows, on_victim, strict=True):
                if v:
                    predict(addr, r)
        assert all(predict(addr, r)["cached"] for r in rows)
    finally:
        for m in pool:
            m.stop()


# -- issue 15 item 9: keyed by content, values authenticated -----------------------------

def memcached_keys(addr: str) -> list[str]:
    """Every key memcached holds (``lru_crawler metadump all``)."""
    host, _, port = addr.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"lru_crawler metadump all\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            chunk = sock.recv(65536)
            assert chunk, data[-200:]
            data += chunk
    return [urllib.parse.unquote(line.split()[0].removeprefix(b"key=").decode())
            for line in data.splitlines() if line.startswith(b"key=")]


def test_a_version_reloaded_from_a_replaced_file_never_gets_the_old_answer(make_stack, memcached,
                                                                           tmp_path):
    """Unload version 2, replace its file, load version 2: the same input is
    answered by the new file's model, not from the cache (keyed by content digest)."""
    repo = tmp_path / "repo"
    small_mlp(repo, "1", seed=1)
    small_mlp(repo, "2", seed=2)
    stack = make_stack(repo=repo, FALCON_CACHE_SERVERS=memcached.addr)
    addr = stack.settings.haproxy.bind
    rows = np.random.default_rng(5).normal(size=(2, WIDTH)).astype(np.float32)
    first, second = predict(addr, rows), predict(addr, rows)
    assert (first["version"], second["version"], second["cached"]) == ("2", "2", True)

    def manage(op: str) -> None:
        ans = post_json(addr, f"/v2/repository/models/mlp/{op}", {"parameters": {"version": "2"}})
        assert ans.status == 200, ans.body
    manage("unload")
    replaced = small_mlp(repo, "2", seed=3)
    manage("load")
    time.sleep(0.6)  # the edge's metadata TTL in tests
    third = predict(addr, rows)
    assert third["version"] == "2" and third["cached"] is False
    np.testing.assert_allclose(probs(third), reference(replaced, rows), rtol=1e-5)
    assert not np.allclose(probs(third), probs(first))


def test_a_value_planted_in_memcached_is_not_served(make_stack, memcached, tmp_path):
    """Whoever can write to memcached replaces a cached answer (a valid encoding,
    other probabilities): it is not served (nor audited as served)."""
    repo = tmp_path / "repo"
    small_mlp(repo, "1", seed=1)
    stack = make_stack(repo=repo, FALCON_CACHE_SERVERS=memcached.addr)
    addr = stack.settings.haproxy.bind
    rows = np.random.default_rng(6).normal(size=(1, WIDTH)).astype(np.float32)
    honest = predict(addr, rows)
    assert predict(addr, rows)["cached"] is True
    [key] = memcached_keys(memcached.addr)
    host, _, port = memcached.addr.rpartition(":")
    client = Client((host, int(port)))
    value = client.get(key)
    planted = [("label", np.array([3], np.int64)),
               ("probabilities", np.array([[0.0, 0.0, 0.0, 1.0]], np.float32))]
    body = msgpack.packb([messages.encode_tensor(n, a) for n, a in planted], use_bin_type=True)
    for forged in (body, value[:32] + body, b"\0" * 32 + body):
        assert client.set(key, forged, noreply=False)
        answer = predict(addr, rows)
        assert answer["cached"] is False and answer["predictions"] == honest["predictions"], answer
    client.close()
    # counted as such (and logged once per worker, not at every lookup)
    metrics = request(stack.settings.edge.bind, "GET", "/metrics").body.decode()
    assert 'falcon_cache_requests_total{model="mlp",result="unverified"} 3.0' in metrics, metrics
