"""The audit trail end to end, with real PostgreSQL and crashes under load:
every 200 the client saw lands in the audit table exactly once, with what the
client received."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg2
import pytest

from falconctl.stack import free_port
from tests.httpx_lite import post_json
from tests.loadgen import LoadGen
from tests.pg_fixture import fresh_database, running_cluster

ROOT = Path(__file__).resolve().parents[2]
DIGITS = np.load(ROOT / "tests" / "data" / "digits_test.npz")


def audit_rows(dsn: str) -> dict[str, list[tuple]]:
    """request_id -> every row with that id (more than one would be a duplicate)."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT request_id, labels, outputs, cached FROM audit.predictions")
        out: dict[str, list[tuple]] = {}
        for row in cur.fetchall():
            out.setdefault(row[0], []).append(row)
    conn.close()
    return out


def wait_for_rows(dsn: str, expected: set[str], timeout: float = 60.0) -> dict[str, list[tuple]]:
    deadline = time.monotonic() + timeout
    rows: dict[str, list[tuple]] = {}
    while time.monotonic() < deadline:
        rows = audit_rows(dsn)
        if expected <= set(rows):
            return rows
        time.sleep(0.25)
    missing = expected - set(rows)
    raise AssertionError(f"{len(missing)} of {len(expected)} responses never reached the table")


def edge_workers(stack) -> list[int]:
    arbiter = stack.procs["edge"].popen.pid
    return [int(p) for task in Path(f"/proc/{arbiter}/task").glob("*/children")
            for p in task.read_text().split()]


def check_exactly_once(load: LoadGen, rows: dict[str, list[tuple]]) -> None:
    ok = load.ok()
    assert len(ok) > 100, "the load generator got too few answers to mean anything"
    dupes = [rid for rid, r in rows.items() if len(r) > 1]
    assert dupes == []
    # a row without a 200 can only be a request whose connection died after the
    # WAL append (its worker was killed): never more of them than failed requests
    failed = {o.request_id for o in load.outcomes if o.status != 200}
    assert set(rows) - set(ok) <= failed
    for rid, outcome in ok.items():
        [(_, labels, outputs, cached)] = rows[rid]
        assert labels == [p["label"] for p in outcome.doc["predictions"]]
        probs = [[p["probabilities"][str(c)] for c in range(10)] for p in outcome.doc["predictions"]]
        np.testing.assert_allclose(outputs["probabilities"]["data"], probs, rtol=1e-6)
        assert cached is False


def test_kill9_of_edge_workers_and_shipper_under_load_loses_and_duplicates_nothing(make_stack,
                                                                                      pg_dsn):
    stack = make_stack(audit=True, FALCON_AUDIT_DSN=pg_dsn, FALCON_EDGE_WORKERS="3",
                       FALCON_AUDIT_SHIP_BATCH="50")
    load = LoadGen(stack.settings.haproxy.bind, DIGITS["X"], threads=4).start()
    try:
        for _ in range(3):
            time.sleep(1.0)
            os.kill(edge_workers(stack)[0], signal.SIGKILL)  # gunicorn starts a new one
            time.sleep(0.5)
            stack.procs["shipper"].stop(signal.SIGKILL)
            time.sleep(0.3)
            stack.start_shipper()
        time.sleep(1.0)
    finally:
        outcomes = load.stop()
    statuses = {o.status for o in outcomes}
    assert statuses <= {200, 502, 503, 0}, statuses
    rows = wait_for_rows(pg_dsn, set(load.ok()))
    check_exactly_once(load, rows)
    # dead workers' streams were drained and removed; live ones remain
    wal = Path(stack.settings.wal_dir)
    deadline = time.monotonic() + 20
    while len([p for p in wal.iterdir() if p.is_dir()]) > 3 and time.monotonic() < deadline:
        time.sleep(0.25)
    assert len([p for p in wal.iterdir() if p.is_dir()]) <= 3
    reship_adds_nothing(stack, pg_dsn)


