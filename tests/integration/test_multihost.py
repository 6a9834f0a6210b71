"""Several hosts, for real: three network namespaces on a bridge of their own.

    front  10.213.0.1   HAProxy (ops/haproxy/hosts.cfg), 2 memcached, PostgreSQL
    host-a 10.213.0.2   daemon, edge, shipper, WAL
    host-b 10.213.0.3   daemon, edge, shipper, WAL

Under steady load through HAProxy every process of host-a is killed (kill -9),
then host-a is started again. The client may lose only requests that were in
flight at that moment; host-b takes the load; host-a's WAL ships once it is
back; the audit table then holds exactly one row per 200 the client received,
from both hosts. Traffic stays inside the namespaces: the test process talks to
them only from threads that entered the front namespace (tests/netns.py).
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import psycopg2
import pytest
from conftest import falconctl, make_repo, stack_env
from httpx_lite import post_json
from loadgen import LoadGen, Outcome
from netns import NetStack, Network, entered
from pg_fixture import make_root

import shm
from audit.pg import EmbeddedPostgres
from falconctl.keys import haproxy_command

ROOT = Path(__file__).resolve().parents[2]
DIGITS = np.load(ROOT / "tests" / "data" / "digits_test.npz")
EDGE_PORT, HAPROXY_PORT, STATS_PORT, PG_PORT = 8000, 8080, 8404, 5432
MEMCACHED_PORTS = (11211, 11212)


@pytest.fixture
def net():
    network = Network({"front": 1, "a": 2, "b": 3}).up()
    yield network
    network.close()


@pytest.fixture
def front_services(net: Network):
    """PostgreSQL and two memcached servers in the front namespace; the audit DSN."""
    root = make_root("falcon-mh-pg-")
    pg = EmbeddedPostgres(root / "data", PG_PORT, socket_dir=root / "sock",
                          host=net.addr("front"), wrap=net.wrap("front"))
    memcached: list[subprocess.Popen] = []
    try:
        pg.init()
        # APPSEC: trust on the test's private /24 only (a namespace nothing else reaches)
        with open(pg.data_dir / "pg_hba.conf", "a", encoding="utf-8") as hba:
            hba.write(f"host all all 10.{net.subnet}.0.0/24 trust\n")
        pg.start()
        with entered(net.ns("front")):
            pg.create_database("falcon")
        for port in MEMCACHED_PORTS:
            memcached.append(subprocess.Popen(
                [*net.wrap("front"), "memcached", "-u", "nobody", "-l", net.addr("front"),
                 "-p", str(port), "-U", "0", "-m", "32"]))
        yield pg.dsn("falcon")
    finally:
        for proc in memcached:
            proc.kill()
            proc.wait(10)
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def cache_on(repo: Path) -> Path:
    """The digits model with its prediction cache on (it ships off)."""
    config = repo / "digits" / "config.toml"
    config.write_text(config.read_text().replace("enabled = false", "enabled = true", 1))
    return repo


def host_stack(net: Network, tmp: Path, host: str, dsn: str) -> NetStack:
    caches = ",".join(f"{net.addr('front')}:{p}" for p in MEMCACHED_PORTS)
    env = stack_env(tmp, cache_on(make_repo(tmp / "models")),
                    FALCON_HOST_ID=f"host-{host}",
                    FALCON_EDGE_BIND=f"{net.addr(host)}:{EDGE_PORT}",
                    FALCON_AUDIT_DSN=dsn, FALCON_AUDIT_SHIP_BATCH="50",
                    FALCON_CACHE_SERVERS=caches)
    return NetStack(env, tmp / "logs", netns=net.ns(host))


def start_host(stack: NetStack) -> None:
    stack.start_shipper()  # first: a returning host ships its WAL tail while the rest starts
    stack.start_daemon()
    stack.start_edge()


def server_status(front: NetStack) -> dict[str, str]:
    """HAProxy's view of backend ``hosts``: server name -> UP / DOWN / ..."""
    sock = Path(front.settings.paths.run_dir) / "haproxy.sock"
    rows = csv.DictReader(io.StringIO(haproxy_command(sock, "show stat").lstrip("# ")))
    return {r["svname"]: r["status"] for r in rows
            if r["pxname"] == "hosts" and r["svname"] not in ("FRONTEND", "BACKEND")}


def wait_status(front: NetStack, host: str, status: str, timeout: float = 20.0,
                exact: bool = False) -> float:
    """Seconds until HAProxy reports ``host`` as ``status`` (``exact``: not in
    transition, e.g. not "UP 1/2", one check failed)."""
    start = time.monotonic()
    while (server_status(front).get(host, "") if exact
           else (server_status(front).get(host) or "?").split()[0]) != status:
        assert time.monotonic() - start < timeout, server_status(front)
        time.sleep(0.02)
    return time.monotonic() - start


def audit_rows(net: Network, dsn: str) -> dict[str, list[tuple]]:
    """request_id -> its rows (host, stream, unix ts)."""
    with entered(net.ns("front")):
        conn = psycopg2.connect(dsn, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT request_id, host, stream, extract(epoch FROM ts)::float8 "
                        "FROM audit.predictions")
            out: dict[str, list[tuple]] = {}
            for rid, *row in cur.fetchall():
                out.setdefault(rid, []).append(tuple(row))
            return out
    finally:
        conn.close()


def wait_rows(net: Network, dsn: str, expected: set[str],
              timeout: float = 60.0) -> tuple[dict[str, list[tuple]], float]:
    start = time.monotonic()
    while True:
        rows = audit_rows(net, dsn)
        if expected <= set(rows):
            return rows, time.monotonic() - start
        assert time.monotonic() - start < timeout, f"{len(expected - set(rows))} rows missing"
        time.sleep(0.1)


