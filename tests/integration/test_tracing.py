"""Tracing through the real stack: HAProxy -> edge workers -> daemon, spans exported
over OTLP/HTTP to a receiver in the test (tests/otlp_receiver.py), and exemplars in
a real OpenMetrics scrape of /metrics."""

from __future__ import annotations

import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from falconctl.stack import free_port
from tests.httpx_lite import post_json, request
from tests.otlp_receiver import OtlpReceiver, Span

GRPC_INFER = "inference.GRPCInferenceService/ModelInfer"

ROOT = Path(__file__).resolve().parents[2]
DIGITS = np.load(ROOT / "tests" / "data" / "digits_test.npz")
PREDICT = "/v1/models/digits/predict"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def traceparent(sampled: bool) -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def predict(addr: str, i: int, headers: dict[str, str] | None = None, rows: int = 1) -> int:
    ans = post_json(addr, PREDICT, {"instances": DIGITS["X"][i:i + rows].tolist()}, headers)
    assert ans.status == 200, ans.body
    return ans.status


def tracing_env(endpoint: str, ratio: str = "1.0", **more: str) -> dict[str, str]:
    return {"FALCON_TRACING_ENDPOINT": endpoint, "FALCON_TRACING_SAMPLE_RATIO": ratio, **more}


def one(spans: list[Span], **want: str) -> Span:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in want.items())]
    assert len(found) == 1, (want, [(s.service, s.name, s.parent_id) for s in spans])
    return found[0]


def metric(addr: str, name: str, accept: str = OPENMETRICS) -> list:
    ans = request(addr, "GET", "/metrics", headers={"Accept": accept})
    assert ans.status == 200
    assert ans.headers["content-type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in text_string_to_metric_families(ans.body.decode())}
    return families[name].samples if name in families else []


@pytest.fixture(scope="module")
def receiver():
    with OtlpReceiver() as rx:
        yield rx


@pytest.fixture(scope="module")
def traced(module_stacks, receiver):
    """A stack tracing to ``receiver``; new traces are never sampled (ratio 0), so
    only requests whose traceparent says sampled are traced."""
    return module_stacks(**tracing_env(receiver.url, "0"))


def test_a_sampled_request_is_one_trace_of_edge_and_daemon_spans(traced, receiver):
    trace_id, client_span, header = traceparent(sampled=True)
    ans = post_json(traced.settings.haproxy.bind, PREDICT,
                    {"instances": DIGITS["X"][:3].tolist()}, {"traceparent": header})
    assert ans.status == 200
    echoed = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01", ans.headers["traceparent"])
    assert echoed and echoed.group(1) == trace_id

    def complete(spans: list[Span]) -> bool:
        names = {s.name for s in spans if s.trace_id == trace_id}
        return {"daemon queue", "daemon batch", f"POST {PREDICT.replace('digits', '{model}')}",
                "wal append"} <= names

    spans = [s for s in receiver.wait_for(complete) if s.trace_id == trace_id]
    server = one(spans, kind="SERVER")
    assert server.service == "falcon-edge" and server.parent_id == client_span
    # exported by a worker, whose exporter started after the fork (not the arbiter's)
    pid = int(str(server.resource["service.instance.id"]).rpartition("-")[2])
    assert pid != traced.procs["edge"].popen.pid
    ppid = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1]
    assert int(ppid) == traced.procs["edge"].popen.pid  # a worker of this edge's arbiter
    assert server.span_id == echoed.group(2)  # the echoed traceparent names the request span
    attrs = server.attributes
    assert attrs["http.request.method"] == "POST"
    assert attrs["http.route"] == "/v1/models/{model}/predict"
    assert attrs["url.path"] == PREDICT and attrs["http.response.status_code"] == 200
    assert attrs["server.address"] and attrs["falcon.model"] == "digits"
    assert attrs["falcon.model.version"] == "1" and attrs["falcon.cached"] is False
    assert attrs["falcon.rows"] == 3 and attrs["falcon.request_id"] == ans.headers["x-request-id"]
    for name in ("validate", "daemon infer", "wal append"):
        child = one(spans, name=name)
        assert child.parent_id == server.span_id and child.service == "falcon-edge", name
        assert server.start_ns <= child.start_ns <= child.end_ns <= server.end_ns, name
    call = one(spans, name="daemon infer")
    assert call.kind == "CLIENT" and call.attributes["falcon.daemon.batch_rows"] >= 3
    queue = one(spans, name="daemon queue")
    assert queue.service == "falcon-daemon" and queue.parent_id == call.span_id
    batch = one(spans, name="daemon batch")
    assert batch.service == "falcon-daemon" and batch.parent_id == call.span_id
    assert (trace_id, call.span_id) in batch.links
    assert batch.attributes["falcon.batch.rows"] >= 3
    assert batch.attributes["falcon.model"] == "digits"
    assert queue.end_ns == batch.start_ns  # the queue wait ends when the run starts
    assert queue.start_ns < queue.end_ns < batch.end_ns


