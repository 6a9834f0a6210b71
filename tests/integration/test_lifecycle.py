"""Model versions while serving: load a new version under load, split traffic,
roll back in one call, refuse a corrupt version — no restart, no failed request."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from audit.record import AuditRecord
from audit.wal import START, StreamReader, list_streams
from tests.httpx_lite import post_json, request
from tests.loadgen import LoadGen
from tests.modelfactory import write_mlp_model

WIDTH = 16
ROW = [[0.25] * WIDTH]


def mlp(repo: Path, version: str) -> Path:
    return write_mlp_model(repo, "mlp", input_dim=WIDTH, hidden=32, layers=2, classes=4,
                           seed=int(version), version=version)


def ask(addr: str, key: str | None = None, version: str | None = None) -> tuple[int, str]:
    path = f"/v1/models/mlp/versions/{version}/predict" if version else "/v1/models/mlp/predict"
    ans = post_json(addr, path, {"instances": ROW},
                    headers={"X-Routing-Key": key} if key else None)
    return ans.status, ans.json().get("version", "") if ans.status == 200 else ans.body.decode()


def admin(addr: str, method: str, path: str, doc: dict | None = None):
    return request(addr, method, path, json.dumps(doc) if doc is not None else None,
                   {"Content-Type": "application/json"}, timeout=120)


def test_load_split_and_rollback_under_load(make_stack, tmp_path):
    repo = tmp_path / "repo"
    mlp(repo, "1")
    stack = make_stack(repo=repo)
    addr = stack.settings.haproxy.bind
    pool = np.random.default_rng(0).normal(size=(32, WIDTH)).astype(np.float32)
    load = LoadGen(addr, pool, threads=3, model="mlp").start()
    try:
        mlp(repo, "2")  # a new version directory appears; nothing restarts
        ans = admin(addr, "POST", "/v2/repository/models/mlp/load", {"parameters": {"version": "2"}})
        assert ans.status == 200 and ans.json()["loaded"] == ["2"], ans.body
        time.sleep(1.0)  # every worker sees it within a second
        assert ask(addr)[1] == "2"  # no split yet: the highest version answers
        assert admin(addr, "PUT", "/v1/models/mlp/traffic", {"split": {"1": 100}}).status == 200
        ans = admin(addr, "PUT", "/v1/models/mlp/traffic", {"split": {"1": 80, "2": 20}})
        assert ans.status == 200 and ans.json()["new"] == {"1": 80, "2": 20}, ans.body
        time.sleep(1.0)  # every worker sees a split change within a second

        with ThreadPoolExecutor(8) as ex:
            answers = list(ex.map(lambda i: ask(addr, f"caller-{i}"), range(2000)))
        assert {status for status, _ in answers} == {200}
        share = sum(v == "2" for _, v in answers) / len(answers)
        assert abs(share - 0.20) <= 0.03, share
        for i in range(0, 2000, 100):  # a caller stays on its version
            assert {ask(addr, f"caller-{i}")[1] for _ in range(5)} == {answers[i][1]}

        ans = admin(addr, "POST", "/v1/models/mlp/rollback")
        assert ans.status == 200 and ans.json() == {"model": "mlp", "old": {"1": 80, "2": 20},
                                                    "new": {"1": 100}}
        time.sleep(1.0)  # within a second only version 1 answers again
        assert {ask(addr, f"caller-{i}")[1] for i in range(200)} == {"1"}
    finally:
        outcomes = load.stop()
    assert {o.status for o in outcomes} == {200}, {o.status for o in outcomes}
    assert len(outcomes) > 100

    wal = Path(stack.settings.wal_dir)
    events = [r for s in list_streams(wal) for _, p in StreamReader(wal, s).read(START, max_records=100000)
              if (r := AuditRecord.from_payload(p)).face == "admin"]
    events.sort(key=lambda e: e.ts)  # two workers, two streams
    # each change: its intent before it applies, its outcome after (issue 15 item 4)
    intents = [(e.extra["event"], e.extra["requested"]) for e in events
               if e.extra["phase"] == "intent"]
    assert intents == [("load", {"version": "2"}), ("split", {"split": {"1": 100}}),
                       ("split", {"split": {"1": 80, "2": 20}}), ("rollback", {})]
    assert [(e.extra["event"], e.extra.get("old"), e.extra.get("new"), e.extra.get("loaded"))
            for e in events if e.extra["phase"] == "done"] == [
        ("load", None, None, ["2"]),
        ("split", {}, {"1": 100}, None), ("split", {"1": 100}, {"1": 80, "2": 20}, None),
        ("rollback", {"1": 80, "2": 20}, {"1": 100}, None)]
    assert [e.extra["phase"] for e in events] == ["intent", "done"] * 4


def test_a_corrupt_version_is_refused_and_the_others_keep_serving(make_stack, tmp_path):
    repo = tmp_path / "repo"
    mlp(repo, "1")
    mlp(repo, "2")
    stack = make_stack(repo=repo)
    addr = stack.settings.haproxy.bind
    (repo / "mlp" / "3").mkdir()
    (repo / "mlp" / "3" / "model.onnx").write_bytes(b"\x08\x07 this is not a model" * 50)
    ans = admin(addr, "POST", "/v2/repository/models/mlp/load", {"parameters": {"version": "3"}})
    assert ans.status == 400 and "mlp/3 failed to load" in ans.json()["error"], ans.body
    index = admin(addr, "POST", "/v2/repository/index").json()
    states = {(m["name"], m["version"]): m["state"] for m in index}
    assert states[("mlp", "1")] == states[("mlp", "2")] == "READY"
    assert states[("mlp", "3")] == "UNAVAILABLE"
    assert ask(addr, version="1") == (200, "1") and ask(addr, version="2") == (200, "2")
    assert ask(addr)[1] == "2"
    bad = admin(addr, "PUT", "/v1/models/mlp/traffic", {"split": {"1": 50, "3": 50}})
    assert bad.status == 400 and "version '3' is not loaded" in bad.json()["error"]


def test_unload_and_falconctl_models(make_stack, tmp_path):
    repo = tmp_path / "repo"
    mlp(repo, "1")
    mlp(repo, "2")
    stack = make_stack(repo=repo)
    addr = stack.settings.haproxy.bind

    def ctl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "falconctl", "models", *args],
                              env=stack.env, capture_output=True, text=True, timeout=120)

    assert ctl("split", "mlp", "1=100").returncode == 0
    refused = ctl("unload", "mlp", "--version", "1")
    assert refused.returncode == 1 and "traffic split" in refused.stderr
    assert json.loads(ctl("rollback", "mlp").stdout)["new"] == {}
    out = ctl("unload", "mlp", "--version", "1")
    assert out.returncode == 0 and json.loads(out.stdout)["unloaded"] == ["1"], out.stderr
    time.sleep(0.6)
    assert ask(addr, version="1")[0] == 404
    assert ask(addr) == (200, "2")
    status = json.loads(ctl("status").stdout)
    assert {(m["version"], m["state"]) for m in status if m["name"] == "mlp"} == {
        ("1", "UNAVAILABLE"), ("2", "READY")}
    assert json.loads(ctl("load", "mlp", "--version", "1").stdout)["loaded"] == ["1"]
    assert ask(addr, version="1") == (200, "1")


def test_management_of_an_unknown_model_or_version_is_404_and_a_bad_request_400(make_stack):
    """README: an unknown model or version is 404 on every route, management included
    (it was 400: every refusal of the daemon's lifecycle was 'invalid input')."""
    stack = make_stack()
    addr = stack.settings.haproxy.bind
    for method, path, doc in (
            ("POST", "/v2/repository/models/nope/load", None),
            ("POST", "/v2/repository/models/digits/load", {"parameters": {"version": "9"}}),
            ("POST", "/v2/repository/models/nope/unload", None),
            ("POST", "/v2/repository/models/digits/unload", {"parameters": {"version": "9"}}),
            ("PUT", "/v1/models/nope/traffic", {"split": {"1": 100}}),
            ("POST", "/v1/models/nope/rollback", None),
            ("GET", "/v1/models/nope/traffic", None)):
        ans = admin(addr, method, path, doc)
        error = ans.json().get("error", "")
        assert ans.status == 404 and ("nope" in error or "9" in error), (method, path, ans.body)
    # a request that names a loaded model but cannot be done stays a 400
    assert admin(addr, "POST", "/v1/models/digits/rollback").status == 400
    assert admin(addr, "PUT", "/v1/models/digits/traffic", {"split": {"1": 0}}).status == 400


def test_falconctl_models_audits_the_kernels_actor_before_and_after(make_stack, tmp_path):
    """`falconctl models split|rollback` records its intent before the change and its
    outcome after, with the actor the daemon's socket sees (SO_PEERCRED), never
    ``$USER``/``$LOGNAME``, which anyone sets (issue 15 item 4)."""
    repo = tmp_path / "repo"
    mlp(repo, "1")
    stack = make_stack(repo=repo)
    env = {**stack.env, "USER": "mallory", "LOGNAME": "mallory"}
    out = subprocess.run([sys.executable, "-m", "falconctl", "models", "split", "mlp", "1=100"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    wal = Path(stack.settings.wal_dir)
    events = [r for s in list_streams(wal) for _, p in StreamReader(wal, s).read(START, max_records=100)
              if (r := AuditRecord.from_payload(p)).face == "admin"]
    me = pwd.getpwuid(os.getuid()).pw_name
    assert [(e.extra["event"], e.extra["phase"]) for e in events] == [
        ("split", "intent"), ("split", "done")]
    for e in events:
        assert e.api_key_id.startswith(f"falconctl:{me} (uid {os.getuid()}, pid "), e.api_key_id
    assert events[0].extra["requested"] == {"split": {"1": 100}}
    assert events[1].extra["new"] == {"1": 100}
