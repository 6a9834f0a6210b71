"""telemetry: traceparent parsing, sampling decisions, the daemon's run spans, the
counted export and the multiprocess exemplars (no servers; spans to an in-memory
exporter)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.openmetrics.exposition import generate_latest

from telemetry import Tracing, sampled_trace_id, trace_id_of, traceparent_of, w3c
from telemetry.exemplars import Exemplars, WithExemplars
from telemetry.export import CountingBatchSpanProcessor, CountingExporter
from telemetry.sampling import RatioSampler
from telemetry.tracing import UnsampledSpan

TID, SID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def test_traceparent_parsing():
    assert w3c.parse(f"00-{TID}-{SID}-01") == w3c.TraceParent(TID, SID, True)
    assert w3c.parse(f"00-{TID}-{SID}-00") == w3c.TraceParent(TID, SID, False)
    assert w3c.parse(f"01-{TID}-{SID}-03").sampled  # a later version: bit 0 still "sampled"
    for bad in (None, "", "garbage", f"ff-{TID}-{SID}-01", f"00-{'0' * 32}-{SID}-01",
                f"00-{TID}-{'0' * 16}-01", f"00-{TID.upper()}-{SID}-01", f"00-{TID}-{SID}-1"):
        assert w3c.parse(bad) is None, bad
    assert w3c.parse(f"00-{TID}-{SID}-01").header() == f"00-{TID}-{SID}-01"


def test_the_frame_trace_is_a_traceparent_or_an_older_edges_bare_id():
    assert w3c.parse_frame_trace(f"00-{TID}-{SID}-01") == w3c.TraceParent(TID, SID, True)
    assert w3c.parse_frame_trace(TID) == w3c.TraceParent(TID, None, False)  # never sampled
    for bad in (None, 7, "0" * 32, "nope", b"x"):
        assert w3c.parse_frame_trace(bad) is None


def test_off_makes_no_span_and_children_of_none_are_no_ops():
    off = Tracing()
    off.start()
    assert not off.enabled and off.tracer is None
    assert off.server_span("GET /", f"00-{TID}-{SID}-01") is None
    with off.child(None, "validate") as span:
        assert span is None
    assert sampled_trace_id(None) is None
    off.record_run("daemon batch", [(w3c.TraceParent(TID, SID, True), 1, 2)], 2, 3, {})


def tracing(ratio: float) -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    t = Tracing(exporter=exporter, sample_ratio=ratio, service="falcon-test")
    t.start()
    return t, exporter


def test_an_incoming_sampled_parent_is_honoured_whatever_the_ratio():
    t, exporter = tracing(0.0)
    span = t.server_span("POST /x", f"00-{TID}-{SID}-01", {"http.request.method": "POST"})
    with t.child(span, "validate") as child:
        assert child is not None
    assert traceparent_of(span).startswith(f"00-{TID}-") and traceparent_of(span).endswith("-01")
    assert sampled_trace_id(span) == TID
    span.end()
    t.flush()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["POST /x"].parent.span_id == int(SID, 16)
    assert spans["validate"].parent.span_id == spans["POST /x"].context.span_id
    assert spans["POST /x"].resource.attributes["service.name"] == "falcon-test"
    t.shutdown()


def test_an_unsampled_parent_or_a_zero_ratio_records_nothing_but_keeps_the_trace_id():
    t, exporter = tracing(1.0)
    span = t.server_span("POST /x", f"00-{TID}-{SID}-00")
    assert not span.is_recording() and trace_id_of(span) == TID
    assert traceparent_of(span).endswith("-00") and sampled_trace_id(span) is None
    with t.child(span, "validate") as child:
        assert child is None
    span.end()
    t0, exporter0 = tracing(0.0)
    root = t0.server_span("POST /x", None)
    assert not root.is_recording() and len(trace_id_of(root)) == 32
    root.end()
    t.flush()
    t0.flush()
    assert exporter.get_finished_spans() == () and exporter0.get_finished_spans() == ()
    t.shutdown()
    t0.shutdown()


def sdk_decides(ratio: float, parent: w3c.TraceParent | None, trace_id: int) -> bool:
    """What the SDK's ParentBased(TraceIdRatioBased(ratio)) decides for that parent/trace id."""
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    context = Context()
    if parent is not None and parent.span_id is not None:
        remote = trace.SpanContext(int(parent.trace_id, 16), int(parent.span_id, 16),
                                   is_remote=True,
                                   trace_flags=trace.TraceFlags(1 if parent.sampled else 0))
        context = trace.set_span_in_context(trace.NonRecordingSpan(remote), context)
    result = ParentBased(TraceIdRatioBased(ratio)).should_sample(context, trace_id, "x")
    return bool(result.decision.is_sampled())