def reship_adds_nothing(stack, dsn: str) -> None:
    """`falconctl wal reship` from the start of a live stream lands no duplicate."""
    before = sum(len(r) for r in audit_rows(dsn).values())
    stream = sorted(p.name for p in Path(stack.settings.wal_dir).iterdir() if p.is_dir())[0]
    out = subprocess.run([sys.executable, "-m", "falconctl", "wal", "reship", stream,
                          "--from", "0:0"], env=stack.env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["read"] > 0 and report["inserted"] == 0 and report["errors"] == []
    assert sum(len(r) for r in audit_rows(dsn).values()) == before


def test_postgres_down_during_load_then_back_every_record_lands_once(make_stack):
    with running_cluster() as pg:
        dsn = fresh_database(pg, "outage")
        stack = make_stack(audit=True, FALCON_AUDIT_DSN=dsn)
        load = LoadGen(stack.settings.haproxy.bind, DIGITS["X"], threads=3).start()
        try:
            time.sleep(1.0)
            pg.stop(mode="immediate")  # a crash, not a polite shutdown
            time.sleep(3.0)            # predictions keep being served meanwhile
            during = len(load.ok())
            pg.start()
            time.sleep(1.0)
        finally:
            load.stop()
        assert len(load.ok()) > during > 0
        assert {o.status for o in load.outcomes} == {200}
        rows = wait_for_rows(dsn, set(load.ok()))
        check_exactly_once(load, rows)
        assert set(rows) == set(load.ok())
        assert "stalled" in stack.procs["shipper"].tail(200)


@pytest.fixture
def tiny_fs(tmp_path: Path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.system(f"mount -t tmpfs -o size=256k tmpfs {mnt}") != 0:
        pytest.fail("cannot mount a tmpfs (root needed) for the full-disk test")
    try:
        yield mnt
    finally:
        os.system(f"umount -l {mnt}")


def test_full_disk_stops_the_writer_with_503_and_keeps_what_was_acknowledged(make_stack, tiny_fs):
    stack = make_stack(FALCON_AUDIT_WAL_DIR=str(tiny_fs), FALCON_AUDIT_MIN_FREE_BYTES="0",
                       FALCON_EDGE_WORKERS="1", FALCON_AUDIT_SYNC="always")
    addr = stack.settings.haproxy.bind
    acknowledged, refused = [], 0
    for i in range(2000):
        ans = post_json(addr, "/v1/models/digits/predict",
                        {"instances": DIGITS["X"][i % 300:(i % 300) + 3].tolist()})
        if ans.status == 200:
            assert refused == 0, "a 200 after the WAL failed"
            acknowledged.append(ans.json()["request_id"])
        else:
            assert ans.status == 503 and "audit" in ans.json()["error"], ans.body
            refused += 1
            if refused >= 5:
                break
    assert acknowledged and refused >= 5
    from audit.record import AuditRecord
    from audit.wal import START, StreamReader, list_streams
    seen = []
    for stream in list_streams(tiny_fs):
        reader = StreamReader(tiny_fs, stream)
        seen += [AuditRecord.from_payload(p).request_id
                 for _, p in reader.read(START, max_records=100000)]
    assert set(acknowledged) <= set(seen)


def test_with_postgres_unreachable_the_shipper_does_not_extend_its_start(make_stack, tmp_path):
    """falcon.target's start waits for the shipper: while the database cannot be
    reached, the unit's TimeoutStartSec must stay the bound (no EXTEND_TIMEOUT_USEC)."""
    notify_path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    closed = f"host=127.0.0.1 port={free_port()} dbname=nothing user=nobody connect_timeout=2"
    stack = make_stack(start=False, NOTIFY_SOCKET=notify_path, FALCON_AUDIT_ENABLED="true",
                       FALCON_AUDIT_DSN=closed)
    proc = stack._spawn("shipper", [stack.python, "-m", "falconctl", "ship"])
    try:
        deadline = time.monotonic() + 60
        while "PostgreSQL not ready" not in proc.tail() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "PostgreSQL not ready" in proc.tail()
        time.sleep(1.5)  # a couple of retries
        listener.settimeout(0.5)
        sent = []
        while True:
            try:
                sent.append(listener.recv(4096).decode())
            except TimeoutError:
                break
        assert any("STATUS=waiting for PostgreSQL" in m for m in sent), sent
        assert not any("EXTEND_TIMEOUT_USEC" in m or "READY=1" in m for m in sent), sent
    finally:
        listener.close()
    assert proc.stop(signal.SIGTERM) == 0


def test_a_long_catch_up_keeps_the_watchdog_fed(tmp_path, pg_dsn):
    """A backlog is shipped in batches within one pass; every committed batch
    beats the heartbeat (systemd's watchdog would otherwise kill a shipper
    catching up after a long PostgreSQL outage)."""
    from audit.shipper import Shipper
    from audit.store import PgStore
    from audit.wal import WalWriter
    from edge.audit import Auditor, RequestContext

    wal = tmp_path / "wal"
    auditor = Auditor(wal, "hb", lambda d, s: WalWriter(d, s, sync="interval", min_free_bytes=0))
    for _ in range(250):
        auditor.event(RequestContext(uuid.uuid4().hex, "admin"), "split", "m", {"old": {}, "new": {}})
    auditor.close()
    beats = []
    store = PgStore(pg_dsn)
    store.migrate()
    shipper = Shipper(wal, store, batch=50, heartbeat=lambda: beats.append(1))
    stats = shipper.ship_once()
    store.close()
    assert stats.shipped == 250 and stats.errors == []
    assert len(beats) == 5


def test_a_record_the_database_refuses_is_quarantined_and_its_stream_ships(tmp_path, pg_cluster,
                                                                          caplog):
    """A record PostgreSQL refuses (a NUL byte in a text column) is found by
    splitting its batch and lands in audit.quarantine with the reason; the records
    after it ship (issue 15 item 6: it held back its stream for ever)."""
    from dataclasses import replace

    from audit.record import AuditRecord
    from audit.shipper import Shipper
    from audit.store import PgStore
    from audit.wal import WalWriter

    def rec(n: int, **fields: object) -> AuditRecord:
        return AuditRecord(request_id=f"r-{n}", ts=time.time(), host="h", model="m",
                           version="1", face="v1", input_digest="0" * 64, input_meta=[],
                           outputs={}, labels=[n], cached=False, latency_ms=1.0, inputs=b"",
                           api_key_id="", trace_id="", extra={}, **fields)

    wal = tmp_path / "wal"
    for stream, records in (("a-bad", [replace(rec(0), host="nul\x00byte"), rec(1)]),
                            ("b-good", [rec(2), rec(3)]), ("c-good", [rec(4)])):
        with WalWriter(wal, stream, sync="interval", min_free_bytes=0) as writer:
            for r in records:
                writer.append(r.to_payload())
    pg_dsn = fresh_database(pg_cluster, "refused")
    store = PgStore(pg_dsn)
    store.migrate()
    shipper = Shipper(wal, store)
    first, second = shipper.ship_once(), shipper.ship_once()
    store.close()
    assert (first.shipped, second.shipped, first.quarantined) == (5, 0, 1)
    assert first.errors == [] == second.errors
    assert sorted(audit_rows(pg_dsn)) == ["r-1", "r-2", "r-3", "r-4"]
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT stream, reason, payload FROM audit.quarantine")
        [(stream, reason, payload)] = cur.fetchall()
    conn.close()
    assert stream == "a-bad" and "host" in reason
    assert AuditRecord.from_payload(bytes(payload)).request_id == "r-0"
    assert caplog.text.count("is in audit.quarantine") == 1


def test_a_request_logged_twice_is_one_row_and_request_ids_carry_the_host(make_stack, pg_dsn):
    """HAProxy retries a request whose edge died before answering (retry-on);
    that edge may already have logged it. Both logs carry the same key — the
    request id, the front's accept time (X-Request-Start) and the front's request
    key (X-Falcon-Request-Key) — so the table holds one row. Two requests that
    share a client's id and an accept time (HAProxy's clock ticks coarsely) differ
    by their request key: two rows. Ids made up by HAProxy or an edge carry the
    host id."""
    stack = make_stack(audit=True, FALCON_AUDIT_DSN=pg_dsn, FALCON_HOST_ID="host-x",
                       FALCON_EDGE_WORKERS="1")
    s = stack.settings
    body = {"instances": DIGITS["X"][:1].tolist()}
    via_haproxy = post_json(s.haproxy.bind, "/v1/models/digits/predict", body)
    direct = post_json(s.edge.bind, "/v1/models/digits/predict", body)
    ids = [via_haproxy.headers["x-request-id"], direct.headers["x-request-id"]]
    assert all(rid.startswith("host-x-") for rid in ids) and ids[0] != ids[1]
    assert [a.json()["request_id"] for a in (via_haproxy, direct)] == ids
    # a client can't pick the key through HAProxy
    forged = post_json(s.haproxy.bind, "/v1/models/digits/predict", body,
                       {"X-Falcon-Request-Key": "forged-key"})
    assert forged.headers["x-request-id"].startswith("host-x-")

    accepted = time.time() - 0.2
    start = f"t={int(accepted * 1e6)}"
    # this test plays HAProxy, which proves itself with the proxy secret (issue 15 item 3)
    proxy = {"X-Falcon-Proxy-Secret": Path(s.proxy_secret_file).read_text().strip()}
    same = {"X-Request-Id": "client-1", "X-Request-Start": start,
            "X-Falcon-Request-Key": "front-k1", **proxy}
    for _ in range(2):  # the dying edge's log, then the retry's
        assert post_json(s.edge.bind, "/v1/models/digits/predict", body, same).status == 200
    other = {**same, "X-Falcon-Request-Key": "front-k2"}  # another request, same id and tick
    assert post_json(s.edge.bind, "/v1/models/digits/predict", body, other).status == 200
    later = {"X-Request-Id": "client-1", "X-Request-Start": f"t={int(time.time() * 1e6)}", **proxy}
    assert post_json(s.edge.bind, "/v1/models/digits/predict", body, later).status == 200
    last = post_json(s.edge.bind, "/v1/models/digits/predict", body).headers["x-request-id"]
    wait_for_rows(pg_dsn, {*ids, last})  # one stream, shipped in order: all before it landed
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM ts)::float8, request_key, host "
                    "FROM audit.predictions WHERE request_id = 'client-1' ORDER BY ts, 2")
        got = cur.fetchall()
    conn.close()
    assert [key for _, key, _ in got][:2] == ["front-k1", "front-k2"] and len(got) == 3, got
    assert abs(got[0][0] - accepted) < 1e-5 and got[0][0] == got[1][0]
    assert {host for _, _, host in got} == {"host-x"}
