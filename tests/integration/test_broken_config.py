"""One model's malformed config.toml hides or blocks nothing else: the daemon starts
with the other models, they load and list as ever, the broken one is known but not
ready (503) — never a 400 carrying its error to a caller who may not even see it."""

from __future__ import annotations

import shutil

from tests.httpx_lite import post_json, request
from tests.stacks import create_key, make_repo


def test_a_broken_config_toml_blocks_nothing_and_leaks_nothing(make_stack, tmp_path):
    repo = make_repo(tmp_path / "models")
    shutil.copytree(repo / "digits", repo / "secret")
    (repo / "secret" / "config.toml").write_text('max_request_rows = "x"\n')
    stack = make_stack(start=False, repo=repo, FALCON_AUTH_ENABLED="true")
    keys = {"pred": create_key(stack, "pred"), "adm": create_key(stack, "adm", "--scope", "admin"),
            "digits": create_key(stack, "digits-only", "--model", "digits")}
    stack.start()  # before, one bad config.toml made the daemon refuse to start at all
    addr = stack.settings.haproxy.bind

    def get(path: str, who: str):
        return request(addr, "GET", path, headers={"Authorization": f"Bearer {keys[who]}"})

    limited = get("/v1/models", "digits")
    assert (limited.status, limited.json()) == (200, {"models": ["digits"]}), limited.body
    listed = get("/v1/models", "pred")
    assert listed.status == 200 and "digits" in listed.json()["models"], listed.body
    assert b"max_request_rows" not in listed.body
    ready = get("/v1/models/digits", "pred")
    assert (ready.status, ready.json()) == (200, {"name": "digits", "ready": True})
    broken = get("/v1/models/secret", "pred")
    assert broken.status == 503 and b"max_request_rows" not in broken.body, broken.body
    assert get("/v2/models/digits/ready", "pred").status == 200
    admin = {"Authorization": f"Bearer {keys['adm']}"}
    index = post_json(addr, "/v2/repository/index", {}, admin)
    assert index.status == 200, index.body
    [entry] = [e for e in index.json() if e["name"] == "secret"]
    assert entry["state"] == "UNAVAILABLE" and "max_request_rows" in entry["reason"]
    # loading another model still works; loading the broken one is refused naming its file
    assert post_json(addr, "/v2/repository/models/digits/load", {}, admin).status == 200
    refused = post_json(addr, "/v2/repository/models/secret/load", {}, admin)
    assert refused.status == 400 and b"config.toml" in refused.body, refused.body
