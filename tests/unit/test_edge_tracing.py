"""edge.tracing's middleware in a Falcon app (falcon.testing, spans in memory): one SERVER
span per routed request named by its route, HTTP attributes, 5xx an error, health
checks untraced, and the request's traceparent echoed from its span."""

from __future__ import annotations

import falcon
import falcon.testing
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from edge.resources import context
from edge.tracing import TraceMiddleware
from telemetry import Tracing

TID, SID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


class Thing:
    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        ctx = context(req, resp, "v1")
        req.context.model, req.context.version = name, "3"
        if name == "boom":
            raise falcon.HTTPServiceUnavailable()
        resp.media = {"trace": ctx.trace_id}


class Health:
    traced = False

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {}


def app(ratio: float) -> tuple[falcon.testing.TestClient, Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter=exporter, sample_ratio=ratio)
    tracing.start()
    a = falcon.App(middleware=[TraceMiddleware(tracing)])
    a.add_route("/things/{name}", Thing())
    a.add_route("/health", Health())
    return falcon.testing.TestClient(a), tracing, exporter


def test_a_request_span_named_by_its_route_with_http_attributes():
    client, tracing, exporter = app(0.0)
    res = client.simulate_get("/things/digits", headers={"traceparent": f"00-{TID}-{SID}-01",
                                                         "Host": "edge.example:8000"})
    assert res.json["trace"] == TID
    echoed = res.headers["traceparent"]
    tracing.flush()
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /things/{name}" and span.kind == SpanKind.SERVER
    assert echoed == f"00-{TID}-{span.context.span_id:016x}-01"
    assert span.parent.span_id == int(SID, 16)
    a = span.attributes
    assert (a["http.request.method"], a["http.route"], a["url.path"]) == \
        ("GET", "/things/{name}", "/things/digits")
    assert (a["server.address"], a["server.port"], a["http.response.status_code"]) == \
        ("edge.example", 8000, 200)
    assert (a["falcon.model"], a["falcon.model.version"], a["falcon.face"]) == ("digits", "3", "v1")
    tracing.shutdown()


def test_a_5xx_is_an_error_and_health_checks_make_no_span():
    client, tracing, exporter = app(1.0)
    assert client.simulate_get("/things/boom").status_code == 503
    assert client.simulate_get("/health").status_code == 200
    tracing.flush()
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["http.response.status_code"] == 503
    tracing.shutdown()


def test_unsampled_the_echo_says_so_and_nothing_is_exported():
    client, tracing, exporter = app(1.0)
    res = client.simulate_get("/things/x", headers={"traceparent": f"00-{TID}-{SID}-00"})
    assert res.headers["traceparent"].startswith(f"00-{TID}-")
    assert res.headers["traceparent"].endswith("-00")
    tracing.flush()
    assert exporter.get_finished_spans() == ()
    tracing.shutdown()


def test_an_unsampled_request_builds_no_attributes_and_echoes_its_new_trace(monkeypatch):
    import edge.tracing

    built: list[str] = []
    real = edge.tracing.attributes
    monkeypatch.setattr(edge.tracing, "attributes",
                        lambda req, route: built.append(route) or real(req, route))
    client, tracing, exporter = app(0.0)
    res = client.simulate_get("/things/x")
    echoed = res.headers["traceparent"]
    assert echoed.startswith(f"00-{res.json['trace']}-") and echoed.endswith("-00")
    assert built == []
    client.simulate_get("/things/x", headers={"traceparent": f"00-{TID}-{SID}-01"})
    assert built == ["/things/{name}"]  # a sampled one has them
    tracing.flush()
    assert len(exporter.get_finished_spans()) == 1
    tracing.shutdown()
