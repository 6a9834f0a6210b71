"""API keys through the whole stack (HAProxy -> gunicorn workers), keys made
and revoked with the real ``falconctl keys``: each refusal's status and
message, the open endpoints, the key id in the audit trail, and a revocation
reaching every worker within two seconds without a restart."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from prometheus_client.multiprocess import MultiProcessCollector

from apikeys import parse
from tests.httpx_lite import Answer, post_json, request
from tests.stacks import create_key, falconctl, wal_records

ROW = [0.0] * 64
PREDICT = "/v1/models/digits/predict"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def predict(addr: str, headers: dict[str, str], path: str = PREDICT) -> Answer:
    return post_json(addr, path, {"instances": [ROW]}, headers=headers)


@pytest.fixture(scope="module")
def keyed(module_stacks):
    """A stack with auth on and keys of every kind, made before it starts."""
    stack = module_stacks(start=False, FALCON_AUTH_ENABLED="true")
    keys = {"pred": create_key(stack, "pred"),
            "adm": create_key(stack, "adm", "--scope", "admin"),
            "digits": create_key(stack, "digits-only", "--model", "digits"),
            "gone": create_key(stack, "gone")}
    falconctl(stack, "keys", "revoke", parse(keys["gone"]) or "")
    stack.start()
    return stack, keys


@pytest.mark.parametrize("who, method, path, status, words", [
    (None, "POST", PREDICT, 401, ["missing API key", "Authorization: Bearer"]),
    ("malformed", "POST", PREDICT, 401, ["malformed API key"]),
    ("wrong", "POST", PREDICT, 401, ["invalid API key"]),
    ("gone", "POST", PREDICT, 401, ["revoked"]),
    ("adm", "POST", PREDICT, 403, ["lacks the 'predict' scope"]),
    ("pred", "POST", "/v2/repository/index", 403, ["lacks the 'admin' scope"]),
    ("digits", "POST", "/v2/models/multi/infer", 403, ["may not use model 'multi'"]),
    ("digits", "GET", "/v2/models/multi", 403, ["may not use model 'multi'"]),
    (None, "GET", "/v2/models/digits", 401, ["missing API key"]),
])
def test_refusals_have_their_status_and_a_clear_message(keyed, who, method, path, status, words):
    stack, keys = keyed
    key = {None: None, "malformed": "not-a-key",
           "wrong": keys["pred"][:16] + "A" * 43}.get(who, keys.get(who or ""))
    ans = request(stack.settings.haproxy.bind, method, path, b'{"inputs": []}',
                  {"Content-Type": "application/json", **(bearer(key) if key else {})})
    assert ans.status == status, (ans.status, ans.body)
    message = ans.json()["error"]
    for word in words:
        assert word in message, message
    if status == 401:
        assert ans.headers["www-authenticate"].startswith("Bearer")
    if key:
        assert key not in message


def test_open_endpoints_need_no_key(keyed):
    addr = keyed[0].settings.haproxy.bind
    for path in ("/v2/health/live", "/v2/health/ready", "/openapi.json", "/v2"):
        assert request(addr, "GET", path).status == 200, path
    # /metrics needs no key either, but only on the edge itself (HAProxy: 404)
    assert request(keyed[0].settings.edge.bind, "GET", "/metrics").status == 200


def test_valid_keys_on_both_faces_and_the_admin_api(keyed):
    stack, keys = keyed
    addr = stack.settings.haproxy.bind
    assert predict(addr, bearer(keys["pred"])).status == 200
    assert predict(addr, {"X-API-Key": keys["digits"]}).status == 200
    client = triton.InferenceServerClient(addr)
    inp = triton.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 64), np.float32))
    result = client.infer("digits", [inp], headers=bearer(keys["pred"]))
    assert result.as_numpy("label").shape == (1,)
    assert client.get_model_metadata("digits", headers={"X-API-Key": keys["digits"]})
    ans = request(addr, "POST", "/v2/repository/index", b"{}", bearer(keys["adm"]))
    assert ans.status == 200 and {m["name"] for m in ans.json()} >= {"digits", "multi"}


def test_audit_records_carry_the_key_id_never_the_key(keyed):
    stack, keys = keyed
    addr = stack.settings.haproxy.bind
    rids = {predict(addr, bearer(keys["digits"])).json()["request_id"] for _ in range(5)}
    by_id = {r.request_id: r for r in wal_records(stack)}
    assert {by_id[rid].api_key_id for rid in rids} == {parse(keys["digits"])}
    wal = b"".join(p.read_bytes() for p in Path(stack.settings.wal_dir).rglob("*") if p.is_file())
    assert keys["digits"].encode() not in wal


def test_a_key_created_while_serving_works_within_two_seconds(keyed):
    stack, _ = keyed
    key = create_key(stack, "late")
    deadline = time.monotonic() + 2.0
    while predict(stack.settings.haproxy.bind, bearer(key)).status != 200:
        assert time.monotonic() < deadline, "a new key was not accepted within 2 s"
        time.sleep(0.05)


def worker_pids(stack) -> list[int]:
    arbiter = stack.procs["edge"].popen.pid
    return [int(p) for task in Path(f"/proc/{arbiter}/task").glob("*/children")
            for p in task.read_text().split()]


def revoked_refusals(stack, pid: int) -> float:
    """This worker's own ``falcon_auth_failures_total{reason="revoked"}``."""
    path = Path(stack.settings.paths.run_dir) / "metrics" / f"counter_{pid}.db"
    if not path.exists():
        return 0.0
    return sum(s.value for m in MultiProcessCollector.merge([str(path)]) for s in m.samples
               if s.name == "falcon_auth_failures_total" and s.labels == {"reason": "revoked"})


def test_revocation_reaches_every_worker_within_two_seconds(make_stack):
    stack = make_stack(start=False, FALCON_AUTH_ENABLED="true")
    key = create_key(stack, "soon-gone")
    stack.start()
    addr = stack.settings.haproxy.bind
    with ThreadPoolExecutor(8) as pool:
        def burst(n: int) -> list[tuple[float, Answer]]:
            return list(pool.map(lambda _: (time.monotonic(), predict(addr, bearer(key))),
                                 range(n)))
        assert all(a.status == 200 for _, a in burst(40))
        falconctl(stack, "keys", "revoke", parse(key) or "")
        revoked = time.monotonic()
        seen = []
        while time.monotonic() < revoked + 2.0:
            seen += burst(8)
        final = burst(24)
    # every request sent once a worker must have re-checked the file is refused
    late = [a for t, a in seen + final if t > revoked + 1.5]
    assert late and all(a.status == 401 and "revoked" in a.json()["error"] for a in late)
    pids = worker_pids(stack)
    assert len(pids) == 2 and all(revoked_refusals(stack, pid) > 0 for pid in pids), \
        {pid: revoked_refusals(stack, pid) for pid in pids}


def test_auth_off_is_logged_loudly_by_every_worker(make_stack):
    stack = make_stack()  # the test stacks' default: FALCON_AUTH_ENABLED=false
    assert predict(stack.settings.haproxy.bind, {}).status == 200
    deadline = time.monotonic() + 10  # one worker serving is enough to be up: wait for both
    while (log := (stack.log_dir / "edge.log").read_text()).count("Booting worker") < 2:
        assert time.monotonic() < deadline, log
        time.sleep(0.1)
    assert log.count("AUTH IS DISABLED") >= 1 + 2, log  # the arbiter, then each worker
