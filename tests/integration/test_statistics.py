"""The V2 statistics extension through HAProxy, read by the stock tritonclient.

Counts are exact for a fresh stack: inference_count = rows answered by the daemon,
success.count = requests, execution_count = model runs (between 1 and the requests,
since concurrent requests may share a run); cache hits never reach the daemon."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.httpx_lite import post_json, request
from tests.stacks import create_key

ROOT = Path(__file__).resolve().parents[2]
DIGITS = np.load(ROOT / "tests" / "data" / "digits_test.npz")


def test_statistics_count_every_request_row_and_run(make_stack):
    stack = make_stack()
    addr = stack.settings.haproxy.bind
    client = triton.InferenceServerClient(addr)
    before = client.get_inference_statistics("digits")["model_stats"]
    assert [(s["name"], s["version"], s["inference_count"], s["execution_count"])
            for s in before] == [("digits", "1", 0, 0)]

    rows = [1, 3, 2, 5] * 6  # 24 requests, 66 rows, some at once (they may share runs)
    started_ms = time.time() * 1000

    def send(i: int) -> int:
        n = rows[i]
        body = {"instances": DIGITS["X"][i:i + n].tolist()}
        return post_json(addr, "/v1/models/digits/predict", body).status

    with ThreadPoolExecutor(6) as pool:
        assert set(pool.map(send, range(len(rows)))) == {200}

    [stats] = client.get_inference_statistics("digits", "1")["model_stats"]
    inf = stats["inference_stats"]
    assert stats["inference_count"] == sum(rows)
    assert inf["success"]["count"] == len(rows) and inf["success"]["ns"] > 0
    for part in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert inf[part]["count"] == len(rows) and inf[part]["ns"] > 0, (part, inf)
    assert inf["fail"] == {"count": 0, "ns": 0}
    assert 1 <= stats["execution_count"] <= len(rows)
    assert started_ms - 1000 <= stats["last_inference"] <= time.time() * 1000 + 1000

    every = client.get_inference_statistics()["model_stats"]  # GET /v2/models/stats
    assert {(s["name"], s["version"]) for s in every} >= {("digits", "1")}
    assert next(s for s in every if s["name"] == "digits") == stats
    assert "statistics" in client.get_server_metadata()["extensions"]


def test_statistics_of_an_unknown_model_or_version_is_404(make_stack):
    stack = make_stack()
    addr = stack.settings.haproxy.bind
    assert request(addr, "GET", "/v2/models/nope/stats").status == 404
    assert request(addr, "GET", "/v2/models/digits/versions/9/stats").status == 404
    with pytest.raises(InferenceServerException):
        triton.InferenceServerClient(addr).get_inference_statistics("nope")


def test_a_key_limited_to_some_models_sees_only_their_statistics(make_stack):
    """The all-models route has no {model} in its path: the key's model list filters
    the answer (a tenant must not learn the other models, their versions and traffic)."""
    stack = make_stack(FALCON_AUTH_ENABLED="true")
    addr = stack.settings.haproxy.bind
    only_digits = create_key(stack, "tenant", "--scope", "predict", "--model", "digits")
    every = create_key(stack, "ops", "--scope", "predict")

    def names(key: str, path: str = "/v2/models/stats") -> tuple[int, set[str]]:
        ans = request(addr, "GET", path, headers={"Authorization": f"Bearer {key}"})
        return ans.status, {s["name"] for s in ans.json().get("model_stats", [])}

    deadline = time.monotonic() + 10  # the edge reloads the keys file within auth.reload_s
    while names(every)[0] == 401 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert names(every) == (200, {"digits", "multi"})
    assert names(only_digits) == (200, {"digits"})
    assert names(only_digits, "/v2/models/multi/stats")[0] == 403