def test_a_batch_span_links_every_request_it_served(traced, receiver):
    headers = [traceparent(sampled=True) for _ in range(24)]
    with ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda h: predict(traced.settings.haproxy.bind, h[0],
                                        {"traceparent": h[1][2]}), enumerate(headers)))
    ours = {h[0] for h in headers}

    def complete(spans: list[Span]) -> bool:  # (edge and daemon export on their own)
        calls = {s.span_id for s in spans if s.name == "daemon infer" and s.trace_id in ours}
        linked = {span_id for s in spans if s.name == "daemon batch" for _, span_id in s.links}
        return len(calls) == len(ours) and calls <= linked

    spans = receiver.wait_for(complete)
    calls = {s.span_id: s for s in spans if s.name == "daemon infer" and s.trace_id in ours}
    assert len(calls) == len(ours)
    batches = [s for s in spans if s.name == "daemon batch" and s.trace_id in ours]
    linked = [span_id for b in batches for _, span_id in b.links]
    assert sorted(linked) == sorted(calls), "each request linked by exactly one run"
    for b in batches:  # a run's span is in its first request's trace, and links them all
        assert b.attributes["falcon.batch.requests"] == len(b.links)
        assert b.parent_id == b.links[0][1] and b.trace_id == b.links[0][0]
        assert b.attributes["falcon.batch.rows"] >= len(b.links)
    for call in calls.values():  # each request's own queue span, whatever run served it
        queue = one(spans, name="daemon queue", parent_id=call.span_id)
        assert queue.trace_id == call.trace_id


def test_an_unsampled_request_exports_nothing(traced, receiver):
    trace_id, _, header = traceparent(sampled=False)
    ans = post_json(traced.settings.haproxy.bind, PREDICT,
                    {"instances": DIGITS["X"][:1].tolist()}, {"traceparent": header})
    assert ans.status == 200
    assert ans.headers["traceparent"].startswith(f"00-{trace_id}-")
    assert ans.headers["traceparent"].endswith("-00")  # not sampled, as the caller said
    for i in range(5):  # no traceparent at all: the ratio (0) decides
        predict(traced.settings.haproxy.bind, i)
    # a sampled request after them: once its spans are in, theirs would be too
    marker, _, sampled = traceparent(sampled=True)
    predict(traced.settings.haproxy.bind, 0, {"traceparent": sampled})
    spans = receiver.wait_for(lambda spans: any(s.trace_id == marker and s.name == "daemon batch"
                                                for s in spans))
    time.sleep(1.5)  # and a schedule delay (0.5 s) or two more
    spans = receiver.snapshot()
    assert not [s for s in spans if s.trace_id == trace_id]
    # every trace the receiver holds was asked for by a sampled traceparent of this module
    servers = [s for s in spans if s.kind == "SERVER"]
    assert servers and all(s.parent_id for s in servers), "a new trace was sampled at ratio 0"
    roots = [s for s in spans if s.service == "falcon-daemon" and not s.parent_id]
    assert not roots, "the daemon made spans of its own"