def predict(net: Network, host: str, rows: np.ndarray) -> dict:
    with entered(net.ns("front")):
        ans = post_json(f"{net.addr(host)}:{EDGE_PORT}", "/v1/models/digits/predict",
                        {"instances": rows.tolist()})
    assert ans.status == 200, ans.body
    return ans.json()


def in_flight_at(outcome: Outcome, moment: float) -> bool:
    return outcome.started <= moment <= outcome.started + outcome.seconds


def test_a_host_killed_under_load_costs_at_most_its_in_flight_requests_and_its_wal_ships(
        net: Network, front_services: str, tmp_path: Path) -> None:
    dsn = front_services
    hosts = {h: host_stack(net, tmp_path / h, h, dsn) for h in ("a", "b")}
    (tmp_path / "front").mkdir()
    front = NetStack(stack_env(
        tmp_path / "front", tmp_path / "front" / "models", FALCON_HOST_ID="front",
        FALCON_HAPROXY_BIND=f"{net.addr('front')}:{HAPROXY_PORT}",
        FALCON_HAPROXY_STATS_BIND=f"{net.addr('front')}:{STATS_PORT}",
        FALCON_HAPROXY_HOSTS=",".join(f"host-{h}={net.addr(h)}:{EDGE_PORT}" for h in hosts)),
        tmp_path / "front" / "logs", netns=net.ns("front"))
    try:
        for stack in hosts.values():
            start_host(stack)
        front.start_haproxy()
        for host in ("host-a", "host-b"):
            wait_status(front, host, "UP", exact=True)

        # one memcached pool for every host: host-b hits what host-a computed
        probe = DIGITS["X"][:1]
        first, second = predict(net, "a", probe), predict(net, "b", probe)
        assert (first["cached"], second["cached"]) == (False, True)
        probes = {first["request_id"], second["request_id"]}

        load = LoadGen(f"{net.addr('front')}:{HAPROXY_PORT}", DIGITS["X"], threads=6,
                       netns=net.ns("front")).start()
        try:
            time.sleep(2.0)
            killed = time.monotonic()
            hosts["a"].kill()
            to_down = wait_status(front, "host-a", "DOWN")
            time.sleep(2.0)  # host-b alone; its shipper keeps up
            alone = [o for o in load.outcomes if o.started > killed + to_down]
            # answered before the kill and still not in the table 2 s later (host-b's
            # shipper lags ~0.2 s): host-a's unshipped tail, left in its WAL by the kill
            tail = {o.request_id for o in load.outcomes
                    if o.status == 200 and o.started + o.seconds < killed} - \
                set(audit_rows(net, dsn))
            returned = time.monotonic()
            start_host(hosts["a"])
            wait_rows(net, dsn, tail)
            to_shipped = time.monotonic() - returned
            wait_status(front, "host-a", "UP")
            to_up = time.monotonic() - returned
            time.sleep(2.0)  # both serve again
            # an operator drains host-b: new requests go to host-a only
            falconctl(front, "hosts", "drain", "host-b")
            assert server_status(front)["host-b"] == "DRAIN"
            time.sleep(0.5)  # requests already sent to host-b finish
            drained = time.monotonic()
            time.sleep(1.5)
            after_drain = [o for o in load.outcomes if o.started > drained]
            listing = falconctl(front, "hosts", "list").stdout
            falconctl(front, "hosts", "ready", "host-b")
        finally:
            outcomes = load.stop()

        # the client: only requests in flight at the kill may have failed
        failed = [o for o in outcomes if o.status != 200]
        assert all(in_flight_at(o, killed) for o in failed), \
            [(o.status, o.started - killed) for o in failed]
        ok = {o.request_id for o in outcomes if o.status == 200}
        assert len(ok) > 200 and sum(o.status == 200 for o in alone) > 20, (len(ok), len(alone))
        assert {o.status for o in alone} == {200}

        # the audit table: exactly one row per 200, from both hosts
        rows, _ = wait_rows(net, dsn, ok | probes)
        assert [rid for rid, r in rows.items() if len(r) > 1] == []
        assert set(rows) - ok - probes <= {o.request_id for o in failed}
        host_of = {rid: r[0][0] for rid, r in rows.items()}
        assert {host_of[o.request_id] for o in alone} == {"host-b"}
        assert {host_of[rid] for rid in tail} == {"host-a"}
        assert all(stream.startswith(host + "-") for [(host, stream, _)] in rows.values())
        back = time.time() - (time.monotonic() - returned) + to_up
        assert any(host == "host-a" and ts > back for [(host, _, ts)] in rows.values())
        assert {host_of[o.request_id] for o in after_drain} == {"host-a"} and \
            {o.status for o in after_drain} == {200}
        assert "host-b" in listing and "DRAIN" in listing, listing
        assert server_status(front)["host-b"].startswith("UP")
        print(f"\nmulti-host: {len(ok)} answered 200, {len(failed)} failed (in flight at the "
              f"kill); host-a DOWN in HAProxy {to_down:.2f} s after kill -9; after its restart "
              f"began: its WAL tail ({len(tail)} records) shipped in {to_shipped:.2f} s, UP in "
              f"{to_up:.2f} s; rows a/b: {sum(h == 'host-a' for h in host_of.values())}/"
              f"{sum(h == 'host-b' for h in host_of.values())}")
    finally:
        front.stop()
        for stack in hosts.values():
            stack.stop()
            prefix = stack.env["FALCON_DAEMON_SHM_PREFIX"]
            assert shm.list_segments(prefix) == [], "shared-memory segments left behind"
