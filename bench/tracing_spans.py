"""What tracing costs one edge request in CPU, without a server: the spans alone, in one process.

Usage::

    python bench/tracing_spans.py [--requests 20000] [--rounds 5] [--no-gevent]
    PYTHONPATH=/path/to/other/checkout python bench/tracing_spans.py   # that checkout's code

A Falcon app (``falcon.testing``) with the edge's :class:`edge.tracing.TraceMiddleware`
and a resource that does what the edge does with a request's trace and spans and
nothing else: :func:`edge.resources.context` (trace id, echoed ``traceparent``), the
core's four children (``validate`` with the rows on it and on the request span,
``cache lookup``, ``daemon infer`` (CLIENT, its ``traceparent`` for the frame),
``wal append``), the metrics' :func:`telemetry.sampled_trace_id`. Every span is
encoded as the OTLP/HTTP exporter does (``encode_spans(...).SerializePartialToString()``)
and discarded, the batch processor and its export greenlet as in a worker. Modes: off
(no middleware, as ``edge.app`` builds it), on at 0 (no request sampled: what an
unsampled request pays), 10 % and 100 %. Prints CPU µs per request (``process_time``,
flush included) per mode and the difference to off, the median of ``--rounds`` with
the range. With gevent's monkey-patching (the default, as in the gevent worker).

This isolates the tracing code from the box's load; ``bench/tracing_cost.py`` is the
whole platform's throughput.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

if "--no-gevent" not in sys.argv:
    from gevent import monkey

    monkey.patch_all()

import falcon  # noqa: E402
import falcon.testing  # noqa: E402
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: E402
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult  # noqa: E402

from edge.resources import context  # noqa: E402
from edge.tracing import TraceMiddleware  # noqa: E402
from telemetry import Tracing, sampled_trace_id, traceparent_of  # noqa: E402

MODES = {"off": None, "0%": 0.0, "10%": 0.1, "100%": 1.0}


class EncodingSink(SpanExporter):
    """Encodes each batch as the OTLP/HTTP exporter does, then drops it."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans):  # type: ignore[no-untyped-def]
        encode_spans(spans).SerializePartialToString()
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class Predict:
    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    def on_post(self, req: falcon.Request, resp: falcon.Response, model: str) -> None:
        ctx = context(req, resp, "v1")
        t = self.tracing
        with t.child(ctx.span, "validate") as span:
            if span is not None:
                span.set_attribute("falcon.rows", 1)
                ctx.span.set_attribute("falcon.rows", 1)
        with t.child(ctx.span, "cache lookup") as span:
            if span is not None:
                span.set_attribute("falcon.cached", False)
        with t.child(ctx.span, "daemon infer", {"falcon.model": model,
                                                "falcon.model.version": "1"},
                     client=True) as span:
            frame_trace = ctx.trace_id if span is None else traceparent_of(span)
            if span is not None:
                for name in ("queue_s", "compute_s", "batch_rows"):
                    span.set_attribute(f"falcon.daemon.{name}", 0.001)
        with t.child(ctx.span, "wal append"):
            pass
        req.context.model, req.context.version, req.context.cached = model, "1", False
        sampled_trace_id(req.context.get("span"))
        resp.media = {"trace": frame_trace}


def run(ratio: float | None, n: int) -> tuple[float, int]:
    sink = EncodingSink()
    tracing = Tracing(exporter=sink, sample_ratio=ratio or 0.0) if ratio is not None \
        else Tracing()
    tracing.start()
    app = falcon.App(middleware=[TraceMiddleware(tracing)] if tracing.enabled else [])
    app.add_route("/v1/models/{model}/predict", Predict(tracing))
    client = falcon.testing.TestClient(app)
    headers = {"Host": "127.0.0.1:8000", "User-Agent": "wrk", "X-Request-Id": "r1"}
    for _ in range(200):  # warm-up
        client.simulate_post("/v1/models/digits/predict", headers=headers)
    tracing.flush()
    start = time.process_time()
    for i in range(n):
        client.simulate_post("/v1/models/digits/predict", headers=headers)
        if i % 32 == 31:
            time.sleep(0)  # a worker's greenlets yield on I/O: its export greenlet runs
    tracing.flush()
    cpu = time.process_time() - start
    tracing.shutdown()
    return 1e6 * cpu / n, sink.spans


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-gevent", action="store_true")
    args = p.parse_args()
    per: dict[str, list[float]] = {m: [] for m in MODES}
    for n in range(args.rounds):
        order = list(MODES)[n % len(MODES):] + list(MODES)[:n % len(MODES)]
        for mode in order:
            us, _ = run(MODES[mode], args.requests)
            per[mode].append(us)
    off = statistics.median(per["off"])
    print(f"CPU µs per request, {args.requests} requests x {args.rounds} rounds "
          f"({'threads' if args.no_gevent else 'gevent'}): median (range), minus off")
    for mode, values in per.items():
        med = statistics.median(values)
        print(f"  {mode:>4}: {med:7.1f} ({min(values):.1f}-{max(values):.1f})  "
              f"{med - off:+7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
