"""KServe's V1 paths in Falcon's router, beside the simple face's: ``{model}:predict`` is
the simple face's Predict, ``{model}`` KServe's model ready, and no model name can make
the two ambiguous (a name cannot hold a colon). No servers: the app's own router."""

from __future__ import annotations

from typing import Any

import falcon
import falcon.testing
import pytest

from apikeys import Authorizer, KeyStore
from daemon.repository import NAME_RE
from edge import app, http_errors, kservev1, resources
from edge.core import Core
from edge.daemon_client import DaemonClient
from edge.errors import ModelNotReady


@pytest.fixture(scope="module")
def web() -> falcon.App:
    return app.create_app(Core(DaemonClient("/nonexistent/daemon.sock")), max_body=1 << 20)


def route(web: falcon.App, path: str) -> tuple[Any, dict[str, str]] | None:
    found = web._router.find(path)
    if found is None:
        return None
    resource, _, params, _ = found
    return type(resource), params


@pytest.mark.parametrize("path, cls, params", [
    ("/", kservev1.ServerLive, {}),
    ("/v1/models", kservev1.ModelList, {}),
    ("/v1/models/digits", kservev1.ModelStatus, {"model": "digits"}),
    ("/v1/models/digits:predict", resources.Predict, {"model": "digits"}),
    ("/v1/models/digits/predict", resources.Predict, {"model": "digits"}),
    ("/v1/models/digits/versions/1/predict", resources.Predict,
     {"model": "digits", "version": "1"}),
    ("/v1/models/my-model.v2_x:predict", resources.Predict, {"model": "my-model.v2_x"}),
    ("/v1/models/predict", kservev1.ModelStatus, {"model": "predict"}),
    # not a model name (no colon in names): the ready route says 404 for it
    ("/v1/models/x:explain", kservev1.ModelStatus, {"model": "x:explain"}),
])
def test_each_path_reaches_its_resource(web, path, cls, params):
    assert route(web, path) == (cls, params)


def test_the_colon_predict_route_is_the_simple_faces_predict_not_a_copy():
    assert dict(kservev1.ROUTES)["/v1/models/{model}:predict"] is resources.Predict


def test_kserve_has_no_versioned_colon_predict_and_neither_do_we(web):
    assert route(web, "/v1/models/digits/versions/1:predict") is None
    assert not any(":" in p and "{version}" in p for p, _ in kservev1.ROUTES)


@pytest.mark.parametrize("name", ["x:predict", "x:", ":predict", "a:b"])
def test_a_model_name_cannot_hold_a_colon(name):
    """What keeps ``{model}:predict`` unambiguous: if the repository's name rule ever
    allows a colon, ``/v1/models/a:predict`` could be the ready route of ``a:predict``."""
    assert not NAME_RE.match(name)


def test_the_methods_are_kserves(web):
    client = falcon.testing.TestClient(web)
    assert client.simulate_post("/v1/models").status_code == 405
    assert client.simulate_post("/v1/models/digits").status_code == 405
    assert client.simulate_get("/v1/models/digits:predict").status_code == 405


def test_a_model_not_ready_is_503_with_retry_after_and_the_error_shape():
    web = falcon.App()
    http_errors.install(web)

    class NotReady:
        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            raise ModelNotReady("model 'm' is not ready")
    web.add_route("/x", NotReady())
    ans = falcon.testing.TestClient(web).simulate_get("/x")
    assert ans.status_code == 503 and ans.headers["Retry-After"] == "1"
    assert ans.json == {"error": "model 'm' is not ready"}


def test_liveness_is_open_and_the_rest_needs_a_key(tmp_path):
    """KServe's V1 client reads ``GET /`` for liveness, with no key; the list, ready and
    predict need the ``predict`` scope."""
    web = app.create_app(Core(DaemonClient("/nonexistent/daemon.sock")), max_body=1 << 20,
                         authorizer=Authorizer(KeyStore(tmp_path / "keys.json")))
    client = falcon.testing.TestClient(web)
    ans = client.simulate_get("/")
    assert ans.status_code == 200 and ans.json == {"status": "alive"}
    for method, path in (("GET", "/v1/models"), ("GET", "/v1/models/m"),
                         ("POST", "/v1/models/m:predict")):
        assert client.simulate_request(method, path).status_code == 401, path
