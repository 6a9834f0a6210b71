"""String tensors through the cache and the audit trail: a cached string answer is the
answer, the WAL record and its PostgreSQL row hold the strings (inputs, outputs, labels),
and ``falconctl wal dump --tensors`` prints them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg2

from audit.record import decode_inputs
from audit.wal import list_streams
from tests import convertermodels as cm
from tests.httpx_lite import post_json
from tests.stacks import falconctl


def rows_for(dsn: str, ids: set[str], timeout: float = 60.0) -> dict[str, tuple]:
    deadline = time.monotonic() + timeout
    found: dict[str, tuple] = {}
    while time.monotonic() < deadline:
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT request_id, input_meta, outputs, labels, cached, inputs "
                        "FROM audit.predictions")
            found = {r[0]: r for r in cur.fetchall() if r[0] in ids}
        conn.close()
        if set(found) == ids:
            return found
        time.sleep(0.25)
    raise AssertionError(f"rows never arrived: {ids - set(found)}")


def test_string_tensors_in_the_cache_the_wal_and_postgresql(make_stack, memcached, pg_dsn,
                                                            tmp_path):
    repo = tmp_path / "repo"
    cm.tfidf_text(repo)
    tabular = cm.column_transformer(repo)
    config = repo / "topics" / "config.toml"
    config.write_text(config.read_text() + "\n[cache]\nenabled = true\n")
    stack = make_stack(repo=repo, audit=True, FALCON_AUDIT_DSN=pg_dsn,
                       FALCON_CACHE_SERVERS=memcached.addr, FALCON_EDGE_WORKERS="1")
    addr = stack.settings.haproxy.bind

    body = {"instances": [["the keeper saved it"], ["caf\u00e9 soup"]]}
    first = post_json(addr, "/v1/models/topics/predict", body).json()
    second = post_json(addr, "/v1/models/topics/predict", body).json()
    other = post_json(addr, "/v1/models/topics/predict",
                      {"instances": [["the keeper saved it"], ["cafe soup"]]}).json()
    assert (first["cached"], second["cached"], other["cached"]) == (False, True, False)
    assert first["predictions"] == second["predictions"]
    assert all(isinstance(p["label"], str) for p in first["predictions"])
    named = post_json(addr, "/v1/models/tabular/predict",
                      {"instances": tabular.instances[:2]}).json()

    rows = rows_for(pg_dsn, {first["request_id"], second["request_id"], named["request_id"]})
    _, meta, outputs, labels, cached, inputs = rows[second["request_id"]]
    assert cached is True
    assert meta == [{"name": "text", "dtype": "|O", "shape": [2, 1]}]
    assert labels == [p["label"] for p in first["predictions"]]
    assert outputs["output_label"] == {"dtype": "|O", "shape": [2], "data": labels}
    assert decode_inputs(bytes(inputs))["text"]["data"] == body["instances"]
    assert rows[first["request_id"]][5] == inputs  # the same canonical bytes
    _, meta, _, labels, _, inputs = rows[named["request_id"]]
    assert [m["name"] for m in meta] == ["color", "x1", "x2"] and meta[0]["dtype"] == "|O"
    assert labels == [p["label"] for p in named["predictions"]]
    assert all(isinstance(label, int) for label in labels)
    got = decode_inputs(bytes(inputs))["color"]["data"]
    assert got == [[row["color"]] for row in tabular.instances[:2]]

    wal_dir = Path(stack.settings.wal_dir)
    dumped = [json.loads(line) for stream in list_streams(wal_dir)
              for line in falconctl(stack, "wal", "dump", str(wal_dir / stream),
                                    "--tensors").stdout.splitlines()]
    tailed = [json.loads(line) for line in falconctl(stack, "wal", "tail", "--once",
                                                     "--tensors").stdout.splitlines()]
    record = next(d for d in dumped if d.get("request_id") == first["request_id"])
    tailed_record = next(d for d in tailed if d.get("request_id") == first["request_id"])
    assert tailed_record["input_tensors"] == record["input_tensors"]
    assert record["input_tensors"]["text"]["data"] == body["instances"]
    assert record["outputs"]["output_label"]["data"] == [p["label"] for p in first["predictions"]]