def test_the_exemplar_of_a_sampled_request_is_in_a_real_scrape(traced, receiver):
    trace_id, _, header = traceparent(sampled=True)
    predict(traced.settings.haproxy.bind, 7, {"traceparent": header})
    edge = traced.settings.edge.bind  # Prometheus scrapes the edge directly
    deadline = time.monotonic() + 10
    while True:  # a worker shares its exemplars at most every 0.2 s
        latency = [s for s in metric(edge, "falcon_request_duration_seconds")
                   if s.exemplar is not None and s.exemplar.labels["trace_id"] == trace_id]
        compute = [s for s in metric(edge, "falcon_inference_compute_seconds")
                   if s.exemplar is not None and s.exemplar.labels["trace_id"] == trace_id]
        if (latency and compute) or time.monotonic() > deadline:
            break
        predict(traced.settings.haproxy.bind, 8, {"traceparent": traceparent(True)[2]})
        time.sleep(0.3)
    assert latency and compute, "no exemplar with the sampled trace id"
    assert latency[0].name == "falcon_request_duration_seconds_bucket"
    assert latency[0].labels["model"] == "digits" and latency[0].exemplar.value > 0
    assert compute[0].labels["version"] == "1"
    plain = request(edge, "GET", "/metrics")  # Prometheus text: no exemplars
    assert plain.headers["content-type"].startswith("text/plain")
    assert trace_id not in plain.body.decode()


def test_a_collector_that_is_down_fails_no_request_and_drops_are_counted(make_stack):
    nowhere = f"http://127.0.0.1:{free_port()}/v1/traces"  # nothing listens there
    stack = make_stack(**tracing_env(nowhere, "1.0", FALCON_TRACING_MAX_QUEUE_SPANS="32",
                                     FALCON_TRACING_EXPORT_TIMEOUT_MS="200"))
    addr = stack.settings.haproxy.bind
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda i: predict(addr, i % 300), range(800)))
    took = time.monotonic() - started
    assert statuses == [200] * 800
    deadline = time.monotonic() + 10
    while True:  # the exporters' attempts end within their timeout
        dropped = {s.labels["reason"]: s.value
                   for s in metric(stack.settings.edge.bind, "falcon_trace_spans_dropped")
                   if s.name == "falcon_trace_spans_dropped_total"}
        if dropped.get("export_failed", 0) > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert dropped.get("export_failed", 0) > 0, dropped
    assert dropped.get("queue_full", 0) > 0, dropped  # 800 requests x 6 spans in 32-span queues
    assert took < 60, took


def test_a_collector_stopped_under_load_fails_no_request(make_stack):
    rx = OtlpReceiver()
    stack = make_stack(**tracing_env(rx.url, "1.0", FALCON_TRACING_EXPORT_TIMEOUT_MS="300"))
    addr = stack.settings.haproxy.bind
    with ThreadPoolExecutor(8) as pool:
        first = pool.map(lambda i: predict(addr, i % 300), range(200))
        rx.wait_for(lambda spans: len(spans) > 0)
        rx.stop()  # the collector goes away while requests keep coming
        rest = pool.map(lambda i: predict(addr, i % 300), range(400))
        statuses = list(first) + list(rest)
    assert statuses == [200] * 600
    deadline = time.monotonic() + 10
    while True:
        failed = sum(s.value for s in metric(stack.settings.edge.bind, "falcon_trace_spans_dropped")
                     if s.labels.get("reason") == "export_failed")
        if failed > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert failed > 0


def test_a_grpc_call_through_haproxy_is_one_trace_with_the_daemons_spans(traced, receiver):
    import tritonclient.grpc as tg

    from tests.stacks import wait_grpc_ready

    traced.start_grpc()
    wait_grpc_ready(traced.settings.grpc.public_bind)
    trace_id, client_span, header = traceparent(sampled=True)
    client = tg.InferenceServerClient(traced.settings.grpc.public_bind)
    x = DIGITS["X"][:2].astype(np.float32)
    inp = tg.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client.infer("digits", [inp], headers={"traceparent": header})

    def complete(spans: list[Span]) -> bool:
        return {GRPC_INFER, "daemon infer", "daemon queue", "daemon batch"} <= {
            s.name for s in spans if s.trace_id == trace_id}

    spans = [s for s in receiver.wait_for(complete) if s.trace_id == trace_id]
    server = one(spans, name=GRPC_INFER)
    assert server.service == "falcon-grpc" and server.kind == "SERVER"
    assert server.parent_id == client_span
    assert server.attributes["rpc.system"] == "grpc" and server.attributes["rpc.method"] \
        == "ModelInfer" and server.attributes["rpc.grpc.status_code"] == 0
    call = one(spans, name="daemon infer")
    assert call.parent_id == server.span_id
    assert one(spans, name="daemon queue").parent_id == call.span_id

