"""/openapi.json is built from the app's route tables: every route Falcon serves is
described with exactly its methods, nothing else is, and every operation lists what it
answers: the statuses a real app is seen answering (probed below), a route that needs an
API key its 401/403/429, HAProxy's own refusals, and every status of edge/http_errors.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon
import falcon.testing
import pytest
from falcon.routing import map_http_methods

from apikeys import Authorizer, KeyStore
from edge import admin, app, http_errors, kservev1, modelconfig, openapi, resources, stats
from edge.core import Core
from edge.daemon_client import DaemonClient

ROOT = Path(__file__).resolve().parents[2]
TABLES = (app.ROUTES + admin.ROUTES + stats.ROUTES + modelconfig.ROUTES + kservev1.ROUTES
          + app.SERVICE_ROUTES)


def make_app(tmp_path: Path | None = None, max_body: int = 1 << 20) -> falcon.App:
    """The real app over a daemon that is not there (every daemon call: 503); with
    ``tmp_path``, auth on (no keys) and HAProxy's secret checked."""
    core = Core(DaemonClient("/nonexistent/daemon.sock"))
    if tmp_path is None:
        return app.create_app(core, max_body=max_body)
    keys = tmp_path / "keys.json"  # absent: no keys
    return app.create_app(core, max_body=max_body, authorizer=Authorizer(KeyStore(keys)),
                          proxy_secret="s" * 43)


def document(web: falcon.App | None = None) -> dict[str, Any]:
    ans = falcon.testing.TestClient(web or make_app()).simulate_get("/openapi.json")
    assert ans.status_code == 200
    return ans.json


def served(web: falcon.App) -> dict[str, set[str]]:
    """Every route of Falcon's router (walked, not read from the tables) and its methods."""
    def walk(nodes: list[Any]) -> Iterator[Any]:
        for node in nodes:
            yield node
            yield from walk(node.children)
    return {node.uri_template: {m.lower() for m in map_http_methods(node.resource)}
            for node in walk(web._router._roots) if node.resource is not None}


def undocumented(web: falcon.App, doc: dict[str, Any]) -> list[str]:
    return sorted(f"{m.upper()} {path}" for path, methods in served(web).items()
                  for m in methods if m not in doc["paths"].get(path, {}))


def test_every_route_falcon_serves_is_described_with_its_methods_and_nothing_else():
    web = make_app()
    doc = document(web)
    routes = served(web)
    assert set(routes) == {p for p, _ in TABLES}  # no route added outside the tables
    assert undocumented(web, doc) == []
    assert {p: set(item) for p, item in doc["paths"].items()} == routes
    assert {"/v2/health/live", "/v1/models/{model}/traffic", "/v2/repository/index",
            "/v2/models/{model}/versions/{version}/stats", "/metrics", "/openapi.json"} <= set(routes)
    assert set(doc["paths"]["/v1/models/{model}/traffic"]) == {"get", "put"}


def test_a_route_added_outside_the_tables_is_seen():
    web = make_app()
    web.add_route("/v2/backdoor", resources.Live(Core(DaemonClient("/x")), 1))
    assert undocumented(web, document(web)) == ["GET /v2/backdoor"]


def test_a_route_without_a_description_or_with_other_methods_is_refused_at_start():
    with pytest.raises(ValueError, match="/v2/undescribed"):
        openapi.spec([("/v2/undescribed", object)])

    class WithPut(resources.Live):
        def on_put(self, req: falcon.Request, resp: falcon.Response) -> None: ...
    with pytest.raises(ValueError, match=r"/v2/health/live answers \['get', 'put'\]"):
        openapi.spec([(p, WithPut if p == "/v2/health/live" else c) for p, c in TABLES])


def haproxy_statuses() -> set[int]:
    """What HAProxy answers itself (ops/haproxy/haproxy.cfg), 400 (a malformed request,
    never passed on) and 404 (only /metrics, which is described so) aside."""
    cfg = (ROOT / "ops" / "haproxy" / "haproxy.cfg").read_text()
    codes = {int(c) for c in re.findall(r"(?:http-error status|deny_status) (\d{3})", cfg)}
    assert {413, 429, 503} <= codes
    return codes - {400, 404}


def probe(web: falcon.App, method: str, path: str) -> set[int]:
    """The statuses ``method path`` answers to what a unit test can send: no daemon,
    a bad deadline header, a body over the limit, a forwarded header not from HAProxy,
    no API key, an unknown key."""
    client = falcon.testing.TestClient(web)
    url = path.replace("{model}", "m").replace("{version}", "1")
    body = '{"instances": [[1, 2, 3, 4, 5, 6, 7, 8]], "inputs": []}'
    key = {"X-API-Key": "fk_000000000000_" + "a" * 43}
    seen = set()
    for headers, data in (({}, None), ({}, body), ({"X-Request-Timeout-Ms": "soon"}, None),
                          ({"X-Forwarded-For": "10.0.0.1"}, None), (key, None)):
        seen.add(client.simulate_request(method.upper(), url, headers=headers, body=data).status_code)
    return seen


def test_every_operation_lists_every_status_it_can_answer(tmp_path):
    doc = document()
    errors_table = {int(s[:3]) for s in http_errors.STATUS.values()}
    front = haproxy_statuses()
    secured = {p for p, cls in TABLES if getattr(cls, "scope", None) is not None}
    seen_anywhere: set[int] = set()
    for web in (make_app(max_body=16), make_app(tmp_path, max_body=16)):
        for path, methods in served(web).items():
            for method in methods:
                listed = {int(c) for c in doc["paths"][path][method]["responses"]}
                seen = probe(web, method, path)
                seen_anywhere |= seen
                want = seen | front | {403}
                if path in secured:
                    want |= {401, 403, 429}
                if "{model}" in path or path.endswith("/stats"):
                    want.add(404)
                assert want <= listed, f"{method.upper()} {path}: {sorted(want - listed)} not listed"
                assert listed <= {200} | errors_table | front | {404}, f"{method.upper()} {path}"
    assert {400, 401, 403, 413, 503} <= seen_anywhere  # the probes reach what they claim to
    listed_anywhere = {int(c) for item in doc["paths"].values() for op in item.values()
                       for c in op["responses"]}
    assert errors_table <= listed_anywhere


def test_routes_that_need_a_key_say_which_and_open_routes_do_not():
    doc = document()
    infer = doc["paths"]["/v2/models/{model}/infer"]["post"]
    assert infer["security"] and "predict" in infer["description"]
    load = doc["paths"]["/v2/repository/models/{model}/load"]["post"]
    assert load["security"] and "admin" in load["description"]
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/metrics", "/openapi.json"):
        op = doc["paths"][path]["get"]
        assert "401" not in op["responses"] and "security" not in op, path
    assert {"bearer", "apiKey"} <= set(doc["components"]["securitySchemes"])