def test_the_sampling_shortcut_decides_exactly_as_the_sdks_parent_based_ratio_sampler():
    import random

    rng = random.Random(18)
    bound_10 = round(0.1 * 2 ** 64)
    edges = [1, bound_10 - 1, bound_10, bound_10 + 1, 2 ** 64 - 1, 2 ** 64, 2 ** 128 - 1,
             (7 << 64) | (bound_10 - 1), (7 << 64) | bound_10]
    ids = edges + [rng.getrandbits(128) or 1 for _ in range(3000)]
    for ratio in (0.0, 0.1, 1.0):
        ours = RatioSampler(ratio)
        seen = set()
        for trace_id in ids:
            hex_id = format(trace_id, "032x")
            for parent in (None, w3c.TraceParent(hex_id, SID, True),
                           w3c.TraceParent(hex_id, SID, False), w3c.TraceParent(hex_id, None, False)):
                decided = ours.sampled(parent, trace_id)
                assert decided == sdk_decides(ratio, parent, trace_id), (ratio, parent, trace_id)
                seen.add((parent is None, decided))
        # roots both ways at 10 %, parents both ways at every ratio: each branch compared
        assert {(False, True), (False, False)} <= seen
        assert (ratio == 0.1) <= ({(True, True), (True, False)} <= seen)
        assert ours.root_sampled(bound_10 - 1) == (ratio > 0.0)
        assert ours.root_sampled(bound_10) == (ratio == 1.0)
    with pytest.raises(ValueError, match="sample ratio"):
        RatioSampler(1.5)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 1.0])
def test_server_span_samples_roots_on_their_trace_id_and_skips_the_sdk_otherwise(ratio):
    """A sampled root's exported trace id is the one the decision was made on; an
    unsampled request gets an UnsampledSpan (no SDK span) and exports nothing."""
    t, exporter = tracing(ratio)
    ours = RatioSampler(ratio)
    made = [t.server_span("GET /x", None, lambda: {"http.route": "/x"}) for _ in range(400)]
    sampled = {trace_id_of(s) for s in made if s.is_recording()}
    for span in made:
        tid = int(trace_id_of(span), 16)
        assert ours.root_sampled(tid) == span.is_recording() == (sampled_trace_id(span) is not None)
        assert isinstance(span, UnsampledSpan) != span.is_recording()
        span.end()
    t.flush()
    exported = {format(s.context.trace_id, "032x") for s in exporter.get_finished_spans()}
    assert exported == sampled
    assert all(s.attributes["http.route"] == "/x" for s in exporter.get_finished_spans())
    if ratio == 1.0:
        assert len(exported) == 400
    if ratio == 0.0:
        assert exported == set()
    if ratio == 0.1:
        assert 10 <= len(exported) <= 90  # binomial(400, 0.1): 40 +- 6 sd
    t.shutdown()


