"""/openapi.json is built from the app's route tables: every route is described, nothing
else is, and a route that needs an API key says so (401, 403, 429, its scope)."""

from __future__ import annotations

import falcon.testing
import pytest

from edge import admin, app, openapi, stats
from edge.core import Core
from edge.daemon_client import DaemonClient


def document() -> dict:
    core = Core(DaemonClient("/nonexistent/daemon.sock"))  # never called: the spec is static
    client = falcon.testing.TestClient(app.create_app(core, max_body=1 << 20))
    ans = client.simulate_get("/openapi.json")
    assert ans.status_code == 200
    return ans.json


def test_every_route_is_described_and_nothing_else():
    doc = document()
    routed = {p for p, _ in app.ROUTES + admin.ROUTES + stats.ROUTES}
    assert set(doc["paths"]) == routed


def test_routes_that_need_a_key_say_which_and_what_they_answer_without_one():
    doc = document()
    infer = doc["paths"]["/v2/models/{model}/infer"]["post"]
    assert {"401", "403", "429"} <= set(infer["responses"]) and "predict" in infer["description"]
    assert infer["security"]
    load = doc["paths"]["/v2/repository/models/{model}/load"]["post"]
    assert {"401", "403", "429"} <= set(load["responses"]) and "admin" in load["description"]
    live = doc["paths"]["/v2/health/live"]["get"]
    assert "401" not in live["responses"] and "security" not in live
    assert {"bearer", "apiKey"} <= set(doc["components"]["securitySchemes"])


def test_a_route_without_a_description_is_refused_at_start():
    with pytest.raises(ValueError, match="/v2/undescribed"):
        openapi.spec([("/v2/undescribed", object)])
