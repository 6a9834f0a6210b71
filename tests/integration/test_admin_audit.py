"""Management changes are audited before they apply (issue 15 item 4): a WAL
that refuses the intent means no change (503), where the split used to be
applied and then answered 503 (a client retrying a rollback went back two steps)."""

from __future__ import annotations

from tests.httpx_lite import post_json, request
from tests.modelfactory import write_mlp_model


def traffic(addr: str) -> dict:
    ans = request(addr, "GET", "/v1/models/mlp/traffic")
    assert ans.status == 200, ans.body
    return ans.json()["split"]


def test_a_change_the_wal_cannot_record_is_not_applied(make_stack, tmp_path):
    repo = tmp_path / "repo"
    for version in ("1", "2"):
        write_mlp_model(repo, "mlp", input_dim=4, hidden=8, layers=1, classes=3,
                        seed=int(version), version=version)
    # the disk guard refuses every record: no free space is ever enough
    stack = make_stack(repo=repo, FALCON_AUDIT_MIN_FREE_BYTES=str(1 << 50))
    addr = stack.settings.edge.bind
    before = traffic(addr)
    ans = request(addr, "PUT", "/v1/models/mlp/traffic", '{"split": {"1": 50, "2": 50}}',
                  {"Content-Type": "application/json"})
    assert ans.status == 503 and b"audit" in ans.body, ans.body
    assert traffic(addr) == before  # not applied
    ans = post_json(addr, "/v1/models/mlp/rollback", {})
    assert ans.status == 503, ans.body
    assert traffic(addr) == before