def test_an_unsampled_span_echoes_its_trace_and_makes_no_attributes():
    t, exporter = tracing(1.0)
    called = []
    span = t.server_span("GET /x", f"00-{TID}-{SID}-00", lambda: called.append(1) or {})
    assert isinstance(span, UnsampledSpan) and called == []
    tp = w3c.parse(traceparent_of(span))
    assert tp is not None and (tp.trace_id, tp.sampled) == (TID, False) and tp.span_id != SID
    ctx = span.get_span_context()
    assert (format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")) == (TID, tp.span_id)
    assert not ctx.trace_flags.sampled
    t.shutdown()


def test_a_run_is_queue_spans_and_one_batch_span_linking_every_request():
    t, exporter = tracing(1.0)
    a = w3c.TraceParent("a" * 32, "1" * 16, True)
    b = w3c.TraceParent("b" * 32, "2" * 16, False)   # served, not sampled: linked only
    c = w3c.TraceParent("c" * 32, None, False)        # an older edge's bare id: nothing
    t.record_run("daemon batch", [(a, 1000, 5000), (b, 2000, 5000), (c, 3000, 5000)],
                 5000, 9000, {"falcon.batch.rows": 3})
    t.flush()
    spans = exporter.get_finished_spans()
    queue = [s for s in spans if s.name == "daemon queue"]
    assert len(queue) == 1 and queue[0].parent.span_id == int("1" * 16, 16)
    assert (queue[0].start_time, queue[0].end_time) == (1000, 5000)
    (batch,) = [s for s in spans if s.name == "daemon batch"]
    assert batch.context.trace_id == int("a" * 32, 16) and (batch.start_time, batch.end_time) \
        == (5000, 9000)
    assert [ln.context.span_id for ln in batch.links] == [int("1" * 16, 16), int("2" * 16, 16)]
    assert batch.attributes["falcon.batch.requests"] == 3
    exporter.clear()
    t.record_run("daemon batch", [(b, 1, 2)], 2, 3, {})  # no sampled request: no span
    t.flush()
    assert exporter.get_finished_spans() == ()
    t.shutdown()


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("falcon_trace_spans_dropped_total", {"reason": reason}) or 0.0


class Refusing(SpanExporter):
    def export(self, spans):
        return SpanExportResult.FAILURE


class Raising(SpanExporter):
    def export(self, spans):
        raise ConnectionError("collector down")


@pytest.mark.parametrize("inner", [Refusing(), Raising()])
def test_spans_a_failed_export_loses_are_counted(inner):
    before = dropped("export_failed")
    t = Tracing(exporter=inner, sample_ratio=1.0)  # (start() wraps it in a CountingExporter)
    t.start()
    for _ in range(3):
        t.server_span("GET /", None).end()
    t.flush()
    assert dropped("export_failed") - before == 3
    t.shutdown()


def test_spans_a_full_queue_drops_are_counted_and_nothing_waits(caplog):
    release = threading.Event()

    class Stuck(SpanExporter):
        def export(self, spans):
            release.wait(10)
            return SpanExportResult.SUCCESS

    before = dropped("queue_full")
    t = Tracing(sample_ratio=1.0)
    t.start = lambda: None  # type: ignore[method-assign]  # (built by hand below)
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    provider.add_span_processor(CountingBatchSpanProcessor(
        CountingExporter(Stuck()), max_queue_size=16, max_export_batch_size=16,
        schedule_delay_millis=10))
    tracer = provider.get_tracer("test")
    tracer.start_span("first").end()
    threading.Event().wait(0.2)  # the export thread takes it and is stuck
    with caplog.at_level("WARNING"):
        for _ in range(40):
            tracer.start_span("x").end()
    assert dropped("queue_full") - before >= 40 - 16
    # counted, and logged once: not a log line per span on the request path (the SDK's is
    # filtered)
    assert [r.getMessage()[:24] for r in caplog.records] == ["the span queue is full ("]
    release.set()
    provider.shutdown()


def test_exemplars_of_other_processes_reach_the_merged_scrape(tmp_path: Path):
    scraped, other = CollectorRegistry(), CollectorRegistry()
    buckets = (0.001, 0.01, 0.1)
    here = Histogram("lat_seconds", "d", ["model"], buckets=buckets, registry=scraped)
    there = Histogram("lat_seconds", "d", ["model"], buckets=buckets, registry=other)
    here.labels("m").observe(0.005)  # what the merged files say (no exemplar kept)
    book = Exemplars(tmp_path, write_every_s=3600)
    book.observe(there, ("m",), 0.005, TID)  # the first one is written at once
    book.observe(there, ("m",), 0.05, "f" * 32)  # a second within write_every_s waits
    dead = tmp_path / "exemplars_999999999.json"
    dead.write_text(json.dumps([["lat_seconds", {"model": "m"}, "0.1", "e" * 32, 0.05, 1.0]]))
    torn = tmp_path / "exemplars_999999999.tmp"
    torn.write_text('[["lat_seconds", {"mo')
    merged = CollectorRegistry()
    merged.register(WithExemplars(scraped, tmp_path))
    text = generate_latest(merged).decode()
    assert f'lat_seconds_bucket{{le="0.01",model="m"}} 1.0 # {{trace_id="{TID}"}} 0.005 ' in text
    assert "f" * 32 not in text and "e" * 32 not in text
    assert not dead.exists() and not torn.exists()
    book.write()  # shared now
    assert "f" * 32 in generate_latest(merged).decode()
    assert sorted(os.listdir(tmp_path)) == [f"exemplars_{os.getpid()}.json"]


def test_without_a_trace_id_an_observation_has_no_exemplar(tmp_path: Path):
    registry = CollectorRegistry()
    h = Histogram("lat2_seconds", "d", ["model"], buckets=(0.01,), registry=registry)
    Exemplars(tmp_path).observe(h, ("m",), 0.005, None)
    assert "trace_id" not in generate_latest(registry).decode()
    assert list(tmp_path.iterdir()) == []


def test_the_tracing_keys_are_checked_and_name_themselves(tmp_path: Path):
    from settings import ConfigError, load

    cfg = tmp_path / "falcon.toml"
    cfg.write_text("")
    s = load(cfg, env={"FALCON_TRACING_ENDPOINT": "http://collector:4318/v1/traces",
                       "FALCON_TRACING_SAMPLE_RATIO": "0.25"})
    t = Tracing.from_settings(s, "daemon")
    assert (t.enabled, t.service, t.sample_ratio, t.export_timeout_s) == \
        (True, "falcon-daemon", 0.25, 2.0)
    assert not Tracing.from_settings(load(cfg, env={}), "edge").enabled  # off by default
    for env, key in (({"FALCON_TRACING_ENDPOINT": "collector:4318"}, "tracing.endpoint"),
                     ({"FALCON_TRACING_SAMPLE_RATIO": "1.5"}, "tracing.sample_ratio"),
                     ({"FALCON_TRACING_MAX_QUEUE_SPANS": "0"}, "tracing.max_queue_spans")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load(cfg, env=env)


GEVENT_SPANS = r"""
from gevent import monkey; monkey.patch_all()
import threading
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from telemetry import Tracing
exporter = InMemorySpanExporter()
t = Tracing(exporter=exporter, sample_ratio=1.0); t.start()
span = t.server_span("GET /x", None, {"a": 1})
with t.child(span, "validate") as child:
    child.set_attribute("falcon.rows", 2)
native = type(monkey.get_original("_thread", "allocate_lock")())
assert type(threading.Lock()) is not native  # gevent's, everywhere else
assert type(span._lock) is native and type(child._attributes._lock) is native
span.end(); t.flush()
names = sorted(s.name for s in exporter.get_finished_spans())
assert names == ["GET /x", "validate"], names
print("ok")
"""


def test_in_a_gevent_process_the_sdks_span_locks_are_c_locks_and_spans_export():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", GEVENT_SPANS], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_without_gevent_the_sdk_locks_are_left_alone():
    from telemetry import sdk_locks

    assert sdk_locks.use_native_locks() is False
    import opentelemetry.sdk.trace

    assert opentelemetry.sdk.trace.threading is threading


def test_the_resource_hash_is_computed_once_and_agrees_with_the_sdks():
    from opentelemetry.sdk.resources import Resource

    from telemetry.export import HashedResource

    plain = Resource.create({"service.name": "falcon-edge", "host.name": "h"})
    hashed = HashedResource(plain)
    assert hashed == plain and hash(hashed) == hash(plain)
    assert {hashed: 1}[plain] == 1
