"""One scrape of the edge's /metrics shows the edge workers, the daemon and the
shipper of the host."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from tests.httpx_lite import post_json, request

ROOT = Path(__file__).resolve().parents[2]
DIGITS = np.load(ROOT / "tests" / "data" / "digits_test.npz")


def scrape(addr: str) -> dict[str, list]:
    ans = request(addr, "GET", "/metrics")
    assert ans.status == 200 and ans.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(ans.body.decode())}


def value(samples: list, name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name
               and all(s.labels.get(k) == v for k, v in labels.items()))


def test_one_scrape_shows_edge_and_shipper(make_stack, pg_dsn):
    stack = make_stack(audit=True, FALCON_AUDIT_DSN=pg_dsn, FALCON_EDGE_WORKERS="2")
    addr = stack.settings.haproxy.bind
    for i in range(30):
        assert post_json(addr, "/v1/models/digits/predict",
                         {"instances": DIGITS["X"][i:i + 1].tolist()}).status == 200
    assert post_json(addr, "/v1/models/digits/predict", {"instances": [[1]]}).status == 400
    assert post_json(addr, "/v1/models/nope/predict", {"instances": [[1]]}).status == 404
    time.sleep(1.0)  # a shipper pass
    families = scrape(stack.settings.edge.bind)  # Prometheus scrapes the edge directly
    requests = families["falcon_requests"]
    assert value(requests, "falcon_requests_total", model="digits", version="1", face="v1",
                 status="200", cached="false") == 30
    assert value(requests, "falcon_requests_total", status="400") == 1
    assert value(requests, "falcon_requests_total", status="404", model="") == 1
    latency = families["falcon_request_duration_seconds"]
    assert value(latency, "falcon_request_duration_seconds_count", model="digits") == 30
    assert value(families["falcon_wal_records"], "falcon_wal_records_total") == 30
    assert value(families["falcon_shipped_records"], "falcon_shipped_records_total") == 30
    assert "falcon_wal_pending_bytes" in families and "falcon_ship_lag_seconds" in families
    assert value(families["falcon_ship_postgres_up"], "falcon_ship_postgres_up") == 1


def test_daemon_metrics_reach_the_same_scrape(make_stack):
    stack = make_stack()
    addr = stack.settings.haproxy.bind
    for i in range(10):
        assert post_json(addr, "/v1/models/digits/predict",
                         {"instances": DIGITS["X"][i:i + 2].tolist()}).status == 200
    families = scrape(stack.settings.edge.bind)  # Prometheus scrapes the edge directly
    labels = {"model": "digits", "version": "1"}
    assert value(families["falcon_batch_rows"], "falcon_batch_rows_count", **labels) == 10
    assert value(families["falcon_batch_rows"], "falcon_batch_rows_sum", **labels) >= 20
    assert value(families["falcon_inference_compute_seconds"],
                 "falcon_inference_compute_seconds_count", **labels) == 10
    assert value(families["falcon_inference_queue_seconds"],
                 "falcon_inference_queue_seconds_count", **labels) == 10
    assert value(families["falcon_inference_requests"], "falcon_inference_requests_total",
                 outcome="ok", **labels) == 10
    assert value(families["falcon_shm_bytes"], "falcon_shm_bytes", **labels) > 1000
