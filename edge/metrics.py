"""The edge's metrics, declared once with fixed label sets, and ``GET /metrics``.

In multiprocess mode (``service.metrics.enable``) the endpoint merges every
process writing to the host's metrics directory: all gunicorn workers, the
daemon and the shipper. Without it (a single process, tests) it serves the
process's own registry.

It answers in the OpenMetrics format when the scraper asks for it (``Accept:
application/openmetrics-text``, as Prometheus does), else in Prometheus text. Only
OpenMetrics shows exemplars: the request duration of a sampled request (and the
daemon's compute time of its run) carries its trace id (``telemetry.exemplars``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import falcon
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder

from telemetry import sampled_trace_id
from telemetry.exemplars import Exemplars, WithExemplars

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter("falcon_requests_total", "Inference requests answered, by outcome.",
                   ["model", "version", "face", "status", "cached"])
LATENCY = Histogram("falcon_request_duration_seconds",
                    "End-to-end time in the edge, parse to render.", ["model", "face"],
                    buckets=LATENCY_BUCKETS)
WAL_RECORDS = Counter("falcon_wal_records_total", "Audit records appended to the WAL.")
WAL_BYTES = Counter("falcon_wal_appended_bytes_total", "Audit bytes appended to the WAL.")
AUTH_FAILURES = Counter("falcon_auth_failures_total",  # edge/auth.py; reason: apikeys.errors
                        "Requests refused by the edge's API key check, by reason.", ["reason"])
CACHE_LOOKUPS = Counter("falcon_cache_requests_total", "Prediction cache lookups by result.",
                        ["model", "result"])  # edge/cache.py; hit|miss|error|bypass|unverified
BREAKER_STATE = Gauge("falcon_breaker_state",  # edge/breaker.py
                      "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
                      ["breaker"], multiprocess_mode="livemax")
EXEMPLARS = Exemplars()  # this worker's latest trace id per LATENCY bucket


class RequestMetrics:
    """Falcon middleware: one sample per inference request, whatever its
    outcome (errors included), from what the resource left in ``req.context``."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         req_succeeded: bool) -> None:
        face = req.context.get("face")
        if face is None:
            return
        model = req.context.get("model", "")
        REQUESTS.labels(model, req.context.get("version", ""), face, str(resp.status)[:3],
                        "true" if req.context.get("cached") else "false").inc()
        EXEMPLARS.observe(LATENCY, (str(model), str(face)), time.perf_counter() - req.context.started,
                          sampled_trace_id(req.context.get("span")))


def registry() -> CollectorRegistry:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        merged = CollectorRegistry()
        merged.register(WithExemplars(multiprocess.MultiProcessCollector(None, path), path))
        return merged
    return REGISTRY


class Metrics:
    traced = False  # no span (edge.tracing)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        encode, resp.content_type = choose_encoder(req.get_header("Accept") or "")
        resp.data = encode(registry())
